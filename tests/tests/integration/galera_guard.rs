//! The guarded transactions the runtime runs on a Galera node
//! (docs/scaling.md), on this single server: the guard's SQL is plain
//! MariaDB (a temporary table, `IF … SIGNAL`), so it runs here as on a
//! node. A transaction "aborted" here is one whose work a `ROLLBACK` in
//! its middle undid, as a brute-force abort does on Galera: the statements
//! after it run in a new implicit transaction.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use queue_runtime::__private::galera::{GUARDED_BEGIN_RC, GUARDED_COMMIT, GUARDED_ROLLBACK};
use queue_runtime::{Client, ClientOptions, Db, TaskContext, TaskError, task};
use queue_tests::wait_until;
use sqlx::{AssertSqlSafe, Connection, MySqlConnection};

use crate::setup;

async fn rows(client: &Client) -> Vec<i32> {
    sqlx::query_scalar("SELECT id FROM guarded ORDER BY id")
        .fetch_all(client.pool())
        .await
        .unwrap()
}

/// `@@autocommit` and `@@in_transaction` of a connection.
async fn session(conn: &mut MySqlConnection) -> (i64, i64) {
    sqlx::query_as("SELECT CAST(@@autocommit AS SIGNED), CAST(@@in_transaction AS SIGNED)")
        .fetch_one(conn)
        .await
        .unwrap()
}

