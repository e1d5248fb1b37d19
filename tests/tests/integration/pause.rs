//! Pausing and resuming a queue cluster-wide.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use queue_runtime::{Client, Error, Runtime, TaskError, task};
use queue_tests::wait_until;

use crate::setup;

/// When each job of the paused queue started, and which number it carried.
static STARTS: Mutex<Vec<(Instant, u32)>> = Mutex::new(Vec::new());

#[task(queue = "pausable", name = "tests.pause.work")]
async fn work(n: u32) -> Result<(), TaskError> {
    STARTS.lock().unwrap().push((Instant::now(), n));
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(())
}

#[task(queue = "pause_other", name = "tests.pause.other")]
async fn other(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

const POLL: Duration = Duration::from_millis(200);

async fn runtime(client: &Client) -> Runtime {
    Runtime::builder(client.clone())
        .queues(["pausable", "pause_other"])
        .concurrency(2)
        .prefetch(0)
        .poll_interval(POLL)
        .start()
        .await
        .unwrap()
}

fn starts_of(range: std::ops::Range<u32>) -> Vec<Instant> {
    STARTS
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| range.contains(n))
        .map(|(t, _)| *t)
        .collect()
}

/// Two runtimes, each with its own client (as two processes would be); the
/// pause comes from a third client, so neither runtime is woken by it: each
/// must find it by reading the paused queues once per poll interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_queue_starts_nothing_on_any_runtime_until_resumed() {
    let (db, admin) = setup().await;
    let a = Client::connect(&db.url).await.unwrap();
    let b = Client::connect(&db.url).await.unwrap();
    let (ra, rb) = (runtime(&a).await, runtime(&b).await);
    let jobs = 10_000..10_400u32;
    work::enqueue_many(&admin, jobs.clone()).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the queue is being worked",
        || async { starts_of(jobs.clone()).len() >= 20 },
    )
    .await;

    admin.pause_queue("pausable").await.unwrap();
    // Pausing again changes nothing.
    admin.pause_queue("pausable").await.unwrap();
    let paused_at = Instant::now();
    // Within one poll interval every runtime has seen it; a claim already
    // in flight then, and the jobs it brought, may still start.
    tokio::time::sleep(POLL + Duration::from_millis(300)).await;
    let seen = starts_of(jobs.clone()).len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = starts_of(jobs.clone());
    assert_eq!(later.len(), seen, "no job starts once the pause is seen");
    let last = later.iter().max().unwrap();
    assert!(
        last.duration_since(paused_at) < POLL + Duration::from_millis(300),
        "the last start came {:?} after the pause",
        last.duration_since(paused_at)
    );
    assert!(seen < 400, "jobs are left: {seen} started");

    // Enqueue still accepts jobs; other queues keep running.
    work::enqueue(&admin, 10_400).await.unwrap();
    let id = other::enqueue(&admin, 1).await.unwrap();
    wait_until(Duration::from_secs(5), "the other queue's job ran", || {
        let admin = admin.clone();
        async move { admin.job(id).await.unwrap().is_none() }
    })
    .await;
    let stats = admin.stats().await.unwrap();
    assert_eq!(stats.paused_queues, vec!["pausable".to_owned()]);
    assert!(stats.queues["pausable"].ready > 0);

    admin.resume_queue("pausable").await.unwrap();
    // Resuming a running queue changes nothing.
    admin.resume_queue("pausable").await.unwrap();
    assert!(admin.paused_queues().await.unwrap().is_empty());
    wait_until(
        Duration::from_secs(20),
        "every job ran after the resume",
        || {
            let admin = admin.clone();
            async move { admin.stats().await.unwrap().total.total() == 0 }
        },
    )
    .await;
    assert_eq!(starts_of(10_000..10_401).len(), 401, "each job ran once");
    assert!(admin.stats().await.unwrap().paused_queues.is_empty());
    ra.shutdown(Duration::from_secs(5)).await.unwrap();
    rb.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_survives_a_runtime_restart() {
    let (db, client) = setup().await;
    client.pause_queue("pausable").await.unwrap();
    let jobs = 20_000..20_010u32;
    work::enqueue_many(&client, jobs.clone()).await.unwrap();
    // A runtime started after the pause, on another client, runs nothing.
    let other = Client::connect(&db.url).await.unwrap();
    let r = runtime(&other).await;
    tokio::time::sleep(POLL * 3).await;
    assert!(
        starts_of(jobs.clone()).is_empty(),
        "nothing starts while paused"
    );
    r.shutdown(Duration::from_secs(5)).await.unwrap();
    let r = runtime(&other).await;
    tokio::time::sleep(POLL * 3).await;
    assert!(
        starts_of(jobs.clone()).is_empty(),
        "still paused after a restart"
    );
    // Resumed from this process: the runtime of another client finds it
    // within a poll interval.
    client.resume_queue("pausable").await.unwrap();
    wait_until(Duration::from_secs(5), "the jobs ran", || async {
        starts_of(jobs.clone()).len() == 10
    })
    .await;
    r.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_in_this_process_is_seen_at_once_and_bad_names_are_refused() {
    let (db, client) = setup().await;
    let slow_poll = Runtime::builder(client.clone())
        .queues(["pausable"])
        .poll_interval(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    // Let the runtime's first round end (it found nothing): a claim already
    // under way when a pause lands still brings its jobs, by design.
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.pause_queue("pausable").await.unwrap();
    let jobs = 30_000..30_005u32;
    work::enqueue_many(&client, jobs.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        starts_of(jobs.clone()).is_empty(),
        "the local runtime saw the pause"
    );
    client.resume_queue("pausable").await.unwrap();
    // Well within the 30-s poll interval: this process's runtimes are told.
    wait_until(Duration::from_secs(5), "the jobs ran", || async {
        starts_of(jobs.clone()).len() == 5
    })
    .await;
    for bad in ["", "mail queue", &"q".repeat(65)] {
        let err = client.pause_queue(bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err}");
        let err = client.resume_queue(bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err}");
    }
    slow_poll.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}
