//! Runtime settings checked at start, and jobs of unknown tasks.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use queue_runtime::{
    Client, Error, JobState, ManualClock, Runtime, RuntimeBuilder, TaskError, task,
};
use queue_tests::wait_until;
use tracing_subscriber::layer::SubscriberExt;

use crate::{insert_raw_job, setup};

#[task(queue = "settings")]
async fn settings_noop(_n: u32) -> Result<(), TaskError> {
    Ok(())
}

/// `start()` fails with an `InvalidArgument` whose text names `rule`.
async fn refused(builder: RuntimeBuilder, rule: &str) {
    match builder.start().await {
        Err(Error::InvalidArgument(text)) => {
            assert!(text.contains(rule), "expected `{rule}` in `{text}`");
        }
        Err(e) => panic!("expected an invalid argument naming `{rule}`, got {e}"),
        Ok(rt) => panic!(
            "expected an invalid argument naming `{rule}`, but the runtime started (queues {:?})",
            rt.queues()
        ),
    }
}

/// A job of `settings_noop` runs to its end under `runtime`.
async fn runs_a_job(client: &Client, runtime: Runtime) {
    let id = settings_noop::enqueue(client, 1).await.unwrap();
    wait_until(Duration::from_secs(10), "the job ran", || {
        let client = client.clone();
        async move { client.job(id).await.unwrap().is_none() }
    })
    .await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
}

fn builder(client: &Client) -> RuntimeBuilder {
    Runtime::builder(client.clone())
        .queues(["settings"])
        .cron(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_at_or_above_the_lease_is_refused() {
    let (db, client) = setup().await;
    let rule = "heartbeat must be shorter than the lease";
    let lease = Duration::from_secs(10);
    refused(builder(&client).lease(lease).heartbeat(lease), rule).await;
    refused(
        builder(&client)
            .lease(lease)
            .heartbeat(lease + Duration::from_secs(1)),
        rule,
    )
    .await;
    // The default lease (15 s) with a longer heartbeat.
    refused(builder(&client).heartbeat(Duration::from_secs(20)), rule).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_run_nothing_are_refused() {
    let (db, client) = setup().await;
    refused(
        builder(&client).queues(Vec::<String>::new()),
        "queues must name at least one queue",
    )
    .await;
    refused(
        builder(&client).concurrency(0),
        "concurrency must be at least 1",
    )
    .await;
    refused(
        builder(&client).queues(["settings", "other", "settings"]),
        "queue `settings` is listed more than once",
    )
    .await;
    refused(
        builder(&client).queues(["settings", "no spaces"]),
        "invalid queue name `no spaces`",
    )
    .await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_and_tiny_durations_are_refused() {
    let (db, client) = setup().await;
    refused(
        builder(&client).lease(Duration::ZERO),
        "lease must be at least 1s",
    )
    .await;
    refused(
        builder(&client).lease(Duration::from_millis(200)),
        "lease must be at least 1s",
    )
    .await;
    refused(
        builder(&client).poll_interval(Duration::ZERO),
        "poll interval must be at least 10ms",
    )
    .await;
    refused(
        builder(&client).heartbeat(Duration::ZERO),
        "heartbeat must be at least 50ms",
    )
    .await;
    db.drop_db().await;
}

/// Every broken rule is named, not only the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broken_rule_is_named_at_once() {
    let (db, client) = setup().await;
    let err = builder(&client)
        .concurrency(0)
        .lease(Duration::ZERO)
        .poll_interval(Duration::ZERO)
        .start()
        .await
        .expect_err("three rules broken");
    let text = err.to_string();
    for rule in ["concurrency", "lease", "poll interval"] {
        assert!(text.contains(rule), "`{rule}` in `{text}`");
    }
    db.drop_db().await;
}

/// Extreme values never panic: in a setter, in `start`, or at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_values_do_not_panic() {
    let (db, client) = setup().await;
    let extremes: Vec<(&str, RuntimeBuilder)> = vec![
        ("lease MAX", builder(&client).lease(Duration::MAX)),
        ("heartbeat MAX", builder(&client).heartbeat(Duration::MAX)),
        (
            "lease and heartbeat MAX",
            builder(&client)
                .lease(Duration::MAX)
                .heartbeat(Duration::MAX),
        ),
        (
            "poll interval MAX",
            builder(&client).poll_interval(Duration::MAX),
        ),
        ("concurrency MAX", builder(&client).concurrency(usize::MAX)),
        ("prefetch MAX", builder(&client).prefetch(usize::MAX)),
    ];
    for (what, b) in extremes {
        match b.start().await {
            // An error must say which rule.
            Err(Error::InvalidArgument(text)) => {
                assert!(text.contains("must be"), "{what}: {text}");
            }
            Err(e) => panic!("{what}: unexpected error {e}"),
            // A runtime that starts must work.
            Ok(rt) => runs_a_job(&client, rt).await,
        }
    }
    // An unbounded drain: returns as soon as nothing runs.
    let rt = builder(&client).start().await.unwrap();
    let id = settings_noop::enqueue(&client, 2).await.unwrap();
    wait_until(Duration::from_secs(10), "the job ran", || {
        let client = client.clone();
        async move { client.job(id).await.unwrap().is_none() }
    })
    .await;
    tokio::time::timeout(Duration::from_secs(30), rt.shutdown(Duration::MAX))
        .await
        .expect("shutdown(Duration::MAX) returns once no job runs")
        .unwrap();
    db.drop_db().await;
}

/// The warnings (level WARN) logged on this thread while the guard lives.
/// Tests that use it run on a current-thread runtime, so every task of the
/// runtime logs on the test's thread.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let w = Warnings::default();
        let guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(w.clone()));
        (w, guard)
    }

    /// The warnings whose text contains every one of `parts`.
    fn matching(&self, parts: &[&str]) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|w| parts.iter().all(|p| w.contains(p)))
            .cloned()
            .collect()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() != tracing::Level::WARN {
            return;
        }
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                let _ = write!(self.0, "{}={v:?} ", f.name());
            }
        }
        let mut text = Text(String::new());
        event.record(&mut text);
        self.0.lock().unwrap().push(text.0);
    }
}

