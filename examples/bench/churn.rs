//! `churn`: seed 001 as it happened, on the runtime and on the seed's own
//! table and queries, with and without a session holding a read view.
//!
//! A burst of low-priority (4) no-op jobs is drained by 6 workers while
//! priority-0 jobs arrive at 20/s from another connection pool. Every 5 s a
//! row: burst jobs/s, the claim's locking SELECT ("pick") p50/p99, the whole
//! claim p50/p99, priority-0 enqueue-to-start p99, InnoDB's history list
//! length.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_runtime::{Client, Runtime};
use serde_json::json;
use sqlx::{Connection, MySqlConnection, MySqlPool};

use crate::report::{Report, num, pct};
use crate::scenarios::{Ctx, err_number, fill};
use crate::tasks::{self, now_us};
use crate::{Opts, Res, drop_db, fresh};

/// The variants, in the order they run.
pub(crate) const VARIANTS: &[&str] = &["runtime", "runtime+readview", "seed", "seed+readview"];

const WORKERS: usize = 6;
const WINDOW: Duration = Duration::from_secs(5);
const URGENT_PER_S: u64 = 20;
/// Priority-0 jobs "never wait behind the burst": every window's p99 under this.
const URGENT_LIMIT_MS: f64 = 100.0;

/// One 5-s row.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub(crate) t: f64,
    pub(crate) jobs_per_s: f64,
    pub(crate) pick_p50: f64,
    pub(crate) pick_p99: f64,
    pub(crate) claim_p50: f64,
    pub(crate) claim_p99: f64,
    pub(crate) urgent_n: usize,
    pub(crate) urgent_p99: f64,
    pub(crate) hll: f64,
    pub(crate) secs: f64,
}

/// What a variant measured.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) variant: String,
    pub(crate) windows: Vec<Window>,
    pub(crate) done: u64,
    pub(crate) total: u64,
    pub(crate) secs: f64,
    pub(crate) urgent_enqueued: u64,
    pub(crate) urgent_started: u64,
    pub(crate) urgent_max_ms: f64,
    pub(crate) deadlocks: u64,
}

impl Outcome {
    /// (first, last) full windows for the ratio (a final window shorter
    /// than half a window is left out).
    fn ends(&self) -> Option<(&Window, &Window)> {
        let full: Vec<&Window> = self
            .windows
            .iter()
            .filter(|w| w.secs >= WINDOW.as_secs_f64() / 2.0)
            .collect();
        Some((*full.first()?, *full.last()?))
    }

    /// The churn targets (for the runtime's variants; the seed's are shown
    /// as they are).
    pub(crate) fn targets(&self, report: &mut Report) {
        let ours = self.variant.starts_with("runtime");
        let label = |what: &str| format!("churn {}: {what}", self.variant);
        match self.ends() {
            Some((a, b)) => {
                let r = b.pick_p99 / a.pick_p99;
                let rc = b.claim_p99 / a.claim_p99;
                report.target(
                    &label("claim p99, last vs first 5-s window"),
                    if ours { "≤ 2×" } else { "(baseline: shown as is)" },
                    format!(
                        "pick {} → {} ms ({:.2}×); whole claim {} → {} ms ({:.2}×{}); {} of {} jobs in {:.0} s",
                        num(a.pick_p99),
                        num(b.pick_p99),
                        r,
                        num(a.claim_p99),
                        num(b.claim_p99),
                        rc,
                        if ours { ", 60-s rolling" } else { "" },
                        num(self.done as f64),
                        num(self.total as f64),
                        self.secs
                    ),
                    if ours { Some(r <= 2.0) } else { None },
                );
            }
            None => report.target(
                &label("claim p99, last vs first 5-s window"),
                "≤ 2×",
                "no full window".into(),
                None,
            ),
        }
        let worst = self
            .windows
            .iter()
            .map(|w| w.urgent_p99)
            .filter(|v| !v.is_nan())
            .fold(f64::NAN, f64::max);
        let all_started = self.urgent_started >= self.urgent_enqueued;
        report.target(
            &label("priority-0 never waits behind the burst"),
            if ours {
                "every window's p0 p99 ≤ 100 ms, all started"
            } else {
                "(baseline: shown as is)"
            },
            format!(
                "worst window p99 {} ms, max {} ms; started {} of {}",
                num(worst),
                num(self.urgent_max_ms),
                self.urgent_started,
                self.urgent_enqueued
            ),
            if ours {
                Some(worst <= URGENT_LIMIT_MS && all_started)
            } else {
                None
            },
        );
    }
}

