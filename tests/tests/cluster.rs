//! The runtime on a real 3-node MariaDB Galera cluster on loopback
//! (`scripts/cluster.sh`): three worker processes, one per node, drain
//! jobs whose handler writes a row under a UNIQUE key through `ctx.db()`,
//! while node 1 is SIGKILLed and restarted (it rejoins by IST).
//!
//! The worker of node 1 reaches it through a tiny TCP forwarder
//! (`queue_tests::forward`), the proxy route: when node 1 dies its
//! connections close, and the forwarder sends the pool's new connections
//! to node 2 (and does not fail back). Workers 2 and 3 connect to their
//! nodes directly: three runtimes writing through three nodes at once.
//!
//! A second test runs three runtimes in this process, one per node: a
//! recurring task fires once per tick cluster-wide, and a unique key
//! enqueued through the three nodes at once gives one job.
//!
//! The tests start the cluster themselves (`scripts/cluster.sh start`, which
//! installs MariaDB, galera-4 and rsync with apt-get when it can) and fails,
//! never skips, when it cannot. Run it with `scripts/test-cluster`; it is
//! not part of `scripts/test` (it takes minutes and three more servers).
//! `CLUSTER_JOBS` sets the number of jobs (default 20,000).

#[path = "faults/tasks.rs"]
#[allow(dead_code, unreachable_pub)]
mod tasks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use queue_runtime::{Client, Runtime, TaskContext, TaskError, task};
use queue_tests::forward::Forwarder;
use queue_tests::wait_until;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Row};
use tokio::process::{Child, Command};

/// Runs `scripts/cluster.sh ARGS`; its stdout, or a panic that says why.
fn cluster_sh(args: &[&str]) -> String {
    let script = queue_tests::repo_root().join("scripts").join("cluster.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(args)
        .current_dir(queue_tests::repo_root())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "`scripts/cluster.sh {}` failed ({}): the cluster tests need the 3-node Galera cluster \
         of scripts/cluster.sh (mariadb-server, galera-4, rsync; see its output above)",
        args.join(" "),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The node URLs with database `db` in place of `queue`.
fn with_db(url: &str, db: &str) -> String {
    let (head, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{head}/{db}")
}

fn addr(url: &str) -> SocketAddr {
    let rest = url.split_once('@').expect("user@host").1;
    let hostport = rest.split('/').next().expect("host:port");
    hostport.parse().expect("127.0.0.1:port")
}

async fn pool(url: &str) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// Galera's counters of lost races on a node: local certification
/// failures and brute-force aborts.
async fn conflicts(url: &str) -> u64 {
    let Ok(p) = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
    else {
        return 0;
    };
    let rows = sqlx::query(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_cert_failures', 'wsrep_local_bf_aborts')",
    )
    .fetch_all(&p)
    .await
    .unwrap_or_default();
    p.close().await;
    rows.iter()
        .map(|r| r.get::<String, _>(1).parse::<u64>().unwrap_or(0))
        .sum()
}

/// Starts the cluster (if needed) and makes a fresh database on it (made on
/// node 1: DDL replicates to every node); returns the node URLs with the
/// database's name, and the name.
async fn fresh_database() -> (Vec<String>, Vec<String>, String) {
    let nodes: Vec<String> = cluster_sh(&["start"]).lines().map(str::to_owned).collect();
    assert_eq!(
        nodes.len(),
        3,
        "scripts/cluster.sh start prints 3 URLs: {nodes:?}"
    );
    eprintln!("{}", cluster_sh(&["status"]));
    let name = format!("qc_{:08x}", fastrand::u32(..));
    let admin = pool(&nodes[0]).await;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    )))
    .execute(&admin)
    .await
    .expect("create the test database");
    admin.close().await;
    let urls: Vec<String> = nodes.iter().map(|u| with_db(u, &name)).collect();
    eprintln!("cluster test database: {name}");
    (nodes, urls, name)
}

