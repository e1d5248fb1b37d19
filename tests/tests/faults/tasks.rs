//! The tasks of the fault-injection tests, shared by the test binary
//! (`tests/faults.rs`, which enqueues them and runs some in process) and the
//! worker process (`src/bin/queue-test-worker.rs`), so that both register
//! the same task names.
//!
//! Every execution of a job is written to the `executions` table of the
//! test database ([`EXECUTIONS_DDL`]): one row per start, keyed by a random
//! token, with the job's number, attempt, the process id, and start and end
//! times. The statements are idempotent (the token is the primary key) and
//! retried until the database answers, so a row survives a database outage,
//! and a process killed mid-job leaves a row without an end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use queue_runtime::{TaskContext, TaskError, task};
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

/// The table the tasks record their executions in.
pub const EXECUTIONS_DDL: &str = "CREATE TABLE IF NOT EXISTS executions (
    exec       CHAR(32)         NOT NULL PRIMARY KEY,
    n          BIGINT UNSIGNED  NOT NULL,
    job_id     BIGINT UNSIGNED  NOT NULL,
    attempt    INT UNSIGNED     NOT NULL,
    pid        INT UNSIGNED     NOT NULL,
    started_at DATETIME(6)      NOT NULL,
    ended_at   DATETIME(6)      NULL,
    KEY executions_n (n)
) ENGINE = InnoDB";

/// What one job of [`work`] does.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Work {
    /// The job's number in the test (its identity across attempts).
    pub n: u64,
    /// How long the job's first execution sleeps.
    pub sleep_ms: u64,
    /// How long every later execution (rescued, handed back) sleeps.
    pub later_sleep_ms: u64,
    /// Record the start before sleeping (so a test sees the job running, and
    /// a killed process leaves a row), not only the whole execution at its end.
    pub mark_start: bool,
    /// The first execution fails permanently (after sleeping): used to show
    /// that a worker whose lease was taken cannot bury the job.
    pub fail_first: bool,
}

/// Handlers of this process that are running now (started and not yet
/// returned or dropped).
pub static ALIVE: AtomicUsize = AtomicUsize::new(0);

struct Alive;

impl Alive {
    fn new() -> Alive {
        ALIVE.fetch_add(1, Ordering::SeqCst);
        Alive
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        ALIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sleeps, records, and succeeds (or fails, see [`Work::fail_first`]).
#[task(
    name = "faults.work",
    queue = "faults",
    retries = 3,
    backoff = "constant(50ms)"
)]
pub async fn work(ctx: TaskContext, w: Work) -> Result<(), TaskError> {
    let _alive = Alive::new();
    let pool = ctx.client().pool().clone();
    let exec = uuid::Uuid::new_v4().simple().to_string();
    let started = Utc::now();
    let mut first = true;
    if w.mark_start || w.fail_first {
        first = persist(|| async {
            let earlier: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM executions WHERE n = ? AND exec <> ?")
                    .bind(w.n)
                    .bind(&exec)
                    .fetch_one(&pool)
                    .await?;
            record(&pool, &exec, &w, &ctx, started, None).await?;
            Ok(earlier == 0)
        })
        .await?;
    }
    let ms = if first { w.sleep_ms } else { w.later_sleep_ms };
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let ended = Utc::now();
    persist(|| record(&pool, &exec, &w, &ctx, started, Some(ended))).await?;
    if w.fail_first && first {
        return Err(TaskError::permanent(std::io::Error::other(
            "the first execution fails",
        )));
    }
    Ok(())
}

/// Records its start, then kills its process (as a segfault or the OOM
/// killer would), every time.
#[task(name = "faults.abort", queue = "faults_abort", retries = 1)]
pub async fn kill_process(ctx: TaskContext, w: Work) -> Result<(), TaskError> {
    let pool = ctx.client().pool().clone();
    let exec = uuid::Uuid::new_v4().simple().to_string();
    let started = Utc::now();
    persist(|| record(&pool, &exec, &w, &ctx, started, None)).await?;
    eprintln!(
        "faults.abort: job {} attempt {}: aborting the process",
        w.n,
        ctx.attempt()
    );
    std::process::abort();
}

/// Inserts (or completes) the execution row `exec`. Idempotent.
async fn record(
    pool: &MySqlPool,
    exec: &str,
    w: &Work,
    ctx: &TaskContext,
    started: DateTime<Utc>,
    ended: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO executions (exec, n, job_id, attempt, pid, started_at, ended_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE ended_at = VALUES(ended_at)",
    )
    .bind(exec)
    .bind(w.n)
    .bind(ctx.job_id().0)
    .bind(ctx.attempt())
    .bind(std::process::id())
    .bind(started)
    .bind(ended)
    .execute(pool)
    .await?;
    Ok(())
}

