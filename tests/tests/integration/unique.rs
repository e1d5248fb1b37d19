//! Unique jobs: one pending job per (task, key).

use std::sync::Mutex;
use std::time::Duration;

use queue_runtime::{Error, Runtime, TaskError, task};
use queue_tests::wait_until;

use crate::{setup, wait_for_dead};

static REBUILT: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[task(queue = "unique", name = "tests.unique.rebuild")]
async fn rebuild(report: u32) -> Result<(), TaskError> {
    REBUILT.lock().unwrap().push(report);
    Ok(())
}

#[task(queue = "unique", name = "tests.unique.other")]
async fn other(report: u32) -> Result<(), TaskError> {
    let _ = report;
    Ok(())
}

#[task(queue = "unique", name = "tests.unique.doomed")]
async fn doomed() -> Result<(), TaskError> {
    Err(TaskError::permanent(TaskError::msg("never works")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_key_keeps_one_pending_job_until_it_ends() {
    let (db, client) = setup().await;
    let first = rebuild::with(42)
        .unique_key("report-42")
        .enqueue(&client)
        .await
        .unwrap();
    let again = rebuild::with(42)
        .unique_key("report-42")
        .delay(Duration::from_secs(60))
        .enqueue(&client)
        .await
        .unwrap();
    assert_eq!(again, first, "the pending job's id comes back");
    let another_key = rebuild::with(43)
        .unique_key("report-43")
        .enqueue(&client)
        .await
        .unwrap();
    assert_ne!(another_key, first);
    let another_task = other::with(42)
        .unique_key("report-42")
        .enqueue(&client)
        .await
        .unwrap();
    assert_ne!(another_task, first, "keys are per task");
    let no_key = rebuild::with(42).enqueue(&client).await.unwrap();
    assert_ne!(no_key, first, "jobs without a key are not deduplicated");

    // Ten at once: one job, one id.
    let mut racers = Vec::new();
    for _ in 0..10 {
        let client = client.clone();
        racers.push(tokio::spawn(async move {
            rebuild::with(44)
                .unique_key("report-44")
                .enqueue(&client)
                .await
                .unwrap()
        }));
    }
    let mut raced = Vec::new();
    for r in racers {
        raced.push(r.await.unwrap());
    }
    assert!(raced.iter().all(|id| *id == raced[0]), "{raced:?}");

    // Inside a transaction, the pending job is found too.
    let mut tx = client.pool().begin().await.unwrap();
    let in_tx = rebuild::with(42)
        .unique_key("report-42")
        .enqueue_in(&client, &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(in_tx, first);
    assert_eq!(client.stats().await.unwrap().total.total(), 5);

    let err = rebuild::with(1)
        .unique_key("x".repeat(192))
        .enqueue(&client)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");

    // Once the job has run, the key is free again.
    let runtime = Runtime::builder(client.clone())
        .queues(["unique"])
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the jobs ran", || async {
        matches!(client.stats().await, Ok(s) if s.total.total() == 0)
    })
    .await;
    let after = rebuild::with(42)
        .unique_key("report-42")
        .enqueue(&client)
        .await
        .unwrap();
    assert_ne!(after, first, "a finished job frees its key");

    // A dead job frees its key too.
    let dead = doomed::with(())
        .unique_key("d")
        .enqueue(&client)
        .await
        .unwrap();
    wait_for_dead(&client, 1).await;
    let revived = doomed::with(())
        .unique_key("d")
        .enqueue(&client)
        .await
        .unwrap();
    assert_ne!(revived, dead, "a dead job frees its key");
    wait_for_dead(&client, 2).await;
    wait_until(Duration::from_secs(10), "the last rebuild ran", || async {
        REBUILT.lock().unwrap().len() == 5
    })
    .await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();

    let mut rebuilt = REBUILT.lock().unwrap().clone();
    rebuilt.sort_unstable();
    // 42 (keyed), 42 (no key), 43, 44 once, then 42 again.
    assert_eq!(rebuilt, [42, 42, 42, 43, 44]);
    db.drop_db().await;
}
