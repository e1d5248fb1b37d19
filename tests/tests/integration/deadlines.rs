//! Deadlines: server-side statement limits through `ctx.db()`, statements
//! refused after the deadline, `Deadline::run`, handlers stopped at the
//! deadline plus grace, transactions, and the MySQL watchdog path (run on
//! MariaDB through a hidden switch).
//!
//! Every test has its own tasks and queues (the tests of this binary share
//! statics). Time bounds are generous: the tests run in parallel on few
//! cores.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use queue_runtime::flavor::Flavor;
use queue_runtime::{
    Client, Db, Deadline, DeadlineExceeded, JobId, JobState, Runtime, TaskContext, TaskError,
    TaskErrorKind, task,
};
use queue_tests::wait_until;
use sqlx::Row;
use sqlx::mysql::MySqlPool;
use tokio::time::Instant;

use crate::setup;

/// Waits until job `id` is dead and returns its last error.
async fn dead_error(client: &Client, id: JobId, within: Duration) -> String {
    crate::wait_for_state(client, id, JobState::Dead, within).await;
    let job = client.job(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Dead);
    job.last_error.unwrap_or_default()
}

/// Statements of database `db` whose text contains `marker`, other than the
/// one asking.
async fn running_statements(pool: &MySqlPool, db: &str, marker: &str) -> Vec<String> {
    sqlx::query_scalar::<_, String>(
        "SELECT INFO FROM information_schema.PROCESSLIST \
         WHERE DB = ? AND ID <> CONNECTION_ID() AND INFO LIKE CONCAT('%', ?, '%')",
    )
    .bind(db)
    .bind(marker)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The server's error number of a sqlx error, if the server sent one.
fn server_error_number(e: &sqlx::Error) -> Option<u16> {
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .map(|m| m.number())
}

// ---------------------------------------------------------------------------
// A slow query is ended by the server at the deadline.

/// (elapsed since the attempt started, error text, server error number,
/// when it failed) of each attempt of `dl_slow_query`.
type SlowAttempt = (Duration, String, Option<u16>, Instant);
static SLOW_ATTEMPTS: Mutex<Vec<SlowAttempt>> = Mutex::new(Vec::new());
static AFTER_SLOW_OK: AtomicBool = AtomicBool::new(false);

#[task(
    queue = "dl_slow",
    deadline = "400ms",
    retries = 1,
    backoff = "constant(10ms)"
)]
async fn dl_slow_query(ctx: TaskContext) -> Result<(), TaskError> {
    let start = Instant::now();
    let result = sqlx::query("SELECT SLEEP(5) AS dl_slow_marker")
        .fetch_one(ctx.db())
        .await;
    let elapsed = start.elapsed();
    let e = result.expect_err("SLEEP(5) cannot finish within 400 ms");
    SLOW_ATTEMPTS.lock().unwrap().push((
        elapsed,
        e.to_string(),
        server_error_number(&e),
        Instant::now(),
    ));
    Err(e)?
}