async fn drop_database(nodes: &[String], name: &str) {
    let admin = pool(&nodes[1]).await;
    let _ = sqlx::query(AssertSqlSafe(format!("DROP DATABASE `{name}`")))
        .execute(&admin)
        .await;
    admin.close().await;
}

/// A `queue-test-worker` process with its log.
struct Worker {
    child: Child,
    pid: u32,
    log: Arc<Mutex<String>>,
}

impl Worker {
    fn spawn(url: &str, name: &str) -> Worker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_queue-test-worker"))
            .env("QUEUE_TEST_DATABASE_URL", url)
            .env(
                "RUST_LOG",
                std::env::var("WORKER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .args([
                "--queue",
                "cluster",
                "--concurrency",
                "10",
                "--drain-ms",
                "10000",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn queue-test-worker");
        let pid = child.id().expect("worker pid");
        let log = queue_tests::capture_output(&mut child, format!("{name} {pid}"));
        Worker { child, pid, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    async fn wait_ready(&self) {
        wait_until(Duration::from_secs(60), "the worker to start", || async {
            self.log().contains("ready ")
        })
        .await;
    }

    async fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => status.expect("wait for the worker"),
            Err(_) => panic!("worker {} did not exit within 60 s", self.pid),
        }
    }
}

/// One execution of a job, from `executions`.
struct Execution {
    n: u64,
    pid: u32,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
}

async fn count(pool: &MySqlPool, sql: &'static str) -> u64 {
    let n: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(-1);
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Restarts node 1 if the test fails while it is down.
struct RestartNode1;

impl Drop for RestartNode1 {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new("bash")
                .arg(queue_tests::repo_root().join("scripts").join("cluster.sh"))
                .arg("start")
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// 3 runtimes on 3 nodes drain the jobs while node 1 is SIGKILLed and
/// restarted: every job's side effect exactly once, none lost, no two
/// executions of one job overlapping in time; the runtime behind node 1
/// goes on through node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn galera_cluster_three_nodes_drain_every_job_once_while_node_1_is_killed_and_restarted() {
    queue_tests::init_tracing();
    let jobs: u64 = std::env::var("CLUSTER_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let (nodes, urls, name) = fresh_database().await;

    // Schema and tables through node 2, which stays up.
    let client = Client::connect(&urls[1]).await.expect("connect to node 2");
    client.migrate().await.expect("migrate");
    let db = pool(&urls[1]).await;
    for ddl in [tasks::EXECUTIONS_DDL]
        .into_iter()
        .chain(tasks::CLUSTER_DDL)
    {
        sqlx::query(ddl)
            .execute(&db)
            .await
            .expect("create test tables");
    }
    let galera = client.stats().await.expect("stats").galera;
    let galera = galera.expect("stats().galera on a Galera node");
    assert_eq!(galera.cluster_size, 3, "{galera:?}");
    assert!(galera.synced(), "{galera:?}");

    let forwarder = Forwarder::start(urls.iter().map(|u| addr(u)).collect())
        .await
        .expect("start the forwarder");
    let mut workers = vec![
        Worker::spawn(&forwarder.url(&urls[0]), "node1"),
        Worker::spawn(&urls[1], "node2"),
        Worker::spawn(&urls[2], "node3"),
    ];
    for w in &workers {
        w.wait_ready().await;
    }
    let before: u64 = {
        let mut sum = 0;
        for u in &urls {
            sum += conflicts(u).await;
        }
        sum
    };

    let started = Instant::now();
    for first in (0..jobs).step_by(2_000) {
        let ids = tasks::effect::enqueue_many(&client, first..(first + 2_000).min(jobs))
            .await
            .expect("enqueue");
        assert_eq!(ids.len() as u64, (first + 2_000).min(jobs) - first);
    }
    eprintln!("enqueued {jobs} jobs in {:?}", started.elapsed());

    wait_until(
        Duration::from_secs(600),
        "a third of the jobs to run",
        || async { count(&db, "SELECT COUNT(*) FROM effects").await >= jobs / 3 },
    )
    .await;
    let _restart = RestartNode1;
    let node1_conflicts = conflicts(&urls[0]).await;
    let killed_at = Utc::now();
    let done_at_kill = count(&db, "SELECT COUNT(*) FROM effects").await;
    cluster_sh(&["kill", "1"]);
    eprintln!(
        "node 1 killed after {:?}, {done_at_kill} jobs done",
        started.elapsed()
    );
    // The runtime behind node 1 goes on through node 2.
    let worker1 = workers[0].pid;
    wait_until(Duration::from_secs(120), "worker 1 to run jobs through node 2", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM executions WHERE pid = ? AND started_at > ? AND ended_at IS NOT NULL",
        )
        .bind(worker1)
        .bind(killed_at)
        .fetch_one(&db)
        .await
        .unwrap_or(0)
            > 0
    })
    .await;
    eprintln!("worker 1 runs jobs again, through {}", forwarder.current());
    cluster_sh(&["restart", "1"]);
    eprintln!("node 1 is back after {:?}", started.elapsed());

    wait_until(Duration::from_secs(900), "every job to finish", || async {
        count(&db, "SELECT COUNT(*) FROM queue_jobs").await == 0
    })
    .await;
    let took = started.elapsed();
    let after: u64 = {
        let mut sum = 0;
        for u in &urls {
            sum += conflicts(u).await;
        }
        // Node 1's counters restarted at 0 with it.
        sum + node1_conflicts
    };
    let galera = client.stats().await.expect("stats").galera.expect("galera");
    eprintln!("{}", cluster_sh(&["status"]));

    for w in &mut workers {
        let status = w.terminate().await;
        assert!(status.success(), "worker {} exited with {status}", w.pid);
    }

    // Every job's side effect, exactly once.
    let effects = count(&db, "SELECT COUNT(*) FROM effects").await;
    assert_eq!(effects, jobs, "one effect row per job");
    let (lo, hi): (u64, u64) = sqlx::query_as("SELECT MIN(n), MAX(n) FROM effects")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!((lo, hi), (0, jobs - 1), "effects of jobs 0..{jobs}");
    let doubles: Vec<(u64, String, String)> =
        sqlx::query_as("SELECT n, exec, first FROM doubles ORDER BY n")
            .fetch_all(&db)
            .await
            .unwrap();
    assert!(
        doubles.is_empty(),
        "{} executions found their job's effect written by another execution: {:?}",
        doubles.len(),
        &doubles[..doubles.len().min(20)]
    );
    // No two executions of one job at once; each ended.
    let rows: Vec<Execution> =
        sqlx::query("SELECT n, pid, started_at, ended_at FROM executions ORDER BY n, started_at")
            .fetch_all(&db)
            .await
            .unwrap()
            .iter()
            .map(|r| Execution {
                n: r.get(0),
                pid: r.get(1),
                started_at: r.get(2),
                ended_at: r.get(3),
            })
            .collect();
    let mut by_n: BTreeMap<u64, Vec<&Execution>> = BTreeMap::new();
    for r in &rows {
        by_n.entry(r.n).or_default().push(r);
    }
    assert_eq!(by_n.len() as u64, jobs, "every job ran");
    let mut overlapping = Vec::new();
    let mut unended = 0;
    let mut again = 0;
    for (n, runs) in &by_n {
        if runs.len() > 1 {
            again += 1;
        }
        for pair in runs.windows(2) {
            match pair[0].ended_at {
                Some(end) if end <= pair[1].started_at => {}
                _ => overlapping.push(*n),
            }
        }
        unended += runs.iter().filter(|r| r.ended_at.is_none()).count();
    }
    assert!(
        overlapping.is_empty(),
        "{} jobs ran twice at once: {:?}",
        overlapping.len(),
        &overlapping[..overlapping.len().min(20)]
    );
    let mut per_pid: BTreeMap<u32, usize> = BTreeMap::new();
    for r in &rows {
        *per_pid.entry(r.pid).or_default() += 1;
    }
    for w in &workers {
        assert_eq!(
            w.log_count("a claim delivered a job this runtime already runs"),
            0,
            "a claim delivered a running job again:\n{}",
            w.log()
        );
        // Runtimes on three nodes claim disjoint lanes of the claim index
        // (docs/scaling.md, "Claim lanes").
        assert!(
            w.log_count("Galera nodes with runtimes changed: claiming lane") >= 1,
            "worker {} claimed in a lane:\n{}",
            w.pid,
            w.log()
        );
    }
    eprintln!(
        "cluster: {jobs} jobs in {took:?} ({:.0} jobs/s) on 3 nodes, node 1 killed at {done_at_kill} done and restarted; \
         executions per worker {per_pid:?}; jobs run more than once (never at once): {again}; \
         executions cut short by the kill: {unended}; certification conflicts \
         (cert failures + BF aborts, all nodes): {} ({:.2} per 1,000 jobs); node 2 now: {galera:?}",
        jobs as f64 / took.as_secs_f64(),
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 * 1000.0 / jobs as f64,
    );
    // A job run again after its lease means an outcome (or a claim) that
    // the runtime believed written was not: on Galera, a transaction
    // brute-force aborted mid-batch (docs/scaling.md). Nothing in this test
    // fails a handler or kills a worker, so every job runs once.
    assert_eq!(
        again, 0,
        "{again} jobs ran more than once (after their lease: an outcome or claim reported \
         written was not)"
    );
    drop(forwarder);
    drop(client);
    db.close().await;
    drop_database(&nodes, &name).await;
}

/// A recurring task of the second test: every second, on a queue that only
/// that test's runtimes serve. Each execution records its job and tick (the
/// job's `run_at`) in `cron_runs`.
#[task(
    cron = "* * * * * *",
    queue = "cluster_cron",
    name = "cluster.cron_every_second"
)]
async fn cron_every_second(ctx: TaskContext) -> Result<(), TaskError> {
    let job = ctx.job_id().0;
    let tick: DateTime<Utc> = sqlx::query_scalar("SELECT run_at FROM queue_jobs WHERE id = ?")
        .bind(job)
        .fetch_one(ctx.db())
        .await?;
    sqlx::query("INSERT INTO cron_runs (job_id, tick, node) VALUES (?, ?, @@wsrep_node_name)")
        .bind(job)
        .bind(tick)
        .execute(ctx.db())
        .await?;
    Ok(())
}

