//! Fault injection, for real, against MariaDB: worker processes killed with
//! SIGKILL, stopped past their lease, killing themselves; the database
//! server stopped and started under load; four processes sharing one
//! queue; graceful shutdown handing jobs back. Each test asserts on every
//! job, from the `executions` table the tasks write (see `faults/tasks.rs`).
//!
//! These tests are heavy and some are timing-sensitive (short leases), so
//! they run one at a time (a lock, [`SERIAL`]), in their own test binary.
//!
//! The `server_restart_*` tests stop and start the private MariaDB server
//! of `scripts/db.sh`: every other test using that server at the same time
//! fails. Within this binary the lock keeps the others out; `scripts/test`
//! runs them in a separate, last `cargo test` invocation. They fail (never
//! skip) when `DATABASE_URL` names another server. To try them while others
//! use the shared server, run the built test binary with a server of its
//! own, e.g.
//! `CARGO_TARGET_DIR=/tmp/faults-db QUEUE_DB_PORT=3367 target/debug/deps/faults-… server_restart`
//! (only `scripts/db.sh` reads those two variables there).

#[path = "faults/tasks.rs"]
#[allow(dead_code, unreachable_pub)]
mod tasks;

use std::collections::{BTreeMap, HashMap};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use queue_runtime::{Client, JobState, Runtime};
use queue_tests::{TestDb, wait_until};
use sqlx::Row;
use tokio::process::{Child, Command};

use tasks::Work;

/// One fault test at a time: they are heavy, use short leases, and one of
/// them stops the database server.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh database with the schema and the `executions` table, and a client.
async fn setup() -> (TestDb, Client) {
    queue_tests::init_tracing();
    let db = TestDb::new().await;
    let client = Client::connect(&db.url).await.expect("connect");
    client.migrate().await.expect("migrate");
    sqlx::query(tasks::EXECUTIONS_DDL)
        .execute(&db.pool)
        .await
        .expect("create executions");
    (db, client)
}

/// One row of `executions`.
#[derive(Clone, Debug)]
struct Execution {
    n: u64,
    job_id: u64,
    attempt: u32,
    pid: u32,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
}

async fn executions(db: &TestDb) -> Vec<Execution> {
    sqlx::query(
        "SELECT n, job_id, attempt, pid, started_at, ended_at FROM executions ORDER BY n, started_at, exec",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read executions")
    .iter()
    .map(|r| Execution {
        n: r.get(0),
        job_id: r.get(1),
        attempt: r.get(2),
        pid: r.get(3),
        started_at: r.get(4),
        ended_at: r.get(5),
    })
    .collect()
}

/// Executions grouped by job number.
fn by_job(rows: &[Execution]) -> BTreeMap<u64, Vec<Execution>> {
    let mut map: BTreeMap<u64, Vec<Execution>> = BTreeMap::new();
    for r in rows {
        map.entry(r.n).or_default().push(r.clone());
    }
    map
}

async fn count(db: &TestDb, sql: &'static str) -> u64 {
    let n: i64 = sqlx::query_scalar(sql)
        .fetch_one(&db.pool)
        .await
        .expect(sql);
    u64::try_from(n).expect("a count")
}

/// Jobs not yet finished (ready, scheduled, running or dead).
async fn unfinished(client: &Client) -> u64 {
    client.stats().await.expect("stats").total.total()
}

fn work(n: u64, sleep_ms: u64, later_sleep_ms: u64, mark_start: bool) -> Work {
    Work {
        n,
        sleep_ms,
        later_sleep_ms,
        mark_start,
        fail_first: false,
    }
}

/// A `queue-test-worker` process; its stdout and stderr are collected (and
/// echoed to the test's output, shown when the test fails).
struct Worker {
    child: Child,
    pid: u32,
    log: Arc<Mutex<String>>,
}

/// Options of a worker process.
struct WorkerOpts {
    queue: &'static str,
    concurrency: usize,
    prefetch: Option<usize>,
    lease: Option<Duration>,
    heartbeat: Option<Duration>,
    drain: Duration,
}

impl Default for WorkerOpts {
    fn default() -> Self {
        WorkerOpts {
            queue: "faults",
            concurrency: 10,
            prefetch: None,
            lease: None,
            heartbeat: None,
            drain: Duration::from_secs(5),
        }
    }
}

impl Worker {
    fn spawn(db: &TestDb, opts: WorkerOpts) -> Worker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_queue-test-worker"));
        cmd.env("QUEUE_TEST_DATABASE_URL", &db.url)
            .env(
                "RUST_LOG",
                std::env::var("WORKER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .arg("--queue")
            .arg(opts.queue)
            .arg("--concurrency")
            .arg(opts.concurrency.to_string())
            .arg("--drain-ms")
            .arg(opts.drain.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(lease) = opts.lease {
            cmd.arg("--lease-ms").arg(lease.as_millis().to_string());
        }
        if let Some(hb) = opts.heartbeat {
            cmd.arg("--heartbeat-ms").arg(hb.as_millis().to_string());
        }
        if let Some(n) = opts.prefetch {
            cmd.arg("--prefetch").arg(n.to_string());
        }
        let mut child = cmd.spawn().expect("spawn queue-test-worker");
        let pid = child.id().expect("worker pid");
        let log = queue_tests::capture_output(&mut child, format!("worker {pid}"));
        Worker { child, pid, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Lines of the log that contain `needle`.
    fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    async fn wait_ready(&self) {
        wait_until(Duration::from_secs(30), "the worker to start", || async {
            self.log().contains("ready ")
        })
        .await;
    }

    async fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
    }

    /// SIGKILL, and wait until the process is gone.
    async fn sigkill(&mut self) -> ExitStatus {
        self.child.start_kill().expect("SIGKILL the worker");
        self.wait_exit(Duration::from_secs(30)).await
    }

    /// SIGTERM (graceful shutdown), and wait until the process exits.
    async fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM").await;
        self.wait_exit(Duration::from_secs(60)).await
    }

    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for the worker"),
            Err(_) => panic!("worker {} did not exit within {timeout:?}", self.pid),
        }
    }
}

/// Starts the private server again if a test fails while it is stopped, so
/// that the tests after it find it running.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(queue_tests::db_script())
            .arg("start")
            .current_dir(queue_tests::repo_root())
            .stdout(Stdio::null())
            .status();
    }
}