/// Runs `f` until it succeeds (the database may be restarting), for up to
/// two minutes.
async fn persist<T, F, Fut>(mut f: F) -> Result<T, TaskError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut wait = Duration::from_millis(50);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= until => return Err(e.into()),
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// One execution of [`remember`], kept in this process's memory.
#[derive(Clone, Debug)]
pub struct Remembered {
    /// The job's number.
    pub n: u64,
    /// The attempt.
    pub attempt: u32,
    /// When the handler started.
    pub started: std::time::Instant,
    /// When it returned (`None` while it runs or if it was cancelled).
    pub ended: Option<std::time::Instant>,
}

/// Executions of [`remember`] in this process.
pub static REMEMBERED: std::sync::Mutex<Vec<Remembered>> = std::sync::Mutex::new(Vec::new());

/// Like [`work`], but records in memory: it needs no database, so it runs
/// to its end while the database is down.
#[task(name = "faults.remember", queue = "faults_mem", retries = 5)]
pub async fn remember(ctx: TaskContext, w: Work) -> Result<(), TaskError> {
    let _alive = Alive::new();
    let (index, first) = {
        let mut all = REMEMBERED.lock().unwrap_or_else(|p| p.into_inner());
        let first = !all.iter().any(|r| r.n == w.n);
        all.push(Remembered {
            n: w.n,
            attempt: ctx.attempt(),
            started: std::time::Instant::now(),
            ended: None,
        });
        (all.len() - 1, first)
    };
    let ms = if first { w.sleep_ms } else { w.later_sleep_ms };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    REMEMBERED.lock().unwrap_or_else(|p| p.into_inner())[index].ended =
        Some(std::time::Instant::now());
    Ok(())
}

/// The tables the flow-control tasks record in: a gauge per limit (jobs
/// running now, and the most at once), and each start with the time its
/// claim counted it at.
pub const LIMITS_DDL: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS gauges (
        k    VARCHAR(64) NOT NULL PRIMARY KEY,
        now  INT         NOT NULL,
        peak INT         NOT NULL
    ) ENGINE = InnoDB",
    "CREATE TABLE IF NOT EXISTS starts (
        job_id     BIGINT UNSIGNED NOT NULL PRIMARY KEY,
        task       VARCHAR(64)     NOT NULL,
        claimed_at DATETIME(6)     NOT NULL,
        started_at DATETIME(6)     NOT NULL
    ) ENGINE = InnoDB",
];

/// At most 3 run at once across every runtime.
#[task(name = "faults.capped", queue = "limits", concurrency = 3)]
pub async fn capped(ctx: TaskContext, sleep_ms: u64) -> Result<(), TaskError> {
    gauge(&ctx, "capped".to_owned(), sleep_ms).await
}

/// At most one per key (the first number) at once.
#[task(
    name = "faults.keyed",
    queue = "limits",
    concurrency = 1,
    concurrency_key = |p: &(u32, u64)| p.0
)]
pub async fn keyed(ctx: TaskContext, p: (u32, u64)) -> Result<(), TaskError> {
    gauge(&ctx, format!("key{}", p.0), p.1).await
}

/// At most 20 starts per second across every runtime.
#[task(name = "faults.rated", queue = "limits", rate = "20/1s")]
pub async fn rated(ctx: TaskContext, n: u64) -> Result<(), TaskError> {
    let _ = n;
    record_start(&ctx, "rated").await
}

/// No limit: enqueued behind a limited backlog.
#[task(name = "faults.free", queue = "limits")]
pub async fn free(ctx: TaskContext, n: u64) -> Result<(), TaskError> {
    let _ = n;
    record_start(&ctx, "free").await
}

