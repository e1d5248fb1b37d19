//! The dashboard (`queue_runtime::web`): plain HTTP tests through tower's
//! `oneshot` (`http.rs`), and a real headless Chromium clicking through it
//! over WebDriver (`browser.rs`). Feature `web` of this crate.

mod browser;
mod http;
mod webdriver;

use std::time::Duration;

use queue_runtime::{Client, JobId, JobState, Runtime, TaskError, task};
use queue_tests::{TestDb, wait_until};

/// A fresh database with the schema applied, and a client on it.
pub(crate) async fn setup() -> (TestDb, Client) {
    queue_tests::init_tracing();
    let db = TestDb::new().await;
    let client = Client::connect(&db.url).await.expect("connect");
    client.migrate().await.expect("migrate");
    (db, client)
}

/// Always fails: with one retry, a job of it dies after two attempts.
#[task(
    queue = "web-fail",
    retries = 1,
    backoff = "constant(10ms)",
    name = "web.fails"
)]
async fn fails(n: u32) -> Result<(), TaskError> {
    Err(TaskError::msg(format!("smtp said no to <{n}>")))
}

/// Holds its slot for a minute: one runs, the next waits blocked on the
/// task's concurrency limit.
#[task(queue = "web-work", concurrency = 1, name = "web.slow")]
async fn slow(n: u32) -> Result<(), TaskError> {
    let _ = n;
    tokio::time::sleep(Duration::from_secs(60)).await;
    Ok(())
}

/// A task of a queue no runtime serves: its jobs stay ready or scheduled.
#[task(queue = "web-idle", name = "web.idle")]
async fn idle(to: String) -> Result<(), TaskError> {
    let _ = to;
    Ok(())
}

/// Jobs in every state, made by enqueues and real runtimes.
pub(crate) struct Seeded {
    /// A job of a queue no runtime serves.
    pub(crate) ready: JobId,
    /// One due in an hour.
    pub(crate) scheduled: JobId,
    /// Running (for a minute) on `runtime`.
    pub(crate) running: JobId,
    /// Waiting for `running`'s concurrency slot.
    pub(crate) blocked: JobId,
    /// Dead after two failed attempts.
    pub(crate) dead: JobId,
    /// Another one.
    pub(crate) dead_too: JobId,
    /// The runtime running `running` (and holding `blocked` back).
    pub(crate) runtime: Runtime,
}

/// Enqueues and runs jobs until there is one ready, scheduled, running,
/// blocked and dead.
pub(crate) async fn seed(client: &Client) -> Seeded {
    let ready = idle::enqueue(client, "ann@example.com".to_owned())
        .await
        .unwrap();
    let scheduled = idle::with("bob@example.com".to_owned())
        .delay(Duration::from_secs(3600))
        .enqueue(client)
        .await
        .unwrap();

    let dead = fails::enqueue(client, 7).await.unwrap();
    let dead_too = fails::enqueue(client, 8).await.unwrap();
    let failing = Runtime::builder(client.clone())
        .queues(["web-fail"])
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(15), "the failing jobs are dead", || {
        let client = client.clone();
        async move { client.stats().await.unwrap().total.dead == 2 }
    })
    .await;
    failing.shutdown(Duration::from_secs(5)).await.unwrap();

    let first = slow::enqueue(client, 1).await.unwrap();
    let second = slow::enqueue(client, 2).await.unwrap();
    let runtime = Runtime::builder(client.clone())
        .queues(["web-work"])
        .concurrency(2)
        .start()
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(15),
        "one slow job running, one blocked",
        || {
            let client = client.clone();
            async move {
                let t = client.stats().await.unwrap().total;
                t.running == 1 && t.blocked == 1
            }
        },
    )
    .await;
    let (running, blocked) = match client.job(first).await.unwrap().map(|j| j.state) {
        Some(JobState::Running) => (first, second),
        _ => (second, first),
    };
    Seeded {
        ready,
        scheduled,
        running,
        blocked,
        dead,
        dead_too,
        runtime,
    }
}

/// A job's state number and attempts, read straight from the table.
pub(crate) async fn stored_state(client: &Client, id: JobId) -> Option<(u8, u32)> {
    sqlx::query_as("SELECT state, attempts FROM queue_jobs WHERE id = ?")
        .bind(id.0)
        .fetch_optional(client.pool())
        .await
        .unwrap()
}

/// The paused queues, read straight from the table.
pub(crate) async fn stored_paused(client: &Client) -> Vec<String> {
    sqlx::query_scalar("SELECT queue FROM queue_paused ORDER BY queue")
        .fetch_all(client.pool())
        .await
        .unwrap()
}