/// SIGKILL a worker with jobs in flight: after its lease, another worker
/// runs every one of them again as attempt 2, and the jobs that were still
/// waiting run once; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_worker_jobs_run_again_after_the_lease_as_attempt_2() {
    let _serial = SERIAL.lock().await;
    let (db, client) = setup().await;
    const IN_FLIGHT: u64 = 20;
    const WAITING: u64 = 20;
    // Short, to keep the test short; 6 heartbeats per lease leave room for
    // a stalled worker on a loaded machine.
    let lease = Duration::from_secs(3);
    // No prefetch: the 20 quick jobs must stay in ready while A runs (a
    // prefetching A would hold them too, leased, and they would come back
    // after the kill like the running ones, with an attempt counted).
    let opts = || WorkerOpts {
        concurrency: IN_FLIGHT as usize,
        prefetch: Some(0),
        lease: Some(lease),
        heartbeat: Some(Duration::from_millis(500)),
        ..WorkerOpts::default()
    };

    // Worker A takes 20 jobs whose first execution would take a minute.
    let slow = (0..IN_FLIGHT).map(|n| work(n, 60_000, 20, true));
    tasks::work::enqueue_many(&client, slow).await.unwrap();
    let mut a = Worker::spawn(&db, opts());
    wait_until(
        Duration::from_secs(30),
        "worker A to run all 20 slow jobs",
        || async { count(&db, "SELECT COUNT(*) FROM executions").await == IN_FLIGHT },
    )
    .await;
    // A is full: these wait in ready until A is gone.
    let quick = (IN_FLIGHT..IN_FLIGHT + WAITING).map(|n| work(n, 20, 20, true));
    tasks::work::enqueue_many(&client, quick).await.unwrap();
    // Let A heartbeat a few times: its leases are alive, not left over from the claim.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stats = client.stats().await.unwrap();
    assert_eq!(
        stats.total.running, IN_FLIGHT,
        "A holds its 20 jobs: {stats:?}"
    );
    assert_eq!(stats.total.ready, WAITING, "the other 20 wait: {stats:?}");

    let killed_at = Utc::now();
    let status = a.sigkill().await;
    assert!(!status.success(), "A was killed: {status:?}");
    let mut b = Worker::spawn(&db, opts());
    wait_until(
        Duration::from_secs(60),
        "every job to finish after A died",
        || async { unfinished(&client).await == 0 },
    )
    .await;
    let rows = executions(&db).await;
    let stats = client.stats().await.unwrap();
    assert_eq!(
        stats.total,
        queue_runtime::QueueCounts::default(),
        "nothing ready, running or dead"
    );

    let jobs = by_job(&rows);
    assert_eq!(
        jobs.len() as u64,
        IN_FLIGHT + WAITING,
        "every job ran: {jobs:?}"
    );
    let mut first_rescued: Option<DateTime<Utc>> = None;
    for (n, runs) in &jobs {
        if *n < IN_FLIGHT {
            assert_eq!(
                runs.len(),
                2,
                "job {n} ran on A, then once again on B: {runs:?}"
            );
            let (on_a, on_b) = (&runs[0], &runs[1]);
            assert_eq!(
                (on_a.pid, on_a.attempt, on_a.ended_at),
                (a.pid, 1, None),
                "job {n}: {runs:?}"
            );
            assert_eq!(
                (on_b.pid, on_b.attempt),
                (b.pid, 2),
                "job {n} ran again as attempt 2: {runs:?}"
            );
            assert!(on_b.ended_at.is_some(), "job {n} finished on B: {runs:?}");
            assert_eq!(on_a.job_id, on_b.job_id);
            first_rescued = Some(first_rescued.map_or(on_b.started_at, |t| t.min(on_b.started_at)));
        } else {
            assert_eq!(runs.len(), 1, "waiting job {n} ran once: {runs:?}");
            assert_eq!(
                (runs[0].pid, runs[0].attempt),
                (b.pid, 1),
                "job {n}: {runs:?}"
            );
            assert!(runs[0].ended_at.is_some());
        }
    }
    let rescue = (first_rescued.unwrap() - killed_at)
        .to_std()
        .unwrap_or_default();
    eprintln!(
        "SIGKILL: {IN_FLIGHT} jobs rescued, first rerun {rescue:?} after the kill (lease {lease:?})"
    );
    assert!(
        b.log_count("took back jobs whose lease expired") >= 1,
        "B logged the rescue"
    );
    assert!(b.terminate().await.success(), "B shuts down cleanly");
    db.drop_db().await;
}