/// Counts the job in gauge `k` while it sleeps `sleep_ms`.
async fn gauge(ctx: &TaskContext, k: String, sleep_ms: u64) -> Result<(), TaskError> {
    let pool = ctx.client().pool().clone();
    persist(|| {
        sqlx::query(
            "INSERT INTO gauges (k, now, peak) VALUES (?, 1, 1) \
             ON DUPLICATE KEY UPDATE peak = GREATEST(peak, now + 1), now = now + 1",
        )
        .bind(&k)
        .execute(&pool)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    persist(|| {
        sqlx::query("UPDATE gauges SET now = now - 1 WHERE k = ?")
            .bind(&k)
            .execute(&pool)
    })
    .await?;
    Ok(())
}

/// Records the start of this job with the time its claim stamped it with
/// (the job row's `updated_at` while it runs: the instant the rate limit
/// counted the start at).
async fn record_start(ctx: &TaskContext, task: &str) -> Result<(), TaskError> {
    let pool = ctx.client().pool().clone();
    let id = ctx.job_id().0;
    persist(|| {
        sqlx::query(
            "INSERT IGNORE INTO starts (job_id, task, claimed_at, started_at) \
             SELECT id, ?, updated_at, NOW(6) FROM queue_jobs WHERE id = ?",
        )
        .bind(task)
        .bind(id)
        .execute(&pool)
    })
    .await?;
    Ok(())
}

/// The table [`stamp`] writes: when each job's handler started, in
/// microseconds since the Unix epoch (the wall clock of the worker's
/// machine, the test's own).
pub const STAMPS_DDL: &str = "CREATE TABLE IF NOT EXISTS stamps (
    job_id      BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    enqueued_us BIGINT UNSIGNED NOT NULL,
    started_us  BIGINT UNSIGNED NOT NULL
)";

/// Records its start time beside the enqueue time it carries (the
/// cross-process wake-up tests, `tests/wakeups.rs`).
#[task(name = "faults.stamp", queue = "wake", retries = 5)]
pub async fn stamp(ctx: TaskContext, enqueued_us: u64) -> Result<(), TaskError> {
    let started_us = u64::try_from(Utc::now().timestamp_micros()).unwrap_or(0);
    let pool = ctx.client().pool().clone();
    let id = ctx.job_id().0;
    persist(|| {
        sqlx::query("INSERT IGNORE INTO stamps (job_id, enqueued_us, started_us) VALUES (?, ?, ?)")
            .bind(id)
            .bind(enqueued_us)
            .bind(started_us)
            .execute(&pool)
    })
    .await?;
    Ok(())
}

/// The tables of the cluster test (`tests/cluster.rs`): the side effect of
/// each job, a row under a UNIQUE key written through `ctx.db()`, and any
/// execution that found its job's row written by another execution.
pub const CLUSTER_DDL: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS effects (
        n      BIGINT UNSIGNED NOT NULL PRIMARY KEY,
        job_id BIGINT UNSIGNED NOT NULL,
        exec   CHAR(32)        NOT NULL
    ) ENGINE = InnoDB",
    "CREATE TABLE IF NOT EXISTS doubles (
        exec   CHAR(32)        NOT NULL PRIMARY KEY,
        n      BIGINT UNSIGNED NOT NULL,
        first  CHAR(32)        NOT NULL
    ) ENGINE = InnoDB",
];

/// Records its start and end in `executions` (as [`work`] does) and, in
/// between, its side effect: job `n`'s row of `effects`, through
/// `ctx.db()`. Every statement is retried until the database answers (a
/// node may be dying: the next connection reaches another). A duplicate
/// key on that row is this execution's own earlier try (its reply lost)
/// or another execution's: the latter is recorded in `doubles`.
#[task(
    name = "cluster.effect",
    queue = "cluster",
    retries = 5,
    backoff = "constant(100ms)"
)]
pub async fn effect(ctx: TaskContext, n: u64) -> Result<(), TaskError> {
    let pool = ctx.client().pool().clone();
    let exec = uuid::Uuid::new_v4().simple().to_string();
    let w = Work {
        n,
        ..Work::default()
    };
    let started = Utc::now();
    persist(|| record(&pool, &exec, &w, &ctx, started, None)).await?;
    let job_id = ctx.job_id().0;
    persist(|| async {
        let inserted = sqlx::query("INSERT INTO effects (n, job_id, exec) VALUES (?, ?, ?)")
            .bind(n)
            .bind(job_id)
            .bind(&exec)
            .execute(ctx.db())
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let first: String = sqlx::query_scalar("SELECT exec FROM effects WHERE n = ?")
                    .bind(n)
                    .fetch_one(ctx.db())
                    .await?;
                if first != exec {
                    sqlx::query("INSERT IGNORE INTO doubles (exec, n, first) VALUES (?, ?, ?)")
                        .bind(&exec)
                        .bind(n)
                        .bind(&first)
                        .execute(ctx.db())
                        .await?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    })
    .await?;
    let ended = Utc::now();
    persist(|| record(&pool, &exec, &w, &ctx, started, Some(ended))).await?;
    Ok(())
}
