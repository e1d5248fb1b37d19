//! `queue_runtime::testing` (feature `testing`): each helper is checked
//! against what it claims, including that the assertions fail, with
//! readable messages, when they should, and that `drain` reports a dead job
//! as dead.
//!
//! A binary of its own, so that its tasks (the cron one above all) are the
//! only ones its drains and clocks see.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use queue_runtime::testing::{self, Outcome, TestClock, TestDatabase};
use queue_runtime::{Client, TaskContext, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Welcome {
    to: String,
    name: String,
}

fn ann() -> Welcome {
    Welcome {
        to: "ann@example.com".into(),
        name: "Ann".into(),
    }
}

#[task(queue = "mail", priority = 1, name = "t.welcome")]
async fn welcome(_ctx: TaskContext, w: Welcome) -> Result<(), TaskError> {
    if w.to.is_empty() {
        return Err(TaskError::permanent("no address"));
    }
    Ok(())
}

/// Fails until its third attempt.
#[task(retries = 5, backoff = "constant(30s)", name = "t.flaky")]
async fn flaky(ctx: TaskContext) -> Result<(), TaskError> {
    if ctx.attempt() < 3 {
        return Err(format!("timeout on attempt {}", ctx.attempt()).into());
    }
    Ok(())
}

/// Always fails: dead after its 2 attempts.
#[task(retries = 1, backoff = "constant(1s)", name = "t.doomed")]
async fn doomed() -> Result<(), TaskError> {
    Err("mailbox unavailable".into())
}

#[task(name = "t.panics", retries = 0)]
async fn panics() -> Result<(), TaskError> {
    panic!("boom")
}

/// Records the order jobs run in.
static ORDER: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

#[task(name = "t.ordered", queue = "ordered")]
async fn ordered(n: u32) -> Result<(), TaskError> {
    ORDER.lock().unwrap().push(n);
    Ok(())
}

#[task(name = "t.writes", deadline = "5s")]
async fn writes(ctx: TaskContext, note: String) -> Result<(), TaskError> {
    sqlx::query("INSERT INTO notes (note, attempt) VALUES (?, ?)")
        .bind(&note)
        .bind(ctx.attempt())
        .execute(ctx.db())
        .await?;
    let mut tx = ctx.db().begin().await?;
    sqlx::query("INSERT INTO notes (note, attempt) VALUES ('inner', 0)")
        .execute(&mut tx)
        .await?;
    tx.rollback().await?;
    if note == "fail" {
        return Err("asked to fail".into());
    }
    Ok(())
}

#[task(name = "t.slow")]
async fn slow(ctx: TaskContext) -> Result<(), TaskError> {
    let left = ctx.deadline().map(|d| d.time_left());
    tokio::time::sleep(Duration::from_secs(30)).await;
    Err(format!("not stopped ({left:?} left)").into())
}

static TICKS: AtomicU32 = AtomicU32::new(0);

/// At 03:00 every day.
#[task(cron = "0 0 3 * * *", name = "t.nightly")]
async fn nightly() -> Result<(), TaskError> {
    TICKS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

async fn fresh() -> TestDatabase {
    TestDatabase::new()
        .await
        .expect("DATABASE_URL must name a server")
}

#[tokio::test]
async fn enqueued_returns_typed_payloads_and_options() {
    let db = fresh().await;
    let client = db.client();
    welcome::enqueue(client, ann()).await.unwrap();
    welcome::with(Welcome {
        to: "bob@example.com".into(),
        name: "Bob".into(),
    })
    .priority(4)
    .delay(Duration::from_secs(60))
    .deadline(Duration::from_secs(7))
    .unique_key("bob")
    .enqueue(client)
    .await
    .unwrap();
    let jobs = testing::enqueued(client, welcome::TASK).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].payload, ann());
    assert_eq!(
        (
            jobs[0].queue.as_str(),
            jobs[0].priority,
            jobs[0].max_attempts
        ),
        ("mail", 1, 4)
    );
    assert_eq!(jobs[0].state, queue_runtime::JobState::Ready);
    assert_eq!(jobs[0].deadline, None);
    assert_eq!(jobs[1].payload.name, "Bob");
    assert_eq!(jobs[1].priority, 4);
    assert_eq!(jobs[1].state, queue_runtime::JobState::Scheduled);
    assert_eq!(jobs[1].deadline, Some(Duration::from_secs(7)));
    assert_eq!(jobs[1].unique_key.as_deref(), Some("bob"));
    assert!(jobs[1].run_at > jobs[0].run_at + chrono::TimeDelta::seconds(50));
    db.close().await.unwrap();
}