/// A worker that lost its lease while it was stopped (SIGSTOP, as a long
/// GC pause or a network partition would) finishes its attempt after
/// another worker took the job: its outcome (here a permanent failure,
/// which would bury the job) is not recorded over the new owner's attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_worker_does_not_record_over_the_new_owner() {
    let _serial = SERIAL.lock().await;
    let (db, client) = setup().await;
    let opts = || WorkerOpts {
        concurrency: 2,
        lease: Some(Duration::from_secs(2)),
        heartbeat: Some(Duration::from_millis(300)),
        ..WorkerOpts::default()
    };
    let mut a = Worker::spawn(&db, opts());
    a.wait_ready().await;
    // First execution: 3 s, then a permanent failure. Later ones: 6 s, success.
    let id = tasks::work::enqueue(
        &client,
        Work {
            n: 1,
            sleep_ms: 3_000,
            later_sleep_ms: 6_000,
            mark_start: true,
            fail_first: true,
        },
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(30), "A to start the job", || async {
        count(&db, "SELECT COUNT(*) FROM executions").await == 1
    })
    .await;
    a.signal("STOP").await;
    let mut b = Worker::spawn(&db, opts());
    wait_until(
        Duration::from_secs(30),
        "B to take the job over as attempt 2",
        || async { count(&db, "SELECT COUNT(*) FROM executions WHERE attempt = 2").await == 1 },
    )
    .await;
    a.signal("CONT").await;
    // A's handler wakes past its sleep, records its end, fails permanently;
    // the runtime's bury is fenced off by B's attempt.
    wait_until(
        Duration::from_secs(30),
        "A to finish its stale attempt",
        || async {
            count(
                &db,
                "SELECT COUNT(*) FROM executions WHERE attempt = 1 AND ended_at IS NOT NULL",
            )
            .await
                == 1
        },
    )
    .await;
    wait_until(
        Duration::from_secs(20),
        "A to try to record its outcome",
        || async { a.log_count("outcome not recorded") >= 1 },
    )
    .await;
    let job = client.job(id).await.unwrap();
    assert!(
        job.as_ref()
            .is_some_and(|j| j.state == JobState::Running && j.attempts == 2),
        "the job is still B's running attempt 2, not buried by A: {job:?}"
    );
    wait_until(Duration::from_secs(30), "B to finish the job", || async {
        unfinished(&client).await == 0
    })
    .await;
    let rows = executions(&db).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].pid, rows[0].attempt), (a.pid, 1));
    assert_eq!((rows[1].pid, rows[1].attempt), (b.pid, 2));
    assert!(rows.iter().all(|r| r.ended_at.is_some()), "{rows:?}");
    // This is the "may run twice at once" case of docs/delivery.md: the
    // lease expired while A's handler still ran.
    assert!(
        rows[1].started_at < rows[0].ended_at.unwrap(),
        "the two attempts overlapped: {rows:?}"
    );
    assert!(client.dead_jobs(10).await.unwrap().is_empty());
    assert!(a.terminate().await.success());
    assert!(b.terminate().await.success());
    db.drop_db().await;
}

/// A job that kills its process every time ends dead after its attempts
/// (retries = 1: two attempts), each death followed by a fresh worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_keeps_killing_its_process_ends_dead() {
    let _serial = SERIAL.lock().await;
    let (db, client) = setup().await;
    let opts = || WorkerOpts {
        queue: "faults_abort",
        concurrency: 2,
        lease: Some(Duration::from_secs(1)),
        heartbeat: Some(Duration::from_millis(200)),
        ..WorkerOpts::default()
    };
    let id = tasks::kill_process::enqueue(&client, work(7, 0, 0, true))
        .await
        .unwrap();
    let mut pids = Vec::new();
    for attempt in 1..=2 {
        let mut w = Worker::spawn(&db, opts());
        let status = w.wait_exit(Duration::from_secs(60)).await;
        assert!(
            !status.success(),
            "attempt {attempt} killed worker {}: {status:?}",
            w.pid
        );
        pids.push(w.pid);
        let job = client.job(id).await.unwrap().expect("the job is kept");
        assert_eq!(
            (job.state, job.attempts),
            (JobState::Running, attempt),
            "{job:?}"
        );
    }
    // A third worker finds the last lease expired and no attempt left.
    let mut w = Worker::spawn(&db, opts());
    wait_until(Duration::from_secs(30), "the job to end dead", || async {
        client.stats().await.unwrap().total.dead == 1
    })
    .await;
    let dead = client.dead_jobs(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id, dead[0].attempts), (id, 2), "{dead:?}");
    assert!(
        dead[0].last_error.contains("lease expired")
            && dead[0].last_error.contains("no attempts left"),
        "{}",
        dead[0].last_error
    );
    let rows = executions(&db).await;
    let seen: Vec<(u32, u32)> = rows.iter().map(|r| (r.attempt, r.pid)).collect();
    assert_eq!(
        seen,
        vec![(1, pids[0]), (2, pids[1])],
        "one start per attempt, each in its own process"
    );
    assert!(
        w.terminate().await.success(),
        "the third worker was not killed"
    );
    db.drop_db().await;
}