#[task(queue = "dl_slow", deadline = "5s", retries = 0)]
async fn dl_after_slow(ctx: TaskContext) -> Result<(), TaskError> {
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(ctx.db()).await?;
    AFTER_SLOW_OK.store(one == 1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_query_is_ended_by_the_server_at_the_deadline() {
    let (db, client) = setup().await;
    let id = dl_slow_query::enqueue(&client, ()).await.unwrap();
    let runtime = Runtime::builder(client.clone())
        .queues(["dl_slow"])
        .start()
        .await
        .unwrap();
    let last_error = dead_error(&client, id, Duration::from_secs(20)).await;
    assert!(
        last_error.starts_with("deadline exceeded"),
        "last error: {last_error}"
    );

    let attempts = SLOW_ATTEMPTS.lock().unwrap().clone();
    assert_eq!(
        attempts.len(),
        2,
        "one retry (an attempt missing here was stopped at deadline + grace before the \
         server's error came back): {attempts:?}"
    );
    for (elapsed, text, number, _) in &attempts {
        assert!(
            *elapsed < Duration::from_secs(1),
            "the server ended SLEEP(5) after {elapsed:?}"
        );
        assert_eq!(*number, Some(1969), "max_statement_time exceeded: {text}");
    }

    // One second after the last failure, the statement no longer runs.
    let last_failure = attempts.last().unwrap().3;
    tokio::time::sleep_until(last_failure + Duration::from_secs(1)).await;
    let still = running_statements(&db.pool, &db.name, "dl_slow_marker").await;
    assert!(still.is_empty(), "still running: {still:?}");

    // The pool answers, and ctx.db() works in a later job.
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(client.pool())
        .await
        .unwrap();
    assert_eq!(one, 1);
    let id = dl_after_slow::enqueue(&client, ()).await.unwrap();
    wait_until(Duration::from_secs(10), "the later job succeeded", || {
        let client = client.clone();
        async move { client.job(id).await.unwrap().is_none() }
    })
    .await;
    assert!(AFTER_SLOW_OK.load(Ordering::SeqCst));

    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

// ---------------------------------------------------------------------------
// A statement issued after the deadline never reaches the server.

static LATE_STARTED: AtomicBool = AtomicBool::new(false);
static LATE_HELD: AtomicBool = AtomicBool::new(false);
/// (how long the refused statement took, its text, the TaskError's kind).
static LATE_RESULT: Mutex<Option<(Duration, String, TaskErrorKind)>> = Mutex::new(None);

#[task(queue = "dl_late", deadline = "3s", retries = 0)]
async fn dl_late_query(ctx: TaskContext) -> Result<(), TaskError> {
    LATE_STARTED.store(true, Ordering::SeqCst);
    // The test now takes the pool's only connection.
    while !LATE_HELD.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = ctx.deadline().expect("the task has a deadline");
    tokio::time::sleep_until(deadline.expires_at() + Duration::from_millis(20)).await;
    assert!(deadline.is_exceeded());
    let start = Instant::now();
    let result = sqlx::query("SELECT 1 AS dl_late_marker")
        .fetch_one(ctx.db())
        .await;
    let took = start.elapsed();
    let e = result.expect_err("a statement after the deadline is refused");
    let text = e.to_string();
    let e = TaskError::from(e);
    *LATE_RESULT.lock().unwrap() = Some((took, text, e.kind()));
    Err(e)
}

async fn questions(conn: &mut sqlx::MySqlConnection) -> u64 {
    let row = sqlx::query("SHOW SESSION STATUS LIKE 'Questions'")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    row.get::<String, _>(1).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_after_the_deadline_never_reaches_the_server() {
    let (db, _) = setup().await;
    // The runtime, and so ctx.db(), use a pool of one connection: while the
    // test holds it, nothing else can reach the server through the pool.
    let pool = db.new_pool(1).await;
    let client = Client::from_pool(pool.clone()).await.unwrap();
    let id = dl_late_query::enqueue(&client, ()).await.unwrap();
    let runtime = Runtime::builder(client.clone())
        .queues(["dl_late"])
        .concurrency(1)
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the task started", || async {
        LATE_STARTED.load(Ordering::SeqCst)
    })
    .await;
    let mut conn = pool.acquire().await.unwrap();
    let q0 = questions(&mut conn).await;
    let q1 = questions(&mut conn).await;
    LATE_HELD.store(true, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(10),
        "the late statement returned",
        || async { LATE_RESULT.lock().unwrap().is_some() },
    )
    .await;
    let q2 = questions(&mut conn).await;
    drop(conn);

    let (took, text, kind) = LATE_RESULT.lock().unwrap().clone().unwrap();
    // Refused at once, although the pool's only connection was held: it did
    // not even wait for a connection.
    assert!(took < Duration::from_millis(500), "refused after {took:?}");
    assert!(text.contains("deadline exceeded"), "{text}");
    assert_eq!(kind, TaskErrorKind::Deadline);
    // Only our own SHOW statements reached the server on that connection.
    assert_eq!(q2 - q1, q1 - q0, "questions {q0} {q1} {q2}");

    let last_error = dead_error(&client, id, Duration::from_secs(10)).await;
    assert!(
        last_error.starts_with("deadline exceeded"),
        "last error: {last_error}"
    );
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    pool.close().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------
// Deadline::run cancels a slow future.

static RUN_RESULT: Mutex<Option<(Duration, Result<(), DeadlineExceeded>)>> = Mutex::new(None);

#[task(queue = "dl_run", deadline = "300ms", retries = 0)]
async fn dl_slow_call() -> Result<(), TaskError> {
    let start = Instant::now();
    let deadline = Deadline::current().expect("the task runs in its deadline's scope");
    let result = deadline
        .run(tokio::time::sleep(Duration::from_secs(5)))
        .await;
    *RUN_RESULT.lock().unwrap() = Some((start.elapsed(), result));
    result?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_run_cancels_a_slow_future() {
    let (db, client) = setup().await;
    let id = dl_slow_call::enqueue(&client, ()).await.unwrap();
    let runtime = Runtime::builder(client.clone())
        .queues(["dl_run"])
        .start()
        .await
        .unwrap();
    let last_error = dead_error(&client, id, Duration::from_secs(10)).await;
    assert_eq!(last_error, "deadline exceeded");
    let (took, result) = RUN_RESULT
        .lock()
        .unwrap()
        .expect("Deadline::run returned (the handler was not stopped at deadline + grace)");
    assert_eq!(result, Err(DeadlineExceeded));
    assert!(
        took < Duration::from_millis(300) + Duration::from_millis(1_500),
        "cancelled after {took:?}"
    );
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

// ---------------------------------------------------------------------------
// A handler that ignores its deadline is stopped at deadline + grace.

static STUCK_STARTED: AtomicBool = AtomicBool::new(false);
static STUCK_DROPPED: AtomicBool = AtomicBool::new(false);

struct DropFlag;

impl Drop for DropFlag {
    fn drop(&mut self) {
        STUCK_DROPPED.store(true, Ordering::SeqCst);
    }
}

#[task(queue = "dl_stuck", deadline = "300ms", retries = 0)]
async fn dl_stuck() -> Result<(), TaskError> {
    let _flag = DropFlag;
    STUCK_STARTED.store(true, Ordering::SeqCst);
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_ignoring_its_deadline_is_stopped() {
    let (db, client) = setup().await;
    let id = dl_stuck::enqueue(&client, ()).await.unwrap();
    let runtime = Runtime::builder(client.clone())
        .queues(["dl_stuck"])
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the task started", || async {
        STUCK_STARTED.load(Ordering::SeqCst)
    })
    .await;
    let started = Instant::now();
    let last_error = dead_error(&client, id, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert_eq!(last_error, "deadline exceeded");
    // Stopped at 300 ms + 250 ms grace; generous bound for slow machines.
    assert!(took < Duration::from_secs(3), "stopped after {took:?}");
    assert!(
        STUCK_DROPPED.load(Ordering::SeqCst),
        "the handler was dropped"
    );
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

// ---------------------------------------------------------------------------
// A transaction's lock wait is bounded; nothing stays locked.

static TX_STARTED: AtomicBool = AtomicBool::new(false);
/// (how long the blocked UPDATE waited, its error number, how far past the
/// deadline it returned).
static TX_RESULT: Mutex<Option<(Duration, Option<u16>, Duration)>> = Mutex::new(None);

#[task(queue = "dl_tx", deadline = "1500ms", retries = 0)]
async fn dl_tx_blocked(ctx: TaskContext) -> Result<(), TaskError> {
    let deadline = ctx.deadline().unwrap();
    let mut tx = ctx.db().begin().await?;
    // Takes the lock on row 2 ...
    sqlx::query("UPDATE dl_accounts SET balance = balance + 100 WHERE id = 2")
        .execute(&mut tx)
        .await?;
    TX_STARTED.store(true, Ordering::SeqCst);
    // ... and waits for row 1, which the test holds.
    let start = Instant::now();
    let result = sqlx::query("UPDATE dl_accounts SET balance = balance + 1 WHERE id = 1")
        .execute(&mut tx)
        .await;
    let waited = start.elapsed();
    let past = Instant::now().saturating_duration_since(deadline.expires_at());
    let e = result.expect_err("row 1 stays locked past the deadline");
    *TX_RESULT.lock().unwrap() = Some((waited, server_error_number(&e), past));
    // Returning drops `tx`, which rolls back (and frees row 2).
    Err(e)?
}

#[task(queue = "dl_tx", deadline = "5s", retries = 0)]
async fn dl_tx_commits(ctx: TaskContext) -> Result<(), TaskError> {
    let mut tx = ctx.db().begin().await?;
    sqlx::query("UPDATE dl_accounts SET balance = balance + 7 WHERE id = 2")
        .execute(&mut tx)
        .await?;
    let balance: i32 = sqlx::query_scalar("SELECT balance FROM dl_accounts WHERE id = 2")
        .fetch_one(&mut tx)
        .await?;
    assert_eq!(balance, 7);
    tx.commit().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_lock_wait_is_bounded_and_rolled_back() {
    let (db, client) = setup().await;
    sqlx::raw_sql(
        "CREATE TABLE dl_accounts (id INT PRIMARY KEY, balance INT NOT NULL) ENGINE=InnoDB; \
         INSERT INTO dl_accounts VALUES (1, 0), (2, 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // Another connection holds row 1.
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("SELECT balance FROM dl_accounts WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut *locker)
        .await
        .unwrap();

    let id = dl_tx_blocked::enqueue(&client, ()).await.unwrap();
    let runtime = Runtime::builder(client.clone())
        .queues(["dl_tx"])
        .start()
        .await
        .unwrap();
    let last_error = dead_error(&client, id, Duration::from_secs(15)).await;
    assert!(TX_STARTED.load(Ordering::SeqCst));
    assert!(
        last_error.starts_with("deadline exceeded"),
        "last error: {last_error}"
    );
    let (waited, number, past) = TX_RESULT
        .lock()
        .unwrap()
        .expect("the blocked statement returned (the handler was not stopped at deadline + grace)");
    // MariaDB: max_statement_time (1969) or the lowered lock wait (1205).
    assert!(
        matches!(number, Some(1969 | 1205)),
        "error number {number:?}"
    );
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    assert!(
        past < Duration::from_millis(1_500),
        "returned {past:?} past the deadline"
    );
    locker.rollback().await.unwrap();

    // Row 2 is free again and its update was rolled back.
    wait_until(Duration::from_secs(10), "row 2 is unlocked", || {
        let pool = db.pool.clone();
        async move {
            sqlx::query(
                "SET STATEMENT innodb_lock_wait_timeout=1 FOR \
                 SELECT balance FROM dl_accounts WHERE id = 2 FOR UPDATE",
            )
            .fetch_one(&pool)
            .await
            .is_ok()
        }
    })
    .await;
    let balance: i32 = sqlx::query_scalar("SELECT balance FROM dl_accounts WHERE id = 2")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(balance, 0, "the blocked transaction was rolled back");

    // A transaction within its deadline commits.
    let id = dl_tx_commits::enqueue(&client, ()).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the committing job succeeded",
        || {
            let client = client.clone();
            async move { client.job(id).await.unwrap().is_none() }
        },
    )
    .await;
    let balance: i32 = sqlx::query_scalar("SELECT balance FROM dl_accounts WHERE id = 2")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(balance, 7);

    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

// ---------------------------------------------------------------------------
// MySQL's watchdog path (KILL QUERY), run on MariaDB.

async fn connection_id(pool: &MySqlPool) -> u64 {
    sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_watchdog_kills_a_write_at_the_deadline() {
    let (db, _) = setup().await;
    sqlx::raw_sql(
        "CREATE TABLE dl_watched (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB; \
         INSERT INTO dl_watched VALUES (1, 0), (2, 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // One connection, so that we know which one the handle uses.
    let pool = db.new_pool(1).await;
    let client = Client::from_pool(pool.clone()).await.unwrap();
    let lock_wait_before: u64 = sqlx::query_scalar("SELECT @@innodb_lock_wait_timeout")
        .fetch_one(&pool)
        .await
        .unwrap();
    let first_id = connection_id(&pool).await;

    // A write that finishes: the session's lock wait is lowered for it (to
    // the whole seconds left) and restored afterwards; the connection stays.
    let db_handle = Db::new(&client, Some(Deadline::after(Duration::from_secs(3))))
        .__with_flavor(Flavor::MySql);
    sqlx::query("UPDATE dl_watched SET v = @@innodb_lock_wait_timeout WHERE id = 2")
        .execute(db_handle)
        .await
        .unwrap();
    let v: i32 = sqlx::query_scalar("SELECT v FROM dl_watched WHERE id = 2")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        (1..=3).contains(&v) && u64::try_from(v).unwrap() <= lock_wait_before,
        "lock wait during the statement: {v}"
    );
    let lock_wait_after: u64 = sqlx::query_scalar("SELECT @@innodb_lock_wait_timeout")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(lock_wait_after, lock_wait_before, "restored");
    assert_eq!(connection_id(&pool).await, first_id, "reused");

    // A write still running at the deadline is killed by the watchdog.
    let db_handle = Db::new(&client, Some(Deadline::after(Duration::from_millis(400))))
        .__with_flavor(Flavor::MySql);
    let start = Instant::now();
    let e = sqlx::query("UPDATE dl_watched SET v = SLEEP(5) WHERE id = 1 /* dl_watch_marker */")
        .execute(db_handle)
        .await
        .expect_err("killed");
    let took = start.elapsed();
    assert_eq!(server_error_number(&e), Some(1317), "interrupted: {e}");
    assert!(took < Duration::from_secs(4), "killed after {took:?}");
    // KILL QUERY is asynchronous on the server: the statement leaves the
    // process list a moment after the client got its error.
    wait_until(
        Duration::from_secs(2),
        "the killed statement is gone",
        || {
            let pool = db.pool.clone();
            let name = db.name.clone();
            async move {
                running_statements(&pool, &name, "dl_watch_marker")
                    .await
                    .is_empty()
            }
        },
    )
    .await;
    // The killed statement's connection was closed, not reused.
    assert_ne!(connection_id(&pool).await, first_id, "a new connection");
    wait_until(
        Duration::from_secs(5),
        "the killed connection is gone",
        || {
            let pool = db.pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?",
                )
                .bind(first_id)
                .fetch_one(&pool)
                .await
                .unwrap()
                    == 0
            }
        },
    )
    .await;

    // The watchdog also fires when the caller gives up on the statement
    // before the deadline (its future dropped mid-flight).
    let db_handle = Db::new(&client, Some(Deadline::after(Duration::from_millis(600))))
        .__with_flavor(Flavor::MySql);
    let abandoned = tokio::time::timeout(
        Duration::from_millis(100),
        sqlx::query("UPDATE dl_watched SET v = SLEEP(5) WHERE id = 1 /* dl_abandon_marker */")
            .execute(db_handle),
    )
    .await;
    assert!(abandoned.is_err(), "gave up after 100 ms");
    wait_until(
        Duration::from_secs(3),
        "the abandoned statement is killed",
        || {
            let pool = db.pool.clone();
            let name = db.name.clone();
            async move {
                running_statements(&pool, &name, "dl_abandon_marker")
                    .await
                    .is_empty()
            }
        },
    )
    .await;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(one, 1, "the pool answers");

    pool.close().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------
// Streams and statements without a deadline.

/// The rows of a three-row statement, read through `fetch_all` (which
/// builds on the handle's `fetch_many`).
async fn collect_rows(db: Db<'_>) -> Vec<i64> {
    sqlx::query("SELECT 1 AS n UNION ALL SELECT 2 UNION ALL SELECT 3")
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<i64, _>(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_no_deadline_behave_like_the_pool() {
    let (db, client) = setup().await;
    let pool = db.new_pool(1).await;
    let client1 = Client::from_pool(pool.clone()).await.unwrap();
    drop(client);

    // With a deadline: the rows come through `fetch_many` (collected first).
    let limited = Db::new(&client1, Some(Deadline::after(Duration::from_secs(5))));
    let rows = collect_rows(limited).await;
    assert_eq!(rows, vec![1, 2, 3]);
    // Without: exactly the pool.
    let unlimited = Db::new(&client1, None);
    assert_eq!(unlimited.deadline(), None);
    let rows = collect_rows(unlimited).await;
    assert_eq!(rows, vec![1, 2, 3]);
    // A deadline scope inside tightens the handle's deadline.
    let near = Deadline::after(Duration::from_secs(1));
    Deadline::scope(Some(near), async {
        assert_eq!(limited.deadline(), Some(near));
        let e = sqlx::query("SELECT SLEEP(3)")
            .fetch_one(limited)
            .await
            .expect_err("limited by the scope");
        assert_eq!(server_error_number(&e), Some(1969), "{e}");
    })
    .await;
    // The connection is healthy afterwards.
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(limited)
        .await
        .unwrap();
    assert_eq!(one, 1);
    pool.close().await;
    db.drop_db().await;
}