fn is_guard_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|m| m.number()) == Some(1213)
            && d.message().contains("queue-runtime Galera guard"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_handler_transaction_commits_whole_or_fails_with_1213() {
    let (db, _) = setup().await;
    // One connection, so every transaction below runs on the same one.
    let client = Client::connect_with(&db.url, ClientOptions::new().max_connections(1))
        .await
        .unwrap()
        .__with_galera_guard(true);
    sqlx::query("CREATE TABLE guarded (id INT PRIMARY KEY)")
        .execute(client.pool())
        .await
        .unwrap();

    // Commits whole.
    let mut tx = Db::new(&client, None).begin().await.unwrap();
    sqlx::query("INSERT INTO guarded VALUES (1), (2)")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(rows(&client).await, [1, 2]);

    // Aborted in the middle: its first statement undone, the next one in a
    // new implicit transaction. The commit fails with 1213 and keeps
    // neither.
    let mut tx = Db::new(&client, None).begin().await.unwrap();
    sqlx::query("INSERT INTO guarded VALUES (3)")
        .execute(&mut tx)
        .await
        .unwrap();
    sqlx::query("ROLLBACK").execute(&mut tx).await.unwrap();
    sqlx::query("INSERT INTO guarded VALUES (4)")
        .execute(&mut tx)
        .await
        .unwrap();
    let e = tx.commit().await.unwrap_err();
    assert!(is_guard_error(&e), "{e:?}");
    assert_eq!(rows(&client).await, [1, 2], "nothing of it committed");

    // The connection went back to the pool rolled back, autocommit on.
    let mut conn = client.pool().acquire().await.unwrap();
    assert_eq!(session(&mut conn).await, (1, 0));
    drop(conn);

    // Rolled back, and dropped while open: nothing kept, the connection
    // clean again.
    let mut tx = Db::new(&client, None).begin().await.unwrap();
    sqlx::query("INSERT INTO guarded VALUES (5)")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = Db::new(&client, None).begin().await.unwrap();
    sqlx::query("INSERT INTO guarded VALUES (6)")
        .execute(&mut tx)
        .await
        .unwrap();
    drop(tx);
    wait_until(
        Duration::from_secs(5),
        "the dropped transaction rolled back",
        || async {
            let mut conn = client.pool().acquire().await.unwrap();
            session(&mut conn).await == (1, 0)
        },
    )
    .await;
    assert_eq!(rows(&client).await, [1, 2]);

    // Without the guard, the same aborted transaction commits its second
    // half and reports success: what the guard is for.
    let plain = client.__with_galera_guard(false);
    let mut tx = Db::new(&plain, None).begin().await.unwrap();
    sqlx::query("INSERT INTO guarded VALUES (7)")
        .execute(&mut tx)
        .await
        .unwrap();
    sqlx::query("ROLLBACK").execute(&mut tx).await.unwrap();
    sqlx::query("INSERT INTO guarded VALUES (8)")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(rows(&client).await, [1, 2, 8]);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_guard_fails_before_and_after_commit() {
    let (db, client) = setup().await;
    sqlx::query("CREATE TABLE guarded (id INT PRIMARY KEY)")
        .execute(client.pool())
        .await
        .unwrap();
    let mut conn = MySqlConnection::connect(&db.url).await.unwrap();
    let batch = |middle: &str, commit: &str| {
        format!(
            "{GUARDED_BEGIN_RC}; INSERT INTO guarded VALUES (1); {middle}; INSERT INTO guarded VALUES (2); {commit}"
        )
    };

    // One multi-statement batch, as the store sends them: committed whole.
    sqlx::raw_sql(AssertSqlSafe(batch("DO 0", GUARDED_COMMIT)))
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows(&client).await, [1, 2]);
    assert_eq!(session(&mut conn).await, (1, 0));
    sqlx::query("DELETE FROM guarded")
        .execute(&mut conn)
        .await
        .unwrap();

    // Aborted before the commit: the guard before COMMIT stops the batch.
    let e = sqlx::raw_sql(AssertSqlSafe(batch("ROLLBACK", GUARDED_COMMIT)))
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(is_guard_error(&e), "{e:?}");
    assert!(e.to_string().contains("before COMMIT"), "{e}");
    // Statement 2 waits in the implicit transaction until the rollback.
    assert_eq!(session(&mut conn).await, (0, 1));
    sqlx::raw_sql(GUARDED_ROLLBACK)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(session(&mut conn).await, (1, 0));
    assert!(rows(&client).await.is_empty(), "nothing committed");

    // A COMMIT that ended another transaction than the one begun (an abort
    // during the first guard, on Galera): the guard after COMMIT fails.
    let after_first_guard = GUARDED_COMMIT
        .split_once("; COMMIT; ")
        .map(|(_, rest)| format!("COMMIT; {rest}"))
        .unwrap();
    let e = sqlx::raw_sql(AssertSqlSafe(batch("ROLLBACK", &after_first_guard)))
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(is_guard_error(&e), "{e:?}");
    assert!(e.to_string().contains("COMMIT ended"), "{e}");
    sqlx::raw_sql(GUARDED_ROLLBACK)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(session(&mut conn).await, (1, 0));
    // (The second INSERT ran after the ROLLBACK and that COMMIT committed
    // it: which is why the guard before COMMIT is there.)
    assert_eq!(rows(&client).await, [2]);
    db.drop_db().await;
}

static FLAKY: AtomicU32 = AtomicU32::new(0);

#[task(queue = "guarded", name = "tests.guard.noop")]
async fn noop(_ctx: TaskContext, _n: u32) -> Result<(), TaskError> {
    Ok(())
}

#[task(queue = "guarded", name = "tests.guard.slotted", concurrency = 2)]
async fn slotted(_ctx: TaskContext, _n: u32) -> Result<(), TaskError> {
    tokio::time::sleep(Duration::from_millis(2)).await;
    Ok(())
}

#[task(
    queue = "guarded",
    name = "tests.guard.flaky",
    retries = 3,
    backoff = "constant(10ms)"
)]
async fn flaky(ctx: TaskContext, _n: u32) -> Result<(), TaskError> {
    if ctx.attempt() == 1 {
        FLAKY.fetch_add(1, Ordering::SeqCst);
        return Err(TaskError::msg("first attempt fails"));
    }
    let mut tx = ctx.db().begin().await?;
    sqlx::query("INSERT INTO flaky_done (job) VALUES (?)")
        .bind(ctx.job_id().0)
        .execute(&mut tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A runtime whose every store transaction is guarded (claims, coalesced
/// and unique enqueues, successes with their counts, slot hand-overs,
/// retries) drains plain, concurrency-limited, unique and failing jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_with_guarded_transactions_drains_every_kind_of_job() {
    let (db, plain) = setup().await;
    let client = plain.__with_galera_guard(true);
    sqlx::query("CREATE TABLE flaky_done (job BIGINT UNSIGNED PRIMARY KEY)")
        .execute(client.pool())
        .await
        .unwrap();
    let mut ids = Vec::new();
    ids.extend(noop::enqueue_many(&client, 0..300).await.unwrap());
    for n in 0..20 {
        ids.push(noop::enqueue(&client, 1000 + n).await.unwrap());
    }
    ids.extend(slotted::enqueue_many(&client, 0..40).await.unwrap());
    ids.extend(flaky::enqueue_many(&client, 0..20).await.unwrap());
    let unique = noop::with(5000)
        .unique_key("k")
        .enqueue(&client)
        .await
        .unwrap();
    let again = noop::with(5001)
        .unique_key("k")
        .enqueue(&client)
        .await
        .unwrap();
    assert_eq!(unique, again, "a unique key keeps one pending job");
    ids.push(unique);
    let runtime = queue_runtime::Runtime::builder(client.clone())
        .queues(["guarded"])
        .concurrency(8)
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), "every job to finish", || async {
        let t = client.stats().await.unwrap().total;
        t.ready + t.running + t.scheduled + t.blocked == 0
    })
    .await;
    runtime.shutdown(Duration::from_secs(10)).await.unwrap();
    for id in &ids {
        assert!(client.job(*id).await.unwrap().is_none(), "job {id} done");
    }
    let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM flaky_done")
        .fetch_one(client.pool())
        .await
        .unwrap();
    assert_eq!(done, 20);
    assert_eq!(FLAKY.load(Ordering::SeqCst), 20);
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue_jobs")
        .fetch_one(client.pool())
        .await
        .unwrap();
    assert_eq!(dead, 0, "no job left, dead or otherwise");
    db.drop_db().await;
}