/// Four worker processes × concurrency 10 over 20,000 jobs that all
/// succeed: each job runs exactly once, as attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_run_twenty_thousand_jobs_exactly_once() {
    let _serial = SERIAL.lock().await;
    let (db, client) = setup().await;
    const JOBS: u64 = 20_000;
    const CHUNK: u64 = 2_000;
    let mut workers: Vec<Worker> = (0..4)
        .map(|_| Worker::spawn(&db, WorkerOpts::default()))
        .collect();
    for w in &workers {
        w.wait_ready().await;
    }
    let started = Instant::now();
    // Enqueue while the workers claim, in chunks of 2,000 (one transaction each).
    for first in (0..JOBS).step_by(CHUNK as usize) {
        let ids = tasks::work::enqueue_many(
            &client,
            (first..first + CHUNK).map(|n| work(n, 0, 0, false)),
        )
        .await
        .unwrap();
        assert_eq!(ids.len() as u64, CHUNK);
    }
    let enqueued = started.elapsed();
    wait_until(
        Duration::from_secs(600),
        "all 20,000 jobs to finish",
        || async { unfinished(&client).await == 0 },
    )
    .await;
    let took = started.elapsed();
    let rows = executions(&db).await;
    assert_eq!(rows.len() as u64, JOBS, "one execution per job");
    let jobs = by_job(&rows);
    assert_eq!(jobs.len() as u64, JOBS, "every job ran");
    assert_eq!(jobs.keys().next(), Some(&0));
    assert_eq!(jobs.keys().last(), Some(&(JOBS - 1)));
    assert!(
        rows.iter().all(|r| r.attempt == 1 && r.ended_at.is_some()),
        "all at attempt 1"
    );
    let distinct_ids = rows
        .iter()
        .map(|r| r.job_id)
        .collect::<std::collections::HashSet<_>>();
    assert_eq!(distinct_ids.len() as u64, JOBS);
    let mut per_pid: HashMap<u32, usize> = HashMap::new();
    for r in &rows {
        *per_pid.entry(r.pid).or_default() += 1;
    }
    assert_eq!(per_pid.len(), 4, "all four workers took part: {per_pid:?}");
    for w in &workers {
        assert!(per_pid.contains_key(&w.pid));
        assert_eq!(
            w.log_count("took back jobs whose lease expired"),
            0,
            "no lease expired:\n{}",
            w.log()
        );
        assert_eq!(
            w.log_count("lost their lease"),
            0,
            "no lease was lost:\n{}",
            w.log()
        );
        assert_eq!(
            w.log_count("not recorded"),
            0,
            "every outcome was recorded:\n{}",
            w.log()
        );
    }
    eprintln!(
        "4 workers: {JOBS} jobs in {took:?} (enqueued in {enqueued:?}), {:.0} jobs/s; per worker {per_pid:?}",
        JOBS as f64 / took.as_secs_f64()
    );
    for w in &mut workers {
        assert!(w.terminate().await.success());
    }
    db.drop_db().await;
}

/// `shutdown(drain)` with jobs that outlast the drain: it returns promptly,
/// stops their handlers, and hands them back to ready with the interrupted
/// attempt not counted; another runtime starts them at once, long before
/// their 60 s lease would have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_back_unfinished_jobs() {
    let _serial = SERIAL.lock().await;
    let (db, client) = setup().await;
    const JOBS: u64 = 5;
    let lease = Duration::from_secs(60);
    let ids = tasks::work::enqueue_many(&client, (0..JOBS).map(|n| work(n, 30_000, 20, true)))
        .await
        .unwrap();
    let a = Runtime::builder(client.clone())
        .queues(["faults"])
        .concurrency(10)
        .lease(lease)
        .cron(false)
        .start()
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "runtime A to start every job",
        || async { count(&db, "SELECT COUNT(*) FROM executions").await == JOBS },
    )
    .await;
    assert_eq!(
        tasks::ALIVE.load(std::sync::atomic::Ordering::SeqCst),
        JOBS as usize
    );

    let shutdown_at = Instant::now();
    let result = a.shutdown(Duration::from_millis(500)).await;
    let took = shutdown_at.elapsed();
    result.expect("shutdown hands the jobs back and returns Ok");
    assert!(
        took < Duration::from_secs(10),
        "shutdown returned promptly, took {took:?}"
    );
    assert_eq!(
        tasks::ALIVE.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the unfinished handlers were stopped, not left running"
    );
    for id in &ids {
        let job = client.job(*id).await.unwrap().expect("job kept");
        assert_eq!(job.state, JobState::Ready, "{job:?}");
        assert_eq!(
            job.attempts, 0,
            "the interrupted attempt is not counted: {job:?}"
        );
        assert!(
            job.last_error
                .as_deref()
                .unwrap_or("")
                .contains("handed back"),
            "{job:?}"
        );
    }

    let b = Runtime::builder(client.clone())
        .queues(["faults"])
        .concurrency(10)
        .lease(lease)
        .cron(false)
        .start()
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "runtime B to finish the handed-back jobs",
        || async { unfinished(&client).await == 0 },
    )
    .await;
    let restarted = shutdown_at.elapsed();
    assert!(
        restarted < lease / 2,
        "B ran them {restarted:?} after the shutdown, not after the lease"
    );
    b.shutdown(Duration::from_secs(5)).await.unwrap();

    let rows = executions(&db).await;
    for (n, runs) in by_job(&rows) {
        assert_eq!(
            runs.len(),
            2,
            "job {n}: interrupted on A, run on B: {runs:?}"
        );
        assert_eq!(
            (runs[0].attempt, runs[0].ended_at),
            (1, None),
            "job {n}: {runs:?}"
        );
        assert_eq!(
            runs[1].attempt, 1,
            "job {n}: the hand-back did not spend an attempt: {runs:?}"
        );
        assert!(runs[1].ended_at.is_some());
    }
    eprintln!(
        "graceful shutdown: returned in {took:?}; handed-back jobs all done {restarted:?} after it"
    );
    db.drop_db().await;
}

