//! Wake-ups across processes, for real: a runtime in a worker process
//! (`queue-test-worker`) with a long poll interval parks a connection while
//! idle, and a job enqueued in this test process ends its sleep at once;
//! without the privilege to do that, the worker finds the job by polling.

#[path = "faults/tasks.rs"]
#[allow(dead_code, unreachable_pub)]
mod tasks;

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;
use queue_runtime::Client;
use queue_tests::{TestDb, wait_until};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One test at a time: each measures start latencies.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn setup() -> (TestDb, Client) {
    queue_tests::init_tracing();
    let db = TestDb::new().await;
    let client = Client::connect(&db.url).await.expect("connect");
    client.migrate().await.expect("migrate");
    sqlx::query(tasks::STAMPS_DDL)
        .execute(&db.pool)
        .await
        .expect("create stamps");
    (db, client)
}

/// A worker serving queue `wake` with poll interval `poll`; returns once
/// its runtime has started.
async fn worker(db: &TestDb, poll: Duration, wakeups: bool) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_queue-test-worker"))
        .env("QUEUE_TEST_DATABASE_URL", &db.url)
        .env(
            "RUST_LOG",
            std::env::var("WORKER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .args(["--queue", "wake", "--concurrency", "4"])
        .arg("--poll-ms")
        .arg(poll.as_millis().to_string())
        .arg("--wakeups")
        .arg(if wakeups { "on" } else { "off" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn queue-test-worker");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the worker starts within 30 s")
        .expect("read the worker's stdout");
    assert!(
        ready.as_deref().is_some_and(|l| l.starts_with("ready ")),
        "{ready:?}"
    );
    child
}

/// Waits until the worker's parked connection is registered for `wake`.
async fn wait_parked(client: &Client) {
    wait_until(
        Duration::from_secs(20),
        "the idle worker registers its parked connection",
        || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM queue_sleepers WHERE queue = 'wake'")
                .fetch_one(client.pool())
                .await
                .unwrap_or(0)
                > 0
        },
    )
    .await;
}

fn now_us() -> u64 {
    u64::try_from(Utc::now().timestamp_micros()).unwrap_or(0)
}

/// Enqueues one `stamp` job through `via` and returns its enqueue-to-start
/// time, as the worker recorded it.
async fn one_job(via: &Client, reader: &Client) -> Duration {
    let id = tasks::stamp::enqueue(via, now_us()).await.expect("enqueue");
    let started = Instant::now();
    loop {
        let row: Option<(u64, u64)> =
            sqlx::query_as("SELECT enqueued_us, started_us FROM stamps WHERE job_id = ?")
                .bind(id.0)
                .fetch_optional(reader.pool())
                .await
                .unwrap();
        if let Some((enq, start)) = row {
            return Duration::from_micros(start.saturating_sub(enq));
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "job {id} never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_in_another_process_starts_a_job_at_once() {
    let _serial = SERIAL.lock().await;
    let (db, client) = setup().await;
    // A poll interval of 5 s: polling alone would start a job after 2.5 s
    // on average.
    let mut child = worker(&db, Duration::from_secs(5), true).await;
    let mut waits = Vec::new();
    for _ in 0..5 {
        wait_parked(&client).await;
        // Long enough idle that its own polls are 1.6 s and more apart.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        waits.push(one_job(&client, &client).await);
    }
    println!("enqueue-to-start across processes, poll 5 s: {waits:?}");
    assert!(
        median(waits.clone()) < Duration::from_millis(200),
        "woken at once: {waits:?}"
    );
    assert!(
        waits.iter().all(|w| *w < Duration::from_millis(1500)),
        "every job well before the poll: {waits:?}"
    );
    let counts = client.wakeup_counts();
    assert!(counts.sent >= 5, "{counts:?}");
    assert_eq!(counts.refused, 0, "{counts:?}");
    child.start_kill().expect("stop the worker");
    let _ = child.wait().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_privilege_to_wake_it_the_worker_polls() {
    let _serial = SERIAL.lock().await;
    let (db, client) = setup().await;
    // A database user of its own, with every privilege on the test
    // database but none to end other users' statements.
    let user = format!("qt_nokill_{}", &db.name[3..]);
    let admin = sqlx::MySqlPool::connect(&queue_tests::admin_url())
        .await
        .expect("admin connection");
    for sql in [
        format!("DROP USER IF EXISTS '{user}'@'%'"),
        format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'nokill'"),
        format!("GRANT ALL PRIVILEGES ON `{}`.* TO '{user}'@'%'", db.name),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .expect("create the user");
    }
    let (scheme_host, rest) = db.url.split_once('@').expect("a URL with credentials");
    let scheme = &scheme_host[..scheme_host.find("://").expect("scheme") + 3];
    let nokill_url = format!("{scheme}{user}:nokill@{rest}");
    let nokill = Client::connect(&nokill_url)
        .await
        .expect("connect as the user");

    let poll = Duration::from_secs(1);
    let mut child = worker(&db, poll, true).await;
    let mut waits = Vec::new();
    for _ in 0..3 {
        wait_parked(&client).await;
        // Idle long enough that its own polls are the poll interval apart.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        waits.push(one_job(&nokill, &client).await);
    }
    println!("enqueue-to-start without the privilege, poll 1 s: {waits:?}");
    let counts = nokill.wakeup_counts();
    assert_eq!(
        counts.refused, 1,
        "the first kill was refused, and no other tried: {counts:?}"
    );
    assert_eq!(counts.sent, 1, "{counts:?}");
    assert!(
        waits.iter().all(|w| *w < poll + Duration::from_secs(2)),
        "found by polling: {waits:?}"
    );
    // The same user still wakes it.
    wait_parked(&client).await;
    let woken = one_job(&client, &client).await;
    assert!(
        client.wakeup_counts().sent >= 1 && woken < poll,
        "{woken:?}"
    );
    child.start_kill().expect("stop the worker");
    let _ = child.wait().await;
    drop(nokill);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP USER IF EXISTS '{user}'@'%'"
    )))
    .execute(&admin)
    .await
    .expect("drop the user");
    db.drop_db().await;
}