/// The job of the unique-key check: never run (no runtime serves its queue).
#[task(queue = "cluster_unique", name = "cluster.unique")]
async fn unique_job(_ctx: TaskContext, _n: u64) -> Result<(), TaskError> {
    Ok(())
}

/// Three runtimes, one per node, in this process: the every-second
/// recurring task fires each tick once cluster-wide (the conditional UPDATE
/// of `queue_cron` that moves the last tick, in the transaction that
/// enqueues the tick's job, loses a certification race on the other nodes);
/// and a unique key enqueued through the three nodes at once gives one job,
/// whose id all three enqueues return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn galera_cluster_cron_fires_each_tick_once_and_unique_keys_hold_across_nodes() {
    queue_tests::init_tracing();
    let (nodes, urls, name) = fresh_database().await;
    let first = Client::connect(&urls[1]).await.expect("connect to node 2");
    first.migrate().await.expect("migrate");
    let db = pool(&urls[1]).await;
    sqlx::query(
        "CREATE TABLE cron_runs (
            exec   BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            job_id BIGINT UNSIGNED NOT NULL,
            tick   DATETIME(6)     NOT NULL,
            node   VARCHAR(64)     NOT NULL
        ) ENGINE = InnoDB",
    )
    .execute(&db)
    .await
    .expect("create cron_runs");
    let mut clients = Vec::new();
    for u in &urls {
        clients.push(Client::connect(u).await.expect("connect"));
    }

    // Unique keys: each key enqueued through the three nodes at once.
    let keys = 40u64;
    let mut handles = Vec::new();
    for k in 0..keys {
        for (i, c) in clients.iter().enumerate() {
            let c = c.clone();
            handles.push(tokio::spawn(async move {
                let id = unique_job::with(k)
                    .unique_key(format!("key-{k}"))
                    .enqueue(&c)
                    .await
                    .unwrap_or_else(|e| panic!("enqueue key-{k} through node {}: {e}", i + 1));
                (k, id)
            }));
        }
    }
    let mut ids: BTreeMap<u64, Vec<queue_runtime::JobId>> = BTreeMap::new();
    for h in handles {
        let (k, id) = h.await.expect("enqueue task");
        ids.entry(k).or_default().push(id);
    }
    for (k, got) in &ids {
        assert!(
            got.windows(2).all(|w| w[0] == w[1]),
            "key-{k}: the three nodes' enqueues returned different jobs: {got:?}"
        );
    }
    let stored: Vec<(String, i64)> = sqlx::query_as(
        "SELECT CAST(unique_key AS CHAR), COUNT(*) FROM queue_jobs WHERE task = 'cluster.unique' \
         GROUP BY unique_key",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(stored.len() as u64, keys, "one job per key: {stored:?}");
    assert!(stored.iter().all(|(_, n)| *n == 1), "{stored:?}");
    eprintln!("unique keys: {keys} keys enqueued through 3 nodes at once, one job each");

    // Cron: three runtimes compete for every tick.
    let mut runtimes = Vec::new();
    for c in &clients {
        runtimes.push(
            Runtime::builder(c.clone())
                .queues(["cluster_cron"])
                .start()
                .await
                .expect("start a runtime"),
        );
    }
    let watch = Duration::from_secs(12);
    tokio::time::sleep(watch).await;
    for r in runtimes {
        r.shutdown(Duration::from_secs(10)).await.expect("shutdown");
    }
    let runs: Vec<(u64, DateTime<Utc>, String)> =
        sqlx::query_as("SELECT job_id, tick, node FROM cron_runs ORDER BY tick, exec")
            .fetch_all(&db)
            .await
            .unwrap();
    // The jobs of the ticks: those that ran, and those still pending at
    // shutdown (a tick's job is enqueued with `run_at` = the tick).
    let pending: Vec<(u64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, run_at FROM queue_jobs WHERE task = 'cluster.cron_every_second'",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let mut per_tick: BTreeMap<DateTime<Utc>, Vec<u64>> = BTreeMap::new();
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for (job, tick, node) in &runs {
        per_tick.entry(*tick).or_default().push(*job);
        *per_node.entry(node.as_str()).or_default() += 1;
    }
    for (job, tick) in &pending {
        let jobs = per_tick.entry(*tick).or_default();
        if !jobs.contains(job) {
            jobs.push(*job);
        }
    }
    let twice: Vec<_> = per_tick.iter().filter(|(_, jobs)| jobs.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "ticks that ran more than one job (or a job twice): {twice:?}"
    );
    // About one tick a second; a tick that fired late on this loaded
    // machine may stand for a few missed ones (the latest missed tick
    // fires once), so not every second has one.
    assert!(
        per_tick.len() >= 6,
        "only {} ticks ran in {watch:?}: {per_tick:?}",
        per_tick.len()
    );
    eprintln!(
        "cron: {} ticks in {watch:?}, one job each, run once; executions per node {per_node:?}; \
         {} tick jobs still pending at shutdown",
        per_tick.len(),
        pending.len()
    );
    drop(clients);
    drop(first);
    db.close().await;
    drop_database(&nodes, &name).await;
}