#[tokio::test]
async fn assertions_fail_naming_the_difference() {
    let db = fresh().await;
    let client = db.client();
    // Nothing enqueued: the message says so, and what else is pending.
    flaky::enqueue(client, ()).await.unwrap();
    let e = testing::assert_enqueued_once(client, welcome::TASK, &ann())
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "expected one pending job of task `t.welcome`, found none\n  \
         expected: {\"name\":\"Ann\",\"to\":\"ann@example.com\"}\n  \
         pending jobs of other tasks: 1 of `t.flaky`"
    );

    let bob = Welcome {
        to: "bob@example.com".into(),
        name: "Ann".into(),
    };
    let id = welcome::enqueue(client, bob.clone()).await.unwrap();
    let e = testing::assert_enqueued(client, welcome::TASK, &ann())
        .await
        .unwrap_err();
    let want = format!(
        "no pending job of task `t.welcome` carries the expected payload\n  \
         expected: {{\"name\":\"Ann\",\"to\":\"ann@example.com\"}}\n  \
         job {id} (ready, queue `mail`, priority 1): {{\"to\":\"bob@example.com\",\"name\":\"Ann\"}}\n    \
         .to: expected \"ann@example.com\", enqueued \"bob@example.com\""
    );
    assert_eq!(e.message(), want);
    // Debug is the message itself, so `.unwrap()` prints it readably.
    assert_eq!(format!("{e:?}"), want);

    let e = testing::assert_not_enqueued(client, welcome::TASK)
        .await
        .unwrap_err();
    assert!(
        e.message()
            .starts_with("expected no pending job of task `t.welcome`, found 1\n  job "),
        "{e}"
    );

    // The right payload passes and returns the job; two jobs fail "once".
    let job = testing::assert_enqueued(client, welcome::TASK, &bob)
        .await
        .unwrap();
    assert_eq!(job.id, id);
    testing::assert_enqueued_once(client, welcome::TASK, &bob)
        .await
        .unwrap();
    welcome::enqueue(client, ann()).await.unwrap();
    let e = testing::assert_enqueued_once(client, welcome::TASK, &ann())
        .await
        .unwrap_err();
    assert!(
        e.message()
            .starts_with("expected one pending job of task `t.welcome`, found 2"),
        "{e}"
    );
    testing::assert_enqueued(client, welcome::TASK, &ann())
        .await
        .unwrap();
    db.close().await.unwrap();
}

