//! The `metrics` feature: a drained job reports its counters and
//! histograms to the installed recorder.

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use queue_runtime::{Client, TaskError, task, testing};

mod support;

#[task(queue = "metered", name = "tests.metrics.ok")]
async fn ok_job(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

#[task(
    queue = "metered",
    name = "tests.metrics.flaky",
    retries = 1,
    backoff = "constant(1ms)"
)]
async fn flaky(ctx: queue_runtime::TaskContext, n: u32) -> Result<(), TaskError> {
    let _ = n;
    if ctx.attempt() == 1 {
        return Err("first try fails".into());
    }
    Err(TaskError::permanent(TaskError::msg("then for good")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_job_reports_its_counters() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let (name, url) = support::database().await;
    let client = Client::connect(&url).await.unwrap();
    client.migrate().await.unwrap();
    ok_job::enqueue_many(&client, [1, 2]).await.unwrap();
    flaky::enqueue(&client, 3).await.unwrap();
    let mut attempts = 0;
    for _ in 0..50 {
        attempts += testing::drain(&client).await.unwrap().len();
        if attempts == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(attempts, 4, "two successes, a retry, a death");

    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |metric: &str, task: &str| -> u64 {
        snapshot
            .iter()
            .filter(|(key, ..)| {
                key.key().name() == metric
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "task" && l.value() == task)
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "queue" && l.value() == "metered")
            })
            .map(|(.., v)| match v {
                DebugValue::Counter(n) => *n,
                other => panic!("{metric} is not a counter: {other:?}"),
            })
            .sum()
    };
    let histogram = |metric: &str, task: &str| -> usize {
        snapshot
            .iter()
            .filter(|(key, ..)| {
                key.key().name() == metric
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "task" && l.value() == task)
            })
            .map(|(.., v)| match v {
                DebugValue::Histogram(h) => h.len(),
                other => panic!("{metric} is not a histogram: {other:?}"),
            })
            .sum()
    };
    let ok = "tests.metrics.ok";
    let bad = "tests.metrics.flaky";
    assert_eq!(counter("queue_jobs_enqueued_total", ok), 2);
    assert_eq!(counter("queue_jobs_started_total", ok), 2);
    assert_eq!(counter("queue_jobs_succeeded_total", ok), 2);
    assert_eq!(counter("queue_jobs_failed_total", ok), 0);
    assert_eq!(histogram("queue_job_run_seconds", ok), 2);
    assert_eq!(histogram("queue_job_wait_seconds", ok), 2);
    assert_eq!(counter("queue_jobs_enqueued_total", bad), 1);
    assert_eq!(counter("queue_jobs_started_total", bad), 2);
    assert_eq!(counter("queue_jobs_failed_total", bad), 2);
    assert_eq!(counter("queue_jobs_retried_total", bad), 1);
    assert_eq!(counter("queue_jobs_dead_total", bad), 1);
    assert_eq!(counter("queue_jobs_succeeded_total", bad), 0);
    client.pool().close().await;
    support::drop_database(&name).await;
}