/// Sends a priority-0 job `URGENT_PER_S` times a second with `send` until
/// `stop`, counting in `enqueued` the sends that succeeded. Each send is its
/// own task (a slow one does not delay the next); all are awaited before the
/// returned task ends, so the count is final when the caller then waits for
/// the jobs to start.
fn urgent_producer<F, Fut>(
    stop: Arc<AtomicBool>,
    enqueued: Arc<AtomicU64>,
    send: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / URGENT_PER_S));
        let mut sends = tokio::task::JoinSet::new();
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            let (sent, e) = (send(), enqueued.clone());
            sends.spawn(async move {
                if sent.await {
                    e.fetch_add(1, Ordering::SeqCst);
                }
            });
            while sends.try_join_next().is_some() {}
        }
        while sends.join_next().await.is_some() {}
    })
}

/// InnoDB's history list length, as the runtime reads it.
async fn hll(client: &Client) -> f64 {
    client
        .history_list_length()
        .await
        .map_or(f64::NAN, |v| v as f64)
}

/// A session holding a read view: `START TRANSACTION WITH CONSISTENT
/// SNAPSHOT` and one read of `table`, kept open until dropped/rolled back.
async fn hold_read_view(url: &str, table: &str) -> Res<MySqlConnection> {
    let mut c = MySqlConnection::connect(url).await?;
    sqlx::query("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        .execute(&mut c)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM {table} LIMIT 1"
    )))
    .fetch_all(&mut c)
    .await?;
    Ok(c)
}

fn print_header(variant: &str, n: u64, cap: u64) {
    println!();
    println!(
        "### churn, {variant}: {} priority-4 jobs, {WORKERS} workers, priority-0 at {URGENT_PER_S}/s (cap {cap} s)",
        num(n as f64)
    );
    println!();
    println!(
        "|     t s | jobs/s | pick p50 ms | pick p99 ms | claim p50 ms | claim p99 ms | p0 jobs | p0 start p99 ms |     HLL |"
    );
    println!(
        "|--------:|-------:|------------:|------------:|-------------:|-------------:|--------:|----------------:|--------:|"
    );
}

fn print_window(w: &Window) {
    println!(
        "| {:>7} | {:>6} | {:>11} | {:>11} | {:>12} | {:>12} | {:>7} | {:>15} | {:>7} |",
        num(w.t),
        num(w.jobs_per_s),
        num(w.pick_p50),
        num(w.pick_p99),
        num(w.claim_p50),
        num(w.claim_p99),
        w.urgent_n,
        num(w.urgent_p99),
        num(w.hll)
    );
}

/// Samples shared by the seed's workers.
#[derive(Default)]
struct SeedSinks {
    picks: Mutex<Vec<f64>>,
    claims: Mutex<Vec<f64>>,
    urgent: Mutex<Vec<f64>>,
    bulk_done: AtomicU64,
    urgent_done: AtomicU64,
    deadlocks: AtomicU64,
}