/// The neighbours of the refused values start and run jobs; a heartbeat
/// above half the lease starts with a warning, one just below does not.
#[tokio::test]
async fn valid_neighbours_start() {
    let (db, client) = setup().await;
    let (warnings, _guard) = Warnings::capture();
    let lease = Duration::from_secs(10);
    let rule = "more than half the lease";

    let rt = builder(&client)
        .lease(lease)
        .heartbeat(lease / 2 - Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    assert_eq!(warnings.matching(&[rule]), Vec::<String>::new());
    runs_a_job(&client, rt).await;

    let rt = builder(&client)
        .lease(lease)
        .heartbeat(lease - Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    assert_eq!(warnings.matching(&[rule]).len(), 1, "one warning at start");
    runs_a_job(&client, rt).await;

    let rt = builder(&client)
        .concurrency(1)
        .prefetch(0)
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(10))
        .start()
        .await
        .unwrap();
    runs_a_job(&client, rt).await;
    db.drop_db().await;
}

/// A job whose task this program does not declare is handed back every
/// minute without spending an attempt; `stats()` counts it under its task
/// name, and the runtime warns about the name once, not at every claim.
#[tokio::test]
async fn unknown_task_jobs_are_counted_and_warned_about_once() {
    let (db, client) = setup().await;
    let (warnings, _guard) = Warnings::capture();
    const NAME: &str = "settings.removed_in_this_version";
    let clock = ManualClock::new(chrono::Utc::now() + chrono::Duration::seconds(1));
    let client = client.with_clock(clock.clone());
    let id = insert_raw_job(&client, NAME, "unknown_tasks", "{}", None).await;
    // A pending job of a known task is not counted, wherever it waits.
    settings_noop::enqueue(&client, 3).await.unwrap();
    let stats = client.stats().await.unwrap();
    assert_eq!(
        stats.unknown_tasks,
        [(NAME.to_owned(), 1)].into_iter().collect(),
        "{stats:?}"
    );

    let rt = Runtime::builder(client.clone())
        .queues(["unknown_tasks"])
        .poll_interval(Duration::from_millis(50))
        .cron(false)
        .start()
        .await
        .unwrap();
    let handed_back = |after: Option<chrono::DateTime<chrono::Utc>>| {
        let client = client.clone();
        async move {
            let job = client.job(id).await.unwrap().expect("the job is kept");
            job.state == JobState::Scheduled
                && job.last_error.is_some()
                && after.is_none_or(|t| job.run_at > t)
        }
    };
    wait_until(Duration::from_secs(10), "the first hand-back", || {
        handed_back(None)
    })
    .await;
    let job = client.job(id).await.unwrap().unwrap();
    assert_eq!(job.attempts, 0, "no attempt spent: {job:?}");
    assert!(
        job.last_error.as_deref().unwrap().contains("unknown task"),
        "{job:?}"
    );
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.unknown_tasks.get(NAME), Some(&1), "{stats:?}");
    assert_eq!(stats.queues["unknown_tasks"].scheduled, 1, "{stats:?}");

    // A minute later it is offered again, claimed again, handed back again.
    clock.advance(Duration::from_secs(61));
    let first = job.run_at;
    wait_until(Duration::from_secs(10), "the second hand-back", || {
        handed_back(Some(first))
    })
    .await;
    assert_eq!(client.job(id).await.unwrap().unwrap().attempts, 0);
    let logged = warnings.matching(&["unknown task", NAME]);
    assert_eq!(logged.len(), 1, "one warning for two claims: {logged:#?}");
    rt.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        client.stats().await.unwrap().unknown_tasks.get(NAME),
        Some(&1)
    );
    db.drop_db().await;
}
