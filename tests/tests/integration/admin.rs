//! Migrations, stats, dead-job administration.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use queue_runtime::{Client, Error, JobState, Runtime, TaskError, task};
use queue_tests::wait_until;

use crate::setup;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_safe_concurrently() {
    let (db, client) = setup().await;
    client.migrate().await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        handles.push(tokio::spawn(async move {
            let c = Client::connect(&url).await.unwrap();
            c.migrate().await.unwrap();
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM queue_schema_migrations")
        .fetch_all(client.pool())
        .await
        .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    db.drop_db().await;
}

static FLAKY: AtomicUsize = AtomicUsize::new(0);

#[task(queue = "admin", retries = 0)]
async fn fails_until_retried(n: u32) -> Result<(), TaskError> {
    let seen = FLAKY.fetch_add(1, Ordering::SeqCst);
    if seen == 0 {
        return Err(TaskError::msg(format!("first try of {n} fails")));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_jobs_can_be_listed_retried_and_purged() {
    let (db, client) = setup().await;
    let id = fails_until_retried::enqueue(&client, 1).await.unwrap();
    let runtime = Runtime::builder(client.clone())
        .queues(["admin"])
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the job is dead", || {
        let client = client.clone();
        async move {
            client
                .stats()
                .await
                .unwrap()
                .queues
                .get("admin")
                .is_some_and(|q| q.dead == 1)
        }
    })
    .await;
    let dead = client.dead_jobs(5).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].last_error, "first try of 1 fails");
    assert_eq!(dead[0].payload, "1");

    client.retry_dead(id).await.unwrap();
    wait_until(Duration::from_secs(10), "the retried job succeeded", || {
        let client = client.clone();
        async move { client.job(id).await.unwrap().is_none() }
    })
    .await;
    assert!(matches!(
        client.retry_dead(id).await,
        Err(Error::NotDead(_))
    ));

    runtime.shutdown(Duration::from_secs(5)).await.unwrap();

    // Purge: a dead job older than the cutoff goes, a newer one stays.
    let old = fails_until_retried::enqueue(&client, 2).await.unwrap();
    let recent = fails_until_retried::enqueue(&client, 3).await.unwrap();
    for (id, age_days) in [(old, 2), (recent, 0)] {
        sqlx::query(
            "UPDATE queue_jobs SET state = 3, dead_at = UTC_TIMESTAMP(6) - INTERVAL ? DAY WHERE id = ?",
        )
        .bind(age_days)
        .bind(id.0)
        .execute(client.pool())
        .await
        .unwrap();
        sqlx::query("DELETE FROM queue_ready WHERE job_id = ?")
            .bind(id.0)
            .execute(client.pool())
            .await
            .unwrap();
    }
    let purged = client
        .purge_dead(Duration::from_secs(86_400))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert!(client.job(old).await.unwrap().is_none());
    assert!(client.job(recent).await.unwrap().is_some());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_per_queue_and_state() {
    let (db, client) = setup().await;
    fails_until_retried::enqueue_many(&client, [1, 2, 3])
        .await
        .unwrap();
    fails_until_retried::with(4)
        .delay(Duration::from_secs(3600))
        .enqueue(&client)
        .await
        .unwrap();
    fails_until_retried::with(5)
        .queue("other")
        .enqueue(&client)
        .await
        .unwrap();
    let s = client.stats().await.unwrap();
    let admin = s.queues["admin"];
    assert_eq!(
        (admin.ready, admin.scheduled, admin.running, admin.dead),
        (3, 1, 0, 0)
    );
    assert_eq!(s.queues["other"].ready, 1);
    assert_eq!(s.total.total(), 5);
    assert!(s.history_list_length.is_some());
    let j = client.job(queue_runtime::JobId(1)).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Ready);
    db.drop_db().await;
}

static CANCEL_RAN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
static CANCEL_RELEASE: AtomicUsize = AtomicUsize::new(0);

#[task(queue = "cancel", name = "tests.admin.cancellable")]
async fn cancellable(n: u32) -> Result<(), TaskError> {
    CANCEL_RAN.lock().unwrap().push(n);
    if n == 1_000 {
        // Held running until the test has tried to cancel it.
        while CANCEL_RELEASE.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// Cancelling ready and scheduled jobs deletes them; they never run, and
/// the jobs queued behind the cancelled ones still run promptly. A running
/// job cannot be cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_jobs_never_run_and_running_ones_cannot_be_cancelled() {
    let (db, client) = setup().await;
    let ids = cancellable::enqueue_many(&client, 0..500).await.unwrap();
    let later = cancellable::with(999)
        .delay(Duration::from_secs(1))
        .enqueue(&client)
        .await
        .unwrap();
    for id in &ids[..400] {
        assert!(client.cancel(*id).await.unwrap(), "cancel ready job {id}");
    }
    assert!(client.cancel(later).await.unwrap(), "cancel scheduled job");
    assert!(!client.cancel(ids[0]).await.unwrap(), "already cancelled");
    assert!(!client.cancel(queue_runtime::JobId(u64::MAX)).await.unwrap());
    assert_eq!(client.stats().await.unwrap().total.total(), 100);

    let runtime = Runtime::builder(client.clone())
        .queues(["cancel"])
        .start()
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the 100 jobs left to run",
        || async { CANCEL_RAN.lock().unwrap().len() >= 100 },
    )
    .await;
    let running = cancellable::enqueue(&client, 1_000).await.unwrap();
    wait_until(Duration::from_secs(10), "job 1000 to start", || async {
        CANCEL_RAN.lock().unwrap().contains(&1_000)
    })
    .await;
    assert!(
        !client.cancel(running).await.unwrap(),
        "a running job is not cancelled"
    );
    CANCEL_RELEASE.store(1, Ordering::SeqCst);
    wait_until(Duration::from_secs(10), "the queue to empty", || async {
        matches!(client.stats().await, Ok(s) if s.total.total() == 0)
    })
    .await;
    // Past the delayed job's time: it does not run either.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    let mut ran = CANCEL_RAN.lock().unwrap().clone();
    ran.sort_unstable();
    let expected: Vec<u32> = (400..500).chain([1_000]).collect();
    assert_eq!(
        ran, expected,
        "exactly the jobs not cancelled ran, once each"
    );
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue_ready WHERE seq > 0")
        .fetch_one(client.pool())
        .await
        .unwrap();
    assert_eq!(left, 0, "the cancelled jobs' claim-index rows were cleared");
    db.drop_db().await;
}