/// Runs the churn variants.
pub(crate) async fn churn(report: &mut Report, opts: &Opts, ctx: &mut Ctx) -> Res<()> {
    for v in VARIANTS {
        if !opts.churn_variants.iter().any(|x| x == v) {
            continue;
        }
        let readview = v.ends_with("+readview");
        let r = if v.starts_with("runtime") {
            runtime_variant(report, opts, v, readview).await
        } else {
            seed_variant(report, opts, v, readview).await
        };
        match r {
            Ok(o) => ctx.churn.push(o),
            Err(e) => println!("churn {v} failed: {e}"),
        }
    }
    drop_db("bench_churn").await;
    drop_db("bench_seed").await;
    Ok(())
}

fn emit_windows(report: &Report, variant: &str, o: &Outcome, settings: &serde_json::Value) {
    for w in &o.windows {
        let mut s = settings.clone();
        s["t"] = json!(w.t);
        for (metric, value, unit) in [
            ("jobs_per_s", w.jobs_per_s, "jobs/s"),
            ("pick_p50", w.pick_p50, "ms"),
            ("pick_p99", w.pick_p99, "ms"),
            ("claim_p50", w.claim_p50, "ms"),
            ("claim_p99", w.claim_p99, "ms"),
            ("p0_start_p99", w.urgent_p99, "ms"),
            ("history_list_length", w.hll, "undo logs"),
        ] {
            report.emit("churn", variant, metric, value, unit, s.clone());
        }
    }
    let mut s = settings.clone();
    s["secs"] = json!(o.secs);
    report.emit(
        "churn",
        variant,
        "jobs_done",
        o.done as f64,
        "jobs",
        s.clone(),
    );
    report.emit(
        "churn",
        variant,
        "jobs_per_s",
        o.done as f64 / o.secs,
        "jobs/s",
        s.clone(),
    );
    report.emit("churn", variant, "p0_start_max", o.urgent_max_ms, "ms", s);
}