#[tokio::test]
async fn drain_reports_success_failure_and_death() {
    let db = fresh().await;
    let client = db.client();
    let ok = welcome::enqueue(client, ann()).await.unwrap();
    let bad = welcome::enqueue(
        client,
        Welcome {
            to: String::new(),
            name: "x".into(),
        },
    )
    .await
    .unwrap();
    let f = flaky::enqueue(client, ()).await.unwrap();
    let p = panics::enqueue(client, ()).await.unwrap();

    // Without a clock to move, the retry waits for its backoff.
    let drained = testing::drain(client).await.unwrap();
    let outcome = |id| {
        drained
            .attempts()
            .iter()
            .find(|a| a.id == id)
            .map(|a| a.outcome.clone())
            .unwrap()
    };
    assert_eq!(drained.len(), 4, "{drained}");
    assert_eq!(outcome(ok), Outcome::Succeeded);
    assert_eq!(
        outcome(bad),
        Outcome::Dead {
            error: "no address".into()
        }
    );
    assert!(
        matches!(outcome(f), Outcome::Failed { ref error, .. } if error == "timeout on attempt 1"),
        "{drained}"
    );
    assert_eq!(
        outcome(p),
        Outcome::Dead {
            error: "panicked: boom".into()
        }
    );
    assert_eq!(
        (drained.succeeded(), drained.failed(), drained.dead()),
        (1, 1, 2)
    );
    // What drain reports is what the database holds.
    let dead = client.dead_jobs(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    let flaky_job = client.job(f).await.unwrap().unwrap();
    assert_eq!(flaky_job.state, queue_runtime::JobState::Scheduled);
    assert_eq!(flaky_job.attempts, 1);
    assert!(client.job(ok).await.unwrap().is_none());
    db.close().await.unwrap();
}

#[tokio::test]
async fn drain_advancing_runs_retries_to_the_end() {
    let db = fresh().await;
    let start = Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap();
    let clock = TestClock::new(db.client(), start).await.unwrap();
    let client = clock.client();
    let f = flaky::enqueue(client, ()).await.unwrap();
    let d = doomed::enqueue(client, ()).await.unwrap();
    let drained = testing::drain(client).advancing(&clock).await.unwrap();
    let of = |id| -> Vec<(u32, Outcome)> {
        drained
            .attempts()
            .iter()
            .filter(|a| a.id == id)
            .map(|a| (a.attempt, a.outcome.clone()))
            .collect()
    };
    let flaky_runs = of(f);
    assert_eq!(flaky_runs.len(), 3, "{drained}");
    assert_eq!(flaky_runs[2], (3, Outcome::Succeeded));
    assert!(
        matches!(&flaky_runs[0].1, Outcome::Failed { retry_at, .. } if *retry_at == start + chrono::TimeDelta::seconds(30)),
        "{drained}"
    );
    let doomed_runs = of(d);
    assert_eq!(doomed_runs.len(), 2, "{drained}");
    assert_eq!(
        doomed_runs[1],
        (
            2,
            Outcome::Dead {
                error: "mailbox unavailable".into()
            }
        )
    );
    // The clock moved to the last retry (60 s after the start: two 30-s backoffs).
    assert_eq!(clock.now(), start + chrono::TimeDelta::seconds(60));
    assert_eq!(drained.of(flaky::NAME).len(), 3);
    db.close().await.unwrap();
}

#[tokio::test]
async fn drain_claims_by_priority_and_stops_at_its_limit() {
    let db = fresh().await;
    let client = db.client();
    ordered::with(1).priority(4).enqueue(client).await.unwrap();
    ordered::with(2).priority(0).enqueue(client).await.unwrap();
    ordered::with(3).priority(2).enqueue(client).await.unwrap();
    let drained = testing::drain(client).queues(["ordered"]).await.unwrap();
    assert_eq!(drained.succeeded(), 3);
    assert_eq!(*ORDER.lock().unwrap(), [2, 3, 1]);

    ordered::enqueue_many(client, [7, 8, 9]).await.unwrap();
    let e = testing::drain(client).limit(2).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("drain ran 2 attempts and jobs are still ready"),
        "{e}"
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn perform_runs_the_handler_in_a_transaction_the_test_reads() {
    let db = fresh().await;
    let client = db.client();
    sqlx::query("CREATE TABLE notes (note VARCHAR(32), attempt INT)")
        .execute(client.pool())
        .await
        .unwrap();
    let performed = testing::perform(client, writes::TASK, "hello".to_owned())
        .attempt(3)
        .await
        .unwrap();
    assert!(performed.is_ok(), "{:?}", performed.result());
    // The handler's write is visible in its transaction, and the savepoint
    // it rolled back is gone...
    let rows: Vec<(String, i32)> = sqlx::query_as("SELECT note, attempt FROM notes")
        .fetch_all(performed.db())
        .await
        .unwrap();
    assert_eq!(rows, [("hello".to_owned(), 3)]);
    // ...and not outside it.
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM notes")
        .fetch_one(client.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
    performed.rollback().await.unwrap();

    let performed = testing::perform(client, writes::TASK, "kept".to_owned())
        .await
        .unwrap();
    performed.commit().await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM notes WHERE note = 'kept'")
        .fetch_one(client.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);

    let failed = testing::perform(client, writes::TASK, "fail".to_owned())
        .await
        .unwrap();
    assert_eq!(failed.error().unwrap().to_string(), "asked to fail");
    // Its transaction holds a lock on `notes` until it ends.
    failed.rollback().await.unwrap();

    let e = testing::perform(client, writes::TASK, "x".to_owned())
        .attempt(5)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid argument: perform `t.writes`: attempt 5 of 4; attempts count from 1 up to \
         the attempts allowed (at least 1)"
    );
    assert!(
        testing::perform(client, writes::TASK, "x".to_owned())
            .attempt(0)
            .await
            .is_err()
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn perform_stops_a_handler_at_its_deadline() {
    let db = fresh().await;
    let started = std::time::Instant::now();
    let performed = testing::perform(db.client(), slow::TASK, ())
        .deadline(Duration::from_millis(200))
        .await
        .unwrap();
    let e = performed.error().expect("stopped");
    assert_eq!(e.kind(), queue_runtime::TaskErrorKind::Deadline);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn the_test_clock_fires_each_cron_tick_it_passes() {
    let db = fresh().await;
    let start = Utc.with_ymd_and_hms(2030, 1, 30, 12, 0, 0).unwrap();
    let clock = TestClock::new(db.client(), start).await.unwrap();
    assert!(
        clock
            .advance(Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
    // Three nights: three ticks, one job each, as a running runtime would.
    let ticks = clock
        .advance(Duration::from_secs(3 * 24 * 3600))
        .await
        .unwrap();
    let times: Vec<_> = ticks.iter().map(|t| (t.task.as_str(), t.tick)).collect();
    assert_eq!(
        times,
        [
            (
                "t.nightly",
                Utc.with_ymd_and_hms(2030, 1, 31, 3, 0, 0).unwrap()
            ),
            (
                "t.nightly",
                Utc.with_ymd_and_hms(2030, 2, 1, 3, 0, 0).unwrap()
            ),
            (
                "t.nightly",
                Utc.with_ymd_and_hms(2030, 2, 2, 3, 0, 0).unwrap()
            ),
        ]
    );
    assert_eq!(
        testing::enqueued(clock.client(), nightly::TASK)
            .await
            .unwrap()
            .len(),
        3
    );
    let before = TICKS.load(Ordering::SeqCst);
    let drained = testing::drain(clock.client()).await.unwrap();
    assert_eq!(drained.of(nightly::NAME).len(), 3);
    assert_eq!(TICKS.load(Ordering::SeqCst) - before, 3);

    let e = clock.set(start).await.unwrap_err();
    assert!(e.to_string().contains("does not go back"), "{e}");
    let e = clock
        .advance(Duration::from_secs(40 * 365 * 24 * 3600))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("more than 10000 cron ticks"), "{e}");
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_test_database_is_dropped_when_dropped() {
    let admin = Client::connect(&std::env::var("DATABASE_URL").unwrap())
        .await
        .unwrap();
    let exists = |name: String| {
        let pool = admin.pool().clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
            )
            .bind(name)
            .fetch_one(&pool)
            .await
            .unwrap();
            n == 1
        }
    };
    let db = fresh().await;
    let name = db.name().to_owned();
    assert!(name.starts_with(testing::TEST_DATABASE_PREFIX));
    assert!(exists(name.clone()).await);
    drop(db);
    assert!(!exists(name).await);

    // A #[sqlx::test]-style pool: client_for migrates it.
    let db = fresh().await;
    let pool = db.pool().clone();
    sqlx::query("DROP TABLE queue_jobs, queue_schema_migrations")
        .execute(&pool)
        .await
        .unwrap();
    let client = testing::client_for(pool).await.unwrap();
    welcome::enqueue(&client, ann()).await.unwrap();
    db.close().await.unwrap();
}