/// Stop the MariaDB server in the middle of 3,000 jobs, keep it down, start
/// it again: the worker keeps running, logs the outage once, resumes; every
/// job completes, none is lost, none runs twice at the same time; enqueue
/// during the outage returns an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_during_thousands_of_jobs() {
    let _serial = SERIAL.lock().await;
    let private = tokio::task::spawn_blocking(queue_tests::is_private_server)
        .await
        .unwrap();
    assert!(
        private,
        "server_restart_during_thousands_of_jobs stops and starts the database server, which it \
         can do only with the private server of scripts/db.sh; DATABASE_URL names another server \
         ({}). Unset DATABASE_URL (or point it at scripts/db.sh's URL) to run it.",
        queue_tests::redact_url(&queue_tests::admin_url())
    );
    let (db, client) = setup().await;
    const JOBS: u64 = 3_000;
    // The lease is longer than the outage will be (the server stays down
    // until an enqueue has failed, which a refused connection makes
    // happen at once): the point here is that the runtime rides out the outage,
    // not a lease expiry (the SIGKILL test is about that). The outage's
    // length is measured and checked below.
    let lease = Duration::from_secs(60);
    let heartbeat = Duration::from_secs(5);
    tasks::work::enqueue_many(&client, (0..JOBS).map(|n| work(n, 10, 10, false)))
        .await
        .unwrap();
    let mut w = Worker::spawn(
        &db,
        WorkerOpts {
            concurrency: 10,
            lease: Some(lease),
            heartbeat: Some(heartbeat),
            ..WorkerOpts::default()
        },
    );
    wait_until(
        Duration::from_secs(60),
        "the worker to be well into the jobs",
        || async { count(&db, "SELECT COUNT(*) FROM executions").await >= 300 },
    )
    .await;
    let before = count(&db, "SELECT COUNT(*) FROM executions").await;
    // Enough jobs are left for the run to span the outage (the threshold
    // leaves slack for a loaded machine, where this poll lags the worker).
    assert!(
        before <= JOBS - 500,
        "the run is still young when the server stops ({before} done)"
    );

    let down_at = Instant::now();
    let restart_on_panic = RestartOnDrop;
    queue_tests::stop_server().await;
    let stopped_in = down_at.elapsed();
    // Enqueue fails while the server is down, with an error the caller gets.
    let enqueue_started = Instant::now();
    let attempt = tokio::time::timeout(
        Duration::from_secs(60),
        tasks::work::enqueue(&client, work(JOBS, 10, 10, false)),
    )
    .await
    .expect("enqueue returns (an error) during the outage instead of hanging");
    let enqueue_failed_in = enqueue_started.elapsed();
    let err = attempt.expect_err("enqueue fails while the server is down");
    // Keep it down a few seconds in all.
    let down_for = Duration::from_secs(3);
    if down_at.elapsed() < down_for {
        tokio::time::sleep(down_for - down_at.elapsed()).await;
    }
    queue_tests::start_server().await;
    std::mem::forget(restart_on_panic);
    let outage = down_at.elapsed();
    assert!(
        outage + heartbeat < lease,
        "the outage ({outage:?}) stayed within the lease ({lease:?})"
    );
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "the worker kept running through the outage:\n{}",
        w.log()
    );
    // The caller can handle the error: enqueue again once the server is back.
    tasks::work::enqueue(&client, work(JOBS, 10, 10, false))
        .await
        .expect("enqueue after the outage");

    wait_until(
        Duration::from_secs(180),
        "every job to finish after the restart",
        || async { matches!(client.stats().await, Ok(s) if s.total.total() == 0) },
    )
    .await;
    let rows = executions(&db).await;
    let jobs = by_job(&rows);
    assert_eq!(jobs.len() as u64, JOBS + 1, "every job ran, none is lost");
    assert!(rows.iter().all(|r| r.ended_at.is_some()));
    let mut twice = 0;
    for (n, runs) in &jobs {
        if runs.len() > 1 {
            twice += 1;
            // Ran again because its outcome could not be recorded: never at
            // the same time as the earlier execution, and as a later attempt.
            for pair in runs.windows(2) {
                assert!(
                    pair[1].started_at >= pair[0].ended_at.unwrap(),
                    "job {n} ran twice at the same time: {runs:?}"
                );
                assert!(pair[1].attempt > pair[0].attempt, "job {n}: {runs:?}");
            }
        }
    }
    assert!(client.dead_jobs(10).await.unwrap().is_empty());
    let status = w.terminate().await;
    let log = w.log();
    let unavailable = w.log_count("database unavailable");
    let reachable = w.log_count("database reachable again");
    eprintln!(
        "server restart: {JOBS} jobs, {before} done before the stop; server stopped in {stopped_in:?}, \
         down {outage:?} in all; enqueue failed after {enqueue_failed_in:?} with: {err}; \
         {twice} jobs ran twice (not concurrently); worker logged 'database unavailable' {unavailable}x, \
         'reachable again' {reachable}x"
    );
    assert_eq!(unavailable, 1, "the outage is logged once:\n{log}");
    assert_eq!(
        w.log_count("took back jobs whose lease expired"),
        0,
        "no lease expired:\n{log}"
    );
    assert_eq!(
        w.log_count("lost their lease"),
        0,
        "no lease was lost:\n{log}"
    );
    assert_eq!(reachable, 1, "its end is logged once:\n{log}");
    assert!(
        status.success(),
        "the worker shut down cleanly after the outage: {status:?}\n{log}"
    );
    db.drop_db().await;
}

