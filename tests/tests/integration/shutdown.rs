//! Shutdown with prefetched jobs: they are handed back without starting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use queue_runtime::{Runtime, TaskError, task};
use queue_tests::wait_until;

use crate::setup;

static STARTED: AtomicUsize = AtomicUsize::new(0);

#[task(queue = "prefetched")]
async fn slow_job(n: u32) -> Result<(), TaskError> {
    let _ = n;
    STARTED.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_back_running_and_prefetched_jobs() {
    let (db, client) = setup().await;
    slow_job::enqueue_many(&client, 0..4).await.unwrap();
    let runtime = Runtime::builder(client.clone())
        .queues(["prefetched"])
        .concurrency(1)
        .prefetch(3)
        .start()
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "one running, three prefetched",
        || {
            let client = client.clone();
            async move {
                STARTED.load(Ordering::SeqCst) == 1
                    && client.stats().await.unwrap().total.running == 4
            }
        },
    )
    .await;
    runtime.shutdown(Duration::from_millis(200)).await.unwrap();
    assert_eq!(
        STARTED.load(Ordering::SeqCst),
        1,
        "no prefetched job started during the drain"
    );
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.total.ready, 4, "all four are ready again: {stats:?}");
    let attempts: Vec<u32> = sqlx::query_scalar("SELECT attempts FROM queue_jobs ORDER BY id")
        .fetch_all(client.pool())
        .await
        .unwrap();
    assert_eq!(attempts, vec![0, 0, 0, 0], "hand-backs return the attempt");
    db.drop_db().await;
}