/// Our runtime: one runtime at concurrency 6.
async fn runtime_variant(
    report: &mut Report,
    opts: &Opts,
    variant: &str,
    readview: bool,
) -> Res<Outcome> {
    let n = opts.churn_jobs;
    let (url, client) = fresh("bench_churn").await?;
    let t = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(5_000);
        tasks::bulk::enqueue_many(&client, std::iter::repeat_n((), k as usize)).await?;
        left -= k;
    }
    println!(
        "enqueued {} burst jobs in {:.1} s (enqueue_many, chunks of 5,000)",
        num(n as f64),
        t.elapsed().as_secs_f64()
    );
    // Another pool, as another process: its enqueues do not wake the runtime.
    let producer = Client::connect(&url).await?;
    let monitor = MySqlPool::connect(&url).await?;
    let monitor_client = Client::from_pool(monitor.clone()).await?;
    let view = if readview {
        Some(hold_read_view(&url, "queue_ready").await?)
    } else {
        None
    };
    tasks::reset();
    crate::sqltap::take_picks();
    crate::sqltap::PICKS.store(true, Ordering::SeqCst);
    print_header(variant, n, opts.churn_secs);
    let rt = Runtime::builder(client.clone())
        .concurrency(WORKERS)
        .queues(["bench_churn"])
        .cron(false)
        .start()
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let enqueued = Arc::new(AtomicU64::new(0));
    let prod = {
        let producer = producer.clone();
        urgent_producer(stop.clone(), enqueued.clone(), move || {
            let p = producer.clone();
            async move { tasks::urgent::enqueue(&p, now_us()).await.is_ok() }
        })
    };
    let start = Instant::now();
    let mut windows = Vec::new();
    let mut urgent_all = Vec::new();
    let mut stats_ms = Vec::new();
    let mut last_done = 0;
    let mut wstart = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = tasks::BULK_DONE.load(Ordering::Relaxed);
        let finished = done >= n || start.elapsed() >= Duration::from_secs(opts.churn_secs);
        if wstart.elapsed() < WINDOW && !finished {
            continue;
        }
        let secs = wstart.elapsed().as_secs_f64();
        wstart = Instant::now();
        let picks = crate::sqltap::take_picks();
        let urgent = std::mem::take(&mut *tasks::URGENT_MS.lock().unwrap());
        let t_stats = Instant::now();
        let claim = client.stats().await.ok().and_then(|s| s.claim_latency);
        stats_ms.push(t_stats.elapsed().as_secs_f64() * 1e3);
        let (c50, c99) = claim.map_or((f64::NAN, f64::NAN), |(a, b)| {
            (a.as_secs_f64() * 1e3, b.as_secs_f64() * 1e3)
        });
        let w = Window {
            t: start.elapsed().as_secs_f64(),
            jobs_per_s: (done - last_done) as f64 / secs,
            pick_p50: pct(&picks, 50.0),
            pick_p99: pct(&picks, 99.0),
            claim_p50: c50,
            claim_p99: c99,
            urgent_n: urgent.len(),
            urgent_p99: pct(&urgent, 99.0),
            hll: hll(&monitor_client).await,
            secs,
        };
        print_window(&w);
        windows.push(w);
        urgent_all.extend(urgent);
        last_done = done;
        if finished {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let _ = prod.await;
    // Let the last priority-0 jobs start.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let started = urgent_all.len() + tasks::URGENT_MS.lock().unwrap().len();
        if started as u64 >= enqueued.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    urgent_all.extend(std::mem::take(&mut *tasks::URGENT_MS.lock().unwrap()));
    crate::sqltap::PICKS.store(false, Ordering::SeqCst);
    let done = tasks::BULK_DONE.load(Ordering::Relaxed);
    if (urgent_all.len() as u64) < enqueued.load(Ordering::SeqCst) {
        // Where are the priority-0 jobs that did not start?
        let rows: Vec<(u64, u8, u32, Option<u64>)> = sqlx::query_as(
            "SELECT j.id, j.state, j.attempts, r.seq FROM queue_jobs j \
             LEFT JOIN queue_ready r ON r.job_id = j.id WHERE j.priority = 0 LIMIT 10",
        )
        .fetch_all(&monitor)
        .await?;
        eprintln!("{variant}: priority-0 jobs left (id, state, attempts, seq): {rows:?}");
    }
    rt.shutdown(Duration::from_secs(10)).await?;
    if let Some(mut v) = view {
        let _ = sqlx::query("ROLLBACK").execute(&mut v).await;
    }
    let o = Outcome {
        variant: variant.into(),
        windows,
        done,
        total: n,
        secs,
        urgent_enqueued: enqueued.load(Ordering::SeqCst),
        urgent_started: urgent_all.len() as u64,
        urgent_max_ms: pct(&urgent_all, 100.0),
        deadlocks: 0,
    };
    println!(
        "{variant}: {} of {} burst jobs in {:.0} s ({} jobs/s); priority-0 started {} of {}, max wait {} ms",
        num(done as f64),
        num(n as f64),
        secs,
        num(done as f64 / secs),
        o.urgent_started,
        o.urgent_enqueued,
        num(o.urgent_max_ms)
    );
    println!(
        "(client.stats(), read once per window for the claim latency, took p50 {} ms, max {} ms: it also counts every job)",
        num(pct(&stats_ms, 50.0)),
        num(pct(&stats_ms, 100.0))
    );
    println!(
        "(pick = the claim's SELECT … FOR UPDATE SKIP LOCKED, per window, from sqlx's statement log; claim = the whole claim transaction, the runtime's Stats::claim_latency, a 60-s rolling window)"
    );
    let s = json!({"jobs": n, "workers": WORKERS, "runtime": "1 runtime, concurrency 6",
                   "priority0_per_s": URGENT_PER_S, "read_view": readview, "cap_s": opts.churn_secs,
                   "claim_latency": "pick per window; claim 60-s rolling"});
    emit_windows(report, variant, &o, &s);
    producer.pool().close().await;
    client.pool().close().await;
    monitor.close().await;
    Ok(o)
}