/// Stop the server for longer than the lease while jobs finish: their
/// outcomes cannot be written, their leases expire, and when the server is
/// back the runtime takes them back and runs them again (case 2 of
/// docs/delivery.md) — but never two executions of one job at once, and
/// every job completes. In process, with the executions kept in memory, so
/// that the handlers do not depend on the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_longer_than_the_lease_never_runs_a_job_twice_at_once() {
    let _serial = SERIAL.lock().await;
    let private = tokio::task::spawn_blocking(queue_tests::is_private_server)
        .await
        .unwrap();
    assert!(
        private,
        "this test stops and starts the database server, which it can do only with the private \
         server of scripts/db.sh; DATABASE_URL names another server ({})",
        queue_tests::redact_url(&queue_tests::admin_url())
    );
    let (db, client) = setup().await;
    const JOBS: u64 = 10;
    let lease = Duration::from_secs(3);
    // First executions end during the outage (of five leases); later ones
    // outlast the lease, so they live on heartbeats alone.
    tasks::remember::enqueue_many(&client, (0..JOBS).map(|n| work(n, 1_500, 6_000, false)))
        .await
        .unwrap();
    let runtime = Runtime::builder(client.clone())
        .queues(["faults_mem"])
        .concurrency(JOBS as usize)
        .lease(lease)
        .heartbeat(Duration::from_millis(500))
        .cron(false)
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "every job to start", || async {
        tasks::REMEMBERED.lock().unwrap().len() as u64 == JOBS
    })
    .await;

    let down_at = Instant::now();
    let restart_on_panic = RestartOnDrop;
    queue_tests::stop_server().await;
    // Down for several leases (and longer than the pool's acquire
    // timeout, 10 s, which only a server that accepts connections without
    // answering would make the runtime's statements wait).
    let down_for = Duration::from_secs(15);
    if down_at.elapsed() < down_for {
        tokio::time::sleep(down_for - down_at.elapsed()).await;
    }
    queue_tests::start_server().await;
    std::mem::forget(restart_on_panic);
    let outage = down_at.elapsed();

    wait_until(
        Duration::from_secs(120),
        "every job to finish after the restart",
        || async { matches!(client.stats().await, Ok(s) if s.total.total() == 0) },
    )
    .await;
    runtime.shutdown(Duration::from_secs(10)).await.unwrap();
    let all = tasks::REMEMBERED.lock().unwrap().clone();
    let mut again = 0;
    for n in 0..JOBS {
        let mut runs: Vec<_> = all.iter().filter(|r| r.n == n).cloned().collect();
        runs.sort_by_key(|r| r.started);
        assert!(
            runs.iter().any(|r| r.ended.is_some()),
            "job {n} completed: {runs:?}"
        );
        for pair in runs.windows(2) {
            let first_end = pair[0].ended.expect("an execution that was followed ended");
            assert!(
                pair[1].started >= first_end,
                "job {n} ran twice at the same time (attempts {} and {}): {runs:?}",
                pair[0].attempt,
                pair[1].attempt
            );
            assert!(pair[1].attempt > pair[0].attempt, "job {n}: {runs:?}");
        }
        if runs.len() > 1 {
            again += 1;
        }
    }
    eprintln!(
        "outage of {outage:?} with a {lease:?} lease: {again} of {JOBS} jobs ran again after it, \
         {} executions in all, none at the same time",
        all.len()
    );
    db.drop_db().await;
}

// ---- Flow control across processes -------------------------------------

async fn setup_limits() -> (TestDb, Client) {
    let (db, client) = setup().await;
    for ddl in tasks::LIMITS_DDL {
        sqlx::query(ddl)
            .execute(&db.pool)
            .await
            .expect("create tables");
    }
    (db, client)
}

fn limits_worker(db: &TestDb) -> Worker {
    Worker::spawn(
        db,
        WorkerOpts {
            queue: "limits",
            ..WorkerOpts::default()
        },
    )
}

