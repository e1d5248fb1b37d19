//! Integration tests against a real MariaDB: each test gets its own database.
//!
//! All tests live in one binary (faster to link); each module is one area.

mod admin;
mod claim;
mod coalesce;
mod connections;
mod deadlines;
mod galera_guard;
mod keys;
mod limits;
mod migrations;
mod operator;
mod outcomes;
mod pause;
mod priority;
mod queue_limits;
mod schedule;
mod scripts;
mod settings;
mod shutdown;
mod sizes;
mod times;
mod transactional;
mod unique;

use std::time::Duration;

use queue_runtime::{Client, JobId, JobState, Runtime};
use queue_tests::TestDb;

/// A fresh database with the schema applied, and a client on it.
pub async fn setup() -> (TestDb, Client) {
    queue_tests::init_tracing();
    let db = TestDb::new().await;
    let client = Client::connect(&db.url).await.expect("connect");
    client.migrate().await.expect("migrate");
    (db, client)
}

/// Inserts a ready job by raw SQL, as another program (or an older
/// deployment) would, bypassing the typed API; `seq` places it in the claim
/// index (None: at the tail).
pub async fn insert_raw_job(
    client: &Client,
    task: &str,
    queue: &str,
    payload: &str,
    seq: Option<u64>,
) -> JobId {
    let id = sqlx::query(
        "INSERT INTO queue_jobs (task, queue, priority, state, payload, attempts, max_attempts, run_at, created_at, updated_at) \
         VALUES (?, ?, 2, 0, ?, 0, 4, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
    )
    .bind(task)
    .bind(queue)
    .bind(payload)
    .execute(client.pool())
    .await
    .unwrap()
    .last_insert_id();
    sqlx::query("INSERT INTO queue_ready (queue, priority, seq, job_id) VALUES (?, 2, ?, ?)")
        .bind(queue)
        .bind(seq)
        .bind(id)
        .execute(client.pool())
        .await
        .unwrap();
    JobId(id)
}

/// A runtime with default settings serving `queue`.
pub async fn start_runtime(client: &Client, queue: &str) -> Runtime {
    Runtime::builder(client.clone())
        .queues([queue])
        .start()
        .await
        .unwrap()
}

/// Waits until `n` jobs are dead.
pub async fn wait_for_dead(client: &Client, n: u64) {
    queue_tests::wait_until(Duration::from_secs(10), &format!("{n} dead jobs"), || {
        let client = client.clone();
        async move { client.stats().await.unwrap().total.dead == n }
    })
    .await;
}

/// Waits until job `id` is in `state`.
pub async fn wait_for_state(client: &Client, id: JobId, state: JobState, within: Duration) {
    queue_tests::wait_until(within, &format!("job {id} {state:?}"), || {
        let client = client.clone();
        async move {
            client
                .job(id)
                .await
                .unwrap()
                .is_some_and(|j| j.state == state)
        }
    })
    .await;
}