/// The seed's own table and queries, 6 workers on their own connections.
async fn seed_variant(
    report: &mut Report,
    opts: &Opts,
    variant: &str,
    readview: bool,
) -> Res<Outcome> {
    let n = opts.churn_jobs;
    let url = queue_examples::demo_database("bench_seed").await?;
    let mut admin = MySqlConnection::connect(&url).await?;
    sqlx::query(
        "CREATE TABLE tasks (
           id bigint(20) unsigned NOT NULL AUTO_INCREMENT,
           name varchar(127) NOT NULL,
           priority tinyint(3) unsigned NOT NULL DEFAULT 2,
           status tinyint(3) unsigned NOT NULL DEFAULT 0,
           next_attempt timestamp(6) NULL,
           enqueued_us bigint unsigned NULL,
           PRIMARY KEY (id),
           INDEX tasks_next_attempt_id_idx (priority, next_attempt, id)
         ) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8",
    )
    .execute(&mut admin)
    .await?;
    let t = Instant::now();
    fill(
        &mut admin,
        "tasks",
        "name, priority, status, next_attempt",
        "'bulk', 4, 0, NULL",
        n,
    )
    .await?;
    println!(
        "inserted {} burst rows in {:.1} s (INSERT … SELECT FROM seq_1_to_100000)",
        num(n as f64),
        t.elapsed().as_secs_f64()
    );
    drop(admin);
    let pool = MySqlPool::connect(&url).await?;
    let pool_client = Client::from_pool(pool.clone()).await?;
    let view = if readview {
        Some(hold_read_view(&url, "tasks").await?)
    } else {
        None
    };
    let sinks = Arc::new(SeedSinks::default());
    let stop = Arc::new(AtomicBool::new(false));
    print_header(variant, n, opts.churn_secs);
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let mut c = MySqlConnection::connect(&url).await?;
        let (sinks, stop) = (sinks.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match seed_once(&mut c, &sinks).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // Nothing to run: the seed's workers poll once per second.
                        for _ in 0..10 {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    Err(e) if matches!(err_number(&e), Some(1213 | 1205)) => {
                        sinks.deadlocks.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("seed worker: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    let enqueued = Arc::new(AtomicU64::new(0));
    let prod_stop = Arc::new(AtomicBool::new(false));
    let prod = {
        let pool = pool.clone();
        urgent_producer(prod_stop.clone(), enqueued.clone(), move || {
            let p = pool.clone();
            async move {
                sqlx::query(
                    "INSERT INTO tasks (name, priority, status, next_attempt, enqueued_us) \
                     VALUES ('urgent', 0, 0, NULL, ?)",
                )
                .bind(now_us())
                .execute(&p)
                .await
                .is_ok()
            }
        })
    };
    let start = Instant::now();
    let mut windows = Vec::new();
    let mut urgent_all = Vec::new();
    let mut last_done = 0;
    let mut wstart = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = sinks.bulk_done.load(Ordering::Relaxed);
        let finished = done >= n || start.elapsed() >= Duration::from_secs(opts.churn_secs);
        if wstart.elapsed() < WINDOW && !finished {
            continue;
        }
        let secs = wstart.elapsed().as_secs_f64();
        wstart = Instant::now();
        let picks = std::mem::take(&mut *sinks.picks.lock().unwrap());
        let claims = std::mem::take(&mut *sinks.claims.lock().unwrap());
        let urgent = std::mem::take(&mut *sinks.urgent.lock().unwrap());
        let w = Window {
            t: start.elapsed().as_secs_f64(),
            jobs_per_s: (done - last_done) as f64 / secs,
            pick_p50: pct(&picks, 50.0),
            pick_p99: pct(&picks, 99.0),
            claim_p50: pct(&claims, 50.0),
            claim_p99: pct(&claims, 99.0),
            urgent_n: urgent.len(),
            urgent_p99: pct(&urgent, 99.0),
            hll: hll(&pool_client).await,
            secs,
        };
        print_window(&w);
        windows.push(w);
        urgent_all.extend(urgent);
        last_done = done;
        if finished {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let done = sinks.bulk_done.load(Ordering::Relaxed);
    // Stop producing, let the last priority-0 rows start, then stop.
    prod_stop.store(true, Ordering::SeqCst);
    let _ = prod.await;
    let until = Instant::now() + Duration::from_secs(10);
    let enq_at_stop = enqueued.load(Ordering::SeqCst);
    while Instant::now() < until && sinks.urgent_done.load(Ordering::SeqCst) < enq_at_stop {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }
    urgent_all.extend(std::mem::take(&mut *sinks.urgent.lock().unwrap()));
    if let Some(mut v) = view {
        let _ = sqlx::query("ROLLBACK").execute(&mut v).await;
    }
    let o = Outcome {
        variant: variant.into(),
        windows,
        done,
        total: n,
        secs,
        urgent_enqueued: enqueued.load(Ordering::SeqCst),
        urgent_started: sinks.urgent_done.load(Ordering::SeqCst),
        urgent_max_ms: pct(&urgent_all, 100.0),
        deadlocks: sinks.deadlocks.load(Ordering::Relaxed),
    };
    println!(
        "{variant}: {} of {} burst jobs in {:.0} s ({} jobs/s); priority-0 started {} of {}, max wait {} ms; deadlocks retried {}",
        num(done as f64),
        num(n as f64),
        secs,
        num(done as f64 / secs),
        o.urgent_started,
        o.urgent_enqueued,
        num(o.urgent_max_ms),
        o.deadlocks
    );
    println!(
        "(pick = the seed's SELECT … FOR UPDATE SKIP LOCKED; claim = BEGIN … UPDATE … COMMIT; both per window)"
    );
    let s = json!({"jobs": n, "workers": WORKERS, "design": "seed 001: tasks table, claim ORDER BY priority, next_attempt, id LIMIT 1",
                   "priority0_per_s": URGENT_PER_S, "read_view": readview, "cap_s": opts.churn_secs,
                   "isolation": "server default"});
    emit_windows(report, variant, &o, &s);
    pool.close().await;
    Ok(o)
}

/// One claim-run-delete cycle of the seed's worker. Returns false when
/// there was nothing to run.
async fn seed_once(c: &mut MySqlConnection, sinks: &SeedSinks) -> Result<bool, sqlx::Error> {
    let t0 = Instant::now();
    let mut tx = c.begin().await?;
    let id: Option<u64> = sqlx::query_scalar(
        "SELECT id FROM tasks WHERE priority IN (0, 1, 2, 3, 4) \
         AND (next_attempt IS NULL OR next_attempt <= NOW(6)) \
         ORDER BY priority, next_attempt, id LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let pick = t0.elapsed();
    let Some(id) = id else {
        tx.commit().await?;
        return Ok(false);
    };
    sqlx::query(
        "UPDATE tasks SET status = 1, next_attempt = NOW(6) + INTERVAL 15 SECOND WHERE id = ?",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let (name, enqueued_us): (String, Option<u64>) =
        sqlx::query_as("SELECT name, enqueued_us FROM tasks WHERE id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    let claim = t0.elapsed();
    sinks.picks.lock().unwrap().push(pick.as_secs_f64() * 1e3);
    sinks.claims.lock().unwrap().push(claim.as_secs_f64() * 1e3);
    // The task itself: a no-op (an urgent one records how long it waited).
    if let Some(sent) = enqueued_us.filter(|_| name == "urgent") {
        sinks
            .urgent
            .lock()
            .unwrap()
            .push(now_us().saturating_sub(sent) as f64 / 1e3);
    }
    sqlx::query("DELETE FROM tasks WHERE id = ?")
        .bind(id)
        .execute(&mut *c)
        .await?;
    if name == "urgent" {
        sinks.urgent_done.fetch_add(1, Ordering::Relaxed);
    } else {
        sinks.bulk_done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(true)
}