async fn gauges(db: &TestDb) -> BTreeMap<String, (i32, i32)> {
    sqlx::query("SELECT k, now, peak FROM gauges")
        .fetch_all(&db.pool)
        .await
        .expect("read gauges")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

/// Every slot taken is given back: no semaphore counts a job, no job waits.
async fn assert_no_slot_held(db: &TestDb) {
    let running = count(
        db,
        "SELECT CAST(COALESCE(SUM(running), 0) AS SIGNED) FROM queue_semaphores",
    )
    .await;
    assert_eq!(running, 0, "every slot was released");
    let blocked = count(db, "SELECT COUNT(*) FROM queue_blocked").await;
    assert_eq!(blocked, 0, "no job is left blocked");
}

/// Four runtimes in four processes: a task limited to 3 never runs more
/// than 3 at once, and a task limited to 1 per key never runs two of a key
/// at once, while 40 slots are free across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_keep_concurrency_limits_per_task_and_per_key() {
    let _serial = SERIAL.lock().await;
    let (db, client) = setup_limits().await;
    let mut workers: Vec<Worker> = (0..4).map(|_| limits_worker(&db)).collect();
    for w in &workers {
        w.wait_ready().await;
    }
    tasks::capped::enqueue_many(&client, (0..60).map(|_| 60u64))
        .await
        .unwrap();
    tasks::keyed::enqueue_many(&client, (0..80u64).map(|i| ((i % 10) as u32, 30u64)))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(120),
        "every limited job to finish",
        || async { unfinished(&client).await == 0 },
    )
    .await;
    let g = gauges(&db).await;
    assert_eq!(
        g["capped"],
        (0, 3),
        "at most 3 at once, and the limit was reached: {g:?}"
    );
    for k in 0..10 {
        assert_eq!(
            g[&format!("key{k}")],
            (0, 1),
            "one at a time per key: {g:?}"
        );
    }
    assert_no_slot_held(&db).await;
    for w in &mut workers {
        assert!(w.terminate().await.success());
    }
    db.drop_db().await;
}

/// Three runtimes in three processes pass the slots of a task limited to
/// 3 from job to job as fast as the jobs go (no sleep: each job is two
/// writes of its gauge), so each runtime holding two slots or more passes
/// them to spares: the limit holds across the processes (peak 3, never
/// more), the jobs recorded as holding a slot always number what the
/// semaphore counts (sampled during the drain, one statement per sample),
/// and every slot comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_passing_slots_quickly_keep_the_limit_and_the_books() {
    let _serial = SERIAL.lock().await;
    let (db, client) = setup_limits().await;
    let mut workers: Vec<Worker> = (0..3).map(|_| limits_worker(&db)).collect();
    for w in &workers {
        w.wait_ready().await;
    }
    tasks::capped::enqueue_many(&client, (0..1_500).map(|_| 0u64))
        .await
        .unwrap();
    let (mut samples, mut spares_seen) = (0, 0);
    loop {
        let (left, spares) = queue_tests::check_slot_books(&db.pool, 3).await;
        samples += 1;
        if spares > 0 {
            spares_seen += 1;
        }
        if left == 0 {
            break;
        }
        assert!(samples < 20_000, "the drain did not end ({left} jobs left)");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("{samples} samples, spares seen in {spares_seen}");
    assert!(samples > 3, "sampled while it ran ({samples} samples)");
    assert!(spares_seen > 0, "spares were held ({samples} samples)");
    let g = gauges(&db).await;
    assert_eq!(
        g["capped"],
        (0, 3),
        "at most 3 at once, and the limit reached: {g:?}"
    );
    assert_no_slot_held(&db).await;
    for w in &mut workers {
        assert!(w.terminate().await.success());
    }
    db.drop_db().await;
}

/// Four runtimes: a task limited to 20 starts per second never starts
/// more than 20 in any one-second window (counted at the claim's time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_keep_a_rate_limit() {
    let _serial = SERIAL.lock().await;
    let (db, client) = setup_limits().await;
    let mut workers: Vec<Worker> = (0..4).map(|_| limits_worker(&db)).collect();
    for w in &workers {
        w.wait_ready().await;
    }
    let started = Instant::now();
    tasks::rated::enqueue_many(&client, 0..100u64)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "every rated job to finish",
        || async { unfinished(&client).await == 0 },
    )
    .await;
    let took = started.elapsed();
    let rows: Vec<(DateTime<Utc>,)> =
        sqlx::query_as("SELECT claimed_at FROM starts WHERE task = 'rated'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 100, "every job started once");
    let mut per_window: BTreeMap<i64, usize> = BTreeMap::new();
    for (t,) in &rows {
        *per_window
            .entry(t.timestamp_millis().div_euclid(1000))
            .or_default() += 1;
    }
    let most = per_window.values().copied().max().unwrap();
    assert!(most <= 20, "at most 20 starts per window: {per_window:?}");
    assert!(
        per_window.len() >= 5,
        "100 starts at 20 per second take at least 5 windows: {per_window:?}"
    );
    // Five fixed windows: the first may be entered late, so just over 3 s.
    assert!(
        took >= Duration::from_secs(3),
        "100 starts at 20/s took {took:?}"
    );
    eprintln!("rate 20/1s: 100 jobs in {took:?}, starts per window {per_window:?}");
    for w in &mut workers {
        assert!(w.terminate().await.success());
    }
    db.drop_db().await;
}

