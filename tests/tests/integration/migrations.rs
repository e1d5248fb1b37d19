//! Migrations: every step runs again safely, and the schema's version is
//! checked where the runtime uses it.

use std::time::{Duration, Instant};

use queue_runtime::{Client, Error, Runtime, TaskError, task};
use queue_tests::{TestDb, url_with_database};
use sqlx::Row;

use crate::setup;

#[task(queue = "migrations", name = "tests.migrations.noop")]
async fn noop(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

/// Runs `sql` on the client's database.
async fn exec(client: &Client, sql: &'static str) {
    sqlx::query(sql)
        .execute(client.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The schema is the one this build ships: every version recorded once, the
/// unique key a byte-exact column under its unique index.
async fn assert_schema_is_current(client: &Client) {
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM queue_schema_migrations ORDER BY version")
            .fetch_all(client.pool())
            .await
            .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7, 8]);
    let paused_table: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'queue_paused'",
    )
    .fetch_one(client.pool())
    .await
    .unwrap();
    assert_eq!(paused_table, 1, "queue_paused exists");
    let limit_tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME IN ('queue_blocked', 'queue_semaphores', 'queue_rates')",
    )
    .fetch_one(client.pool())
    .await
    .unwrap();
    assert_eq!(limit_tables, 3, "the flow-control tables exist");
    let node_column: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME = 'queue_runtimes' AND COLUMN_NAME = 'node'",
    )
    .fetch_one(client.pool())
    .await
    .unwrap();
    assert_eq!(
        node_column, 1,
        "the registry records each runtime's Galera node"
    );
    let limit_columns: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
         AND ((TABLE_NAME = 'queue_jobs' AND COLUMN_NAME IN ('concurrency_key', 'rate_key', 'slot', 'rate_window')) \
         OR (TABLE_NAME = 'queue_ready' AND COLUMN_NAME = 'limited'))",
    )
    .fetch_one(client.pool())
    .await
    .unwrap();
    assert_eq!(limit_columns, 5, "the flow-control columns exist");
    let operator_tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME IN ('queue_runtimes', 'queue_throughput')",
    )
    .fetch_one(client.pool())
    .await
    .unwrap();
    assert_eq!(operator_tables, 2, "the operator tables exist");
    let errors_column: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME = 'queue_jobs' AND COLUMN_NAME = 'errors'",
    )
    .fetch_one(client.pool())
    .await
    .unwrap();
    assert_eq!(errors_column, 1, "the error history column exists");
    let column_type: String = sqlx::query_scalar(
        "SELECT COLUMN_TYPE FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'queue_jobs' AND COLUMN_NAME = 'unique_key'",
    )
    .fetch_one(client.pool())
    .await
    .unwrap();
    assert_eq!(column_type.to_lowercase(), "varbinary(1788)");
    let index: Vec<(i64, String)> = sqlx::query(
        "SELECT NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'queue_jobs' AND INDEX_NAME = 'queue_jobs_unique'",
    )
    .fetch_all(client.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert_eq!(index, [(0, "unique_key".to_owned())]);
    // The schema works: a unique key deduplicates.
    let a = noop::with(1).unique_key("m").enqueue(client).await.unwrap();
    let b = noop::with(2).unique_key("m").enqueue(client).await.unwrap();
    assert_eq!(a, b);
    sqlx::query("DELETE FROM queue_jobs WHERE id = ?")
        .bind(a.0)
        .execute(client.pool())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_migration_runs_again_when_its_bookkeeping_row_is_lost() {
    let (db, client) = setup().await;
    for version in [1_i64, 2, 3, 4, 5, 6, 7, 8] {
        // The process died after the migration's DDL, before its row.
        sqlx::query("DELETE FROM queue_schema_migrations WHERE version = ?")
            .bind(version)
            .execute(client.pool())
            .await
            .unwrap();
        client
            .migrate()
            .await
            .unwrap_or_else(|e| panic!("migrate again without row {version}: {e}"));
        assert_schema_is_current(&client).await;
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_0002_resumes_after_each_of_its_steps() {
    let (db, client) = setup().await;
    // Died after adding the column, before its index.
    exec(
        &client,
        "ALTER TABLE queue_jobs DROP INDEX queue_jobs_unique",
    )
    .await;
    exec(
        &client,
        "DELETE FROM queue_schema_migrations WHERE version IN (2, 3)",
    )
    .await;
    client.migrate().await.unwrap();
    assert_schema_is_current(&client).await;

    // Died before any of 0002 (the state of a version-1 schema).
    exec(&client, "ALTER TABLE queue_jobs DROP COLUMN unique_key").await;
    exec(
        &client,
        "DELETE FROM queue_schema_migrations WHERE version IN (2, 3)",
    )
    .await;
    client.migrate().await.unwrap();
    assert_schema_is_current(&client).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_0003_resumes_from_the_version_2_column() {
    let (db, client) = setup().await;
    let kept = noop::with(7)
        .unique_key("kept")
        .enqueue(&client)
        .await
        .unwrap();
    // Back to the column of version 2, with the key in it.
    exec(
        &client,
        "ALTER TABLE queue_jobs MODIFY unique_key VARCHAR(447) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL",
    )
    .await;
    exec(
        &client,
        "DELETE FROM queue_schema_migrations WHERE version = 3",
    )
    .await;
    client.migrate().await.unwrap();
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT CAST(unique_key AS BINARY) FROM queue_jobs WHERE id = ?")
            .bind(kept.0)
            .fetch_one(client.pool())
            .await
            .unwrap();
    assert_eq!(stored, b"tests.migrations.noop\x1fkept");
    let again = noop::with(8)
        .unique_key("kept")
        .enqueue(&client)
        .await
        .unwrap();
    assert_eq!(again, kept, "a key stored before 0003 still deduplicates");
    exec(&client, "DELETE FROM queue_jobs").await;
    assert_schema_is_current(&client).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_twice_and_from_several_clients_at_once() {
    queue_tests::init_tracing();
    let db = TestDb::new().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(&url).await.unwrap();
            client.migrate().await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("a concurrent migrate");
    }
    let client = Client::connect(&db.url).await.unwrap();
    client.migrate().await.unwrap();
    client.migrate().await.unwrap();
    assert_schema_is_current(&client).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_on_a_url_without_a_database_says_so() {
    queue_tests::init_tracing();
    let db = TestDb::new().await;
    let url = url_with_database(&db.url, "");
    let client = Client::connect(&url).await.unwrap();
    let started = Instant::now();
    let err = client.migrate().await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("names no database"), "{message}");
    assert!(!message.contains("timed out"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
    db.drop_db().await;
}

/// Starts a runtime and returns its error, shutting it down if it started.
async fn start_error(client: &Client) -> Error {
    match Runtime::builder(client.clone())
        .queues(["migrations"])
        .start()
        .await
    {
        Ok(runtime) => {
            runtime.shutdown(Duration::from_secs(5)).await.unwrap();
            panic!("the runtime started");
        }
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_the_code_is_refused_by_start_and_enqueue() {
    let (db, client) = setup().await;
    // This client checks the current schema once and then trusts it.
    noop::with(1).enqueue(&client).await.unwrap();
    exec(
        &client,
        "INSERT INTO queue_schema_migrations (version, name, applied_at) VALUES (999, 'future', UTC_TIMESTAMP(6))",
    )
    .await;
    noop::with(2).enqueue(&client).await.unwrap();

    let fresh = Client::connect(&db.url).await.unwrap();
    let too_new = |e: &Error| {
        matches!(
            e,
            Error::SchemaTooNew {
                found: 999,
                known: 8
            }
        )
    };
    let err = noop::with(3).enqueue(&fresh).await.unwrap_err();
    assert!(too_new(&err), "enqueue: {err:?}");
    let err = noop::enqueue_many(&fresh, [4, 5]).await.unwrap_err();
    assert!(too_new(&err), "enqueue_many: {err:?}");
    let mut tx = fresh.pool().begin().await.unwrap();
    let err = noop::with(6).enqueue_in(&fresh, &mut tx).await.unwrap_err();
    assert!(too_new(&err), "enqueue_in: {err:?}");
    let err = noop::enqueue_many_in(&fresh, &mut tx, [7])
        .await
        .unwrap_err();
    assert!(too_new(&err), "enqueue_many_in: {err:?}");
    tx.rollback().await.unwrap();
    let err = start_error(&fresh).await;
    assert!(too_new(&err), "start: {err:?}");
    let err = fresh.migrate().await.unwrap_err();
    assert!(too_new(&err), "migrate: {err:?}");
    assert_eq!(fresh.stats().await.unwrap().total.total(), 2);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmigrated_or_older_schema_asks_for_migrate() {
    queue_tests::init_tracing();
    let db = TestDb::new().await;
    let client = Client::connect(&db.url).await.unwrap();
    let asks_for_migrate = |e: &Error| {
        matches!(e, Error::SchemaTooOld { known: 8, .. })
            && e.to_string().contains("run Client::migrate()")
    };

    let err = noop::with(1).enqueue(&client).await.unwrap_err();
    assert!(asks_for_migrate(&err), "enqueue: {err}");
    let mut tx = client.pool().begin().await.unwrap();
    let err = noop::with(2)
        .enqueue_in(&client, &mut tx)
        .await
        .unwrap_err();
    assert!(asks_for_migrate(&err), "enqueue_in: {err}");
    tx.rollback().await.unwrap();
    let err = start_error(&client).await;
    assert!(asks_for_migrate(&err), "start: {err}");

    // A failed check is not remembered: after the migration it passes.
    client.migrate().await.unwrap();
    noop::with(3).enqueue(&client).await.unwrap();

    // A schema one migration behind.
    exec(
        &client,
        "DELETE FROM queue_schema_migrations WHERE version = 3",
    )
    .await;
    let behind = Client::connect(&db.url).await.unwrap();
    let err = noop::with(4).enqueue(&behind).await.unwrap_err();
    assert!(asks_for_migrate(&err), "enqueue: {err}");
    assert!(matches!(err, Error::SchemaTooOld { found: 2, .. }), "{err}");
    let err = start_error(&behind).await;
    assert!(asks_for_migrate(&err), "start: {err}");
    behind.migrate().await.unwrap();
    noop::with(5).enqueue(&behind).await.unwrap();
    db.drop_db().await;
}