/// Jobs of a task without a limit, enqueued behind 10,000 jobs of a task
/// limited to 3, start long before that backlog drains: limited jobs leave
/// the claim index as blocked, so they hold up no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_jobs_are_not_held_behind_a_limited_backlog() {
    let _serial = SERIAL.lock().await;
    let (db, client) = setup_limits().await;
    let mut workers: Vec<Worker> = (0..4).map(|_| limits_worker(&db)).collect();
    for w in &workers {
        w.wait_ready().await;
    }
    // 10,000 × 50 ms, 3 at a time: about 170 s to drain.
    tasks::capped::enqueue_many(&client, (0..10_000).map(|_| 50u64))
        .await
        .unwrap();
    let started = Instant::now();
    tasks::free::enqueue_many(&client, 0..50u64).await.unwrap();
    wait_until(
        Duration::from_secs(60),
        "the 50 unlimited jobs to run",
        || async { count(&db, "SELECT COUNT(*) FROM starts WHERE task = 'free'").await == 50 },
    )
    .await;
    let took = started.elapsed();
    let stats = client.stats().await.unwrap();
    let left = stats.total.total();
    assert!(
        stats.total.blocked > 0,
        "the backlog waits blocked: {:?}",
        stats.total
    );
    let capped = stats
        .limits
        .iter()
        .find(|l| l.task == "faults.capped")
        .expect("stats show the capped task's limit");
    assert_eq!(
        (capped.kind, capped.limit, capped.key.as_deref()),
        (queue_runtime::LimitKind::Concurrency, 3, None)
    );
    assert!(capped.active <= 3 && capped.waiting > 0, "{capped:?}");
    assert!(
        left > 8_000,
        "the limited backlog was still there ({left} jobs) when the unlimited jobs had all run"
    );
    assert!(
        took < Duration::from_secs(30),
        "the unlimited jobs ran within {took:?}"
    );
    eprintln!("50 unlimited jobs behind 10,000 limited ones ran in {took:?}; {left} jobs left");
    let g = gauges(&db).await;
    assert!(g["capped"].1 <= 3, "the limit held meanwhile: {g:?}");
    for w in &mut workers {
        assert!(w.terminate().await.success());
    }
    db.drop_db().await;
}

/// A runtime SIGKILLed while it holds every slot of a limit: the slots
/// come back with its leases, and another runtime runs every job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runtime_gives_its_slots_back_with_its_leases() {
    let _serial = SERIAL.lock().await;
    let (db, client) = setup_limits().await;
    let opts = || WorkerOpts {
        queue: "limits",
        lease: Some(Duration::from_millis(1_500)),
        heartbeat: Some(Duration::from_millis(300)),
        ..WorkerOpts::default()
    };
    let mut first = Worker::spawn(&db, opts());
    first.wait_ready().await;
    tasks::capped::enqueue_many(&client, (0..9).map(|_| 3_000u64))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the first worker to hold all 3 slots",
        || async { gauges(&db).await.get("capped").is_some_and(|g| g.0 == 3) },
    )
    .await;
    let held = count(
        &db,
        "SELECT CAST(SUM(running) AS SIGNED) FROM queue_semaphores",
    )
    .await;
    assert_eq!(held, 3);
    assert!(!first.sigkill().await.success());
    let killed_at = Instant::now();
    let mut second = Worker::spawn(&db, opts());
    second.wait_ready().await;
    // The 3 killed jobs run again after their lease, and the 6 others.
    wait_until(Duration::from_secs(60), "every job to finish", || async {
        unfinished(&client).await == 0
    })
    .await;
    eprintln!("all 9 done {:?} after the kill", killed_at.elapsed());
    assert_no_slot_held(&db).await;
    assert!(
        second.log_count("took back jobs whose lease expired") >= 1,
        "the second worker rescued the killed one's jobs:\n{}",
        second.log()
    );
    assert!(second.terminate().await.success());
    db.drop_db().await;
}

/// Four runtimes in four processes: a pause reaches every one of them
/// within one poll interval (500 ms) and survives their restart; the
/// resume starts the queue's jobs again on all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_reach_four_processes_and_survive_a_restart() {
    let _serial = SERIAL.lock().await;
    let (db, client) = setup_limits().await;
    let mut workers: Vec<Worker> = (0..4).map(|_| limits_worker(&db)).collect();
    for w in &workers {
        w.wait_ready().await;
    }
    // Running first: the queue's jobs start.
    tasks::free::enqueue_many(&client, 0..20u64).await.unwrap();
    wait_until(Duration::from_secs(30), "the first jobs to run", || async {
        count(&db, "SELECT COUNT(*) FROM starts").await == 20
    })
    .await;
    client.pause_queue("limits").await.unwrap();
    // Other processes see it within one poll interval (500 ms): wait two.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    tasks::free::enqueue_many(&client, 20..60u64).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM starts").await,
        20,
        "no process started a job of the paused queue"
    );
    // A restarted process finds the queue still paused.
    assert!(workers[0].terminate().await.success());
    workers[0] = limits_worker(&db);
    workers[0].wait_ready().await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM starts").await, 20);
    assert_eq!(client.stats().await.unwrap().paused_queues, ["limits"]);
    let resumed = Instant::now();
    client.resume_queue("limits").await.unwrap();
    wait_until(
        Duration::from_secs(30),
        "every job to run after the resume",
        || async { count(&db, "SELECT COUNT(*) FROM starts").await == 60 },
    )
    .await;
    eprintln!("40 jobs ran {:?} after the resume", resumed.elapsed());
    let pids: std::collections::HashSet<u32> = workers.iter().map(|w| w.pid).collect();
    assert_eq!(pids.len(), 4);
    for w in &mut workers {
        assert!(w.terminate().await.success());
    }
    db.drop_db().await;
}
