//! The benchmark program.
//!
//! ```text
//! cargo run --release --example bench -- [SCENARIO ...] [--quick] [options]
//! ```
//!
//! Scenarios: `enqueue`, `ceiling`, `throughput`, `latency`, `idle`,
//! `memory`, `delay`, `churn`, `limits`, `admin` (the operator's reads at
//! 10,000 and 1,000,000 jobs, and a drain polled by a dashboard), or `all`
//! (the default), in that order; and `cluster` (not part of `all`): no-op
//! jobs on a MariaDB Galera cluster whose nodes' URLs are in
//! `CLUSTER_URLS`, one runtime per node and all through one node, with the
//! certification conflicts they cost. Each prints a
//! Markdown table and one JSON line per result (`grep '^{'` keeps only
//! those); the run ends with the issue's targets, each measured in this run.
//!
//! Options (defaults as the issue says; `--quick` shrinks them so that
//! `all` takes a few minutes):
//!
//! - `--jobs N`          throughput and ceiling jobs (100,000; quick 20,000)
//! - `--enqueue-jobs N`  enqueue_many jobs (1,000,000; quick 100,000)
//! - `--singles N`       one-by-one enqueues (2,000; quick 1,000)
//! - `--throughput-variants LIST`  comma-separated `PROCESSESxCONCURRENCY`
//!   (`1x1,1x10,1x50,4x10`)
//! - `--latency-secs S`  trickle length (20; quick 10) at `--rate R` jobs/s (200)
//! - `--churn-jobs N`    churn burst (1,000,000; quick 100,000)
//! - `--churn-secs S`    time cap per churn variant (600; quick 60)
//! - `--churn-variants LIST`  comma-separated subset of
//!   `runtime,runtime+readview,seed,seed+readview` (all four)
//! - `--mem-jobs N`      jobs queued in the memory scenario (1,000,000; quick 100,000)
//! - `--idle-secs S`     idle-polling window (10; quick 5)
//! - `--cluster-jobs N`  cluster jobs per variant (20,000; quick 5,000)
//! - `--cluster-concurrency N`  concurrency of each cluster runtime (10)
//!
//! The database is `DATABASE_URL`'s server, or the private MariaDB of
//! `scripts/db.sh` (for `cluster`: the nodes of `CLUSTER_URLS`, nothing
//! else, when it runs alone); every scenario works in a fresh database of its own
//! (`bench_*`), dropped when it ends. The multi-process parts run this same
//! binary again with a hidden subcommand (`__drain`, `__trickle`,
//! `__enqueue`). See docs/benchmarks.md for a full run and what it means.

mod churn;
mod cluster;
mod report;
mod scenarios;
mod sqltap;
mod tasks;

use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use queue_runtime::{Client, Runtime};
use serde_json::{Map, Value, json};

use crate::report::Report;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// Sizes and switches of a run.
#[derive(Debug, Clone)]
pub(crate) struct Opts {
    pub(crate) quick: bool,
    pub(crate) jobs: u64,
    pub(crate) throughput_variants: Vec<(usize, usize)>,
    pub(crate) enqueue_jobs: u64,
    pub(crate) singles: u64,
    pub(crate) latency_secs: u64,
    pub(crate) rate: u64,
    pub(crate) churn_jobs: u64,
    pub(crate) churn_secs: u64,
    pub(crate) churn_variants: Vec<String>,
    pub(crate) mem_jobs: u64,
    pub(crate) idle_secs: u64,
    pub(crate) cluster_jobs: u64,
    pub(crate) cluster_concurrency: usize,
}

const SCENARIOS: &[&str] = &[
    "enqueue",
    "ceiling",
    "throughput",
    "latency",
    "idle",
    "memory",
    "delay",
    "churn",
    "limits",
    "admin",
];

/// Scenarios that `all` leaves out (they need more than one server).
const EXTRA_SCENARIOS: &[&str] = &["cluster"];

fn usage() -> ! {
    eprintln!(
        "usage: bench [SCENARIO ...] [--quick] [--jobs N] [--throughput-variants 1x1,1x10,1x50,4x10] [--enqueue-jobs N] [--singles N] \
         [--latency-secs S] [--rate R] [--churn-jobs N] [--churn-secs S] \
         [--churn-variants runtime,runtime+readview,seed,seed+readview] [--mem-jobs N] [--idle-secs S] \
         [--cluster-jobs N] [--cluster-concurrency N]\n\
         scenarios: {} | all (all of those) | {} (CLUSTER_URLS=node1,node2,node3)",
        SCENARIOS.join(" | "),
        EXTRA_SCENARIOS.join(" | ")
    );
    std::process::exit(2)
}

fn parse(args: &[String]) -> (Vec<String>, Opts) {
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Opts {
        quick,
        jobs: if quick { 20_000 } else { 100_000 },
        throughput_variants: vec![(1, 1), (1, 10), (1, 50), (4, 10)],
        enqueue_jobs: if quick { 100_000 } else { 1_000_000 },
        singles: if quick { 1_000 } else { 2_000 },
        latency_secs: if quick { 10 } else { 20 },
        rate: 200,
        churn_jobs: if quick { 100_000 } else { 1_000_000 },
        churn_secs: if quick { 60 } else { 600 },
        churn_variants: churn::VARIANTS.iter().map(|s| (*s).to_owned()).collect(),
        mem_jobs: if quick { 100_000 } else { 1_000_000 },
        idle_secs: if quick { 5 } else { 10 },
        cluster_jobs: if quick { 5_000 } else { 20_000 },
        cluster_concurrency: 10,
    };
    let mut scenarios = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || -> u64 {
            it.next()
                .and_then(|v| v.replace(['_', ','], "").parse().ok())
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--quick" => {}
            "--jobs" => o.jobs = val(),
            "--enqueue-jobs" => o.enqueue_jobs = val(),
            "--singles" => o.singles = val(),
            "--latency-secs" => o.latency_secs = val(),
            "--rate" => o.rate = val(),
            "--churn-jobs" => o.churn_jobs = val(),
            "--churn-secs" => o.churn_secs = val(),
            "--mem-jobs" => o.mem_jobs = val(),
            "--idle-secs" => o.idle_secs = val(),
            "--cluster-jobs" => o.cluster_jobs = val(),
            "--cluster-concurrency" => match usize::try_from(val()) {
                Ok(c @ 1..) => o.cluster_concurrency = c,
                _ => usage(),
            },
            "--throughput-variants" => {
                let v = it.next().unwrap_or_else(|| usage());
                o.throughput_variants = v
                    .split(',')
                    .map(|pc| {
                        let (p, c) = pc.split_once('x').unwrap_or_else(|| usage());
                        match (p.parse(), c.parse()) {
                            (Ok(p @ 1..), Ok(c @ 1..)) => (p, c),
                            _ => usage(),
                        }
                    })
                    .collect();
            }
            "--churn-variants" => {
                let v = it.next().unwrap_or_else(|| usage());
                o.churn_variants = v.split(',').map(str::to_owned).collect();
                if o.churn_variants
                    .iter()
                    .any(|v| !churn::VARIANTS.contains(&v.as_str()))
                {
                    usage()
                }
            }
            "-h" | "--help" => usage(),
            "all" => scenarios.extend(SCENARIOS.iter().map(|s| (*s).to_owned())),
            s if SCENARIOS.contains(&s) || EXTRA_SCENARIOS.contains(&s) => {
                scenarios.push(s.to_owned());
            }
            _ => usage(),
        }
    }
    if scenarios.is_empty() {
        scenarios.extend(SCENARIOS.iter().map(|s| (*s).to_owned()));
    }
    // Run in the canonical order, once each.
    let scenarios = SCENARIOS
        .iter()
        .chain(EXTRA_SCENARIOS)
        .filter(|s| scenarios.iter().any(|x| x == *s))
        .map(|s| (*s).to_owned())
        .collect();
    (scenarios, o)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(cmd) = args.first().filter(|a| a.starts_with("__")) {
        return rt.block_on(child(cmd, &args[1..]));
    }
    sqltap::install();
    let (scenarios, opts) = parse(&args);
    rt.block_on(run(scenarios, opts))
}

async fn run(scenarios: Vec<String>, opts: Opts) -> Res<()> {
    let started = Instant::now();
    // The cluster alone reports on its first node and needs no other server.
    let url = if scenarios.iter().all(|s| s == "cluster") {
        cluster::node_urls()?[0].clone()
    } else {
        queue_examples::database_url()
    };
    let mut report = server_report(&url, &opts).await?;
    println!("# queue-runtime bench");
    println!();
    println!(
        "server {} · {} cores · {} · scenarios: {}",
        report.server,
        report.common["cores"],
        if opts.quick {
            "quick sizes"
        } else {
            "full sizes"
        },
        scenarios.join(", ")
    );
    println!("server settings: {}", Value::Object(report.common.clone()));
    let mut ctx = scenarios::Ctx::default();
    for s in &scenarios {
        let t = Instant::now();
        println!();
        println!("## {s}");
        let r = match s.as_str() {
            "enqueue" => scenarios::enqueue(&mut report, &opts, &mut ctx).await,
            "ceiling" => scenarios::ceiling(&mut report, &opts, &mut ctx).await,
            "throughput" => scenarios::throughput(&mut report, &opts, &mut ctx).await,
            "latency" => scenarios::latency(&mut report, &opts, &mut ctx).await,
            "idle" => scenarios::idle(&mut report, &opts, &mut ctx).await,
            "memory" => scenarios::memory(&mut report, &opts, &mut ctx).await,
            "delay" => scenarios::delay(&mut report, &opts, &mut ctx).await,
            "churn" => churn::churn(&mut report, &opts, &mut ctx).await,
            "limits" => scenarios::limits(&mut report, &opts, &mut ctx).await,
            "admin" => scenarios::admin(&mut report, &opts, &mut ctx).await,
            "cluster" => cluster::cluster(&mut report, &opts).await,
            _ => unreachable!(),
        };
        if let Err(e) = r {
            println!("scenario {s} failed: {e}");
            eprintln!("scenario {s} failed: {e}");
        }
        println!("({s} took {:.0} s)", t.elapsed().as_secs_f64());
    }
    scenarios::targets(&mut report, &opts, &ctx);
    report.print_targets();
    println!(
        "total elapsed: {:.0} s ({:.1} min)",
        started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// The server's version and the settings that shape these numbers.
async fn server_report(url: &str, opts: &Opts) -> Res<Report> {
    let pool = sqlx::MySqlPool::connect(url).await?;
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&pool)
        .await?;
    let mut common = Map::new();
    common.insert(
        "cores".into(),
        json!(std::thread::available_parallelism().map_or(0, |n| n.get())),
    );
    common.insert("quick".into(), json!(opts.quick));
    for var in [
        "innodb_flush_log_at_trx_commit",
        "innodb_buffer_pool_size",
        "innodb_purge_threads",
        "innodb_autoinc_lock_mode",
        "transaction_isolation",
        "log_bin",
        "sync_binlog",
    ] {
        let v: Option<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SHOW GLOBAL VARIABLES LIKE '{var}'"
        )))
        .fetch_optional(&pool)
        .await?;
        if let Some((_, v)) = v {
            let v = match v.parse::<u64>() {
                Ok(n) if var == "innodb_buffer_pool_size" => json!(format!("{} MiB", n >> 20)),
                Ok(n) => json!(n),
                Err(_) => json!(v),
            };
            common.insert(var.into(), v);
        }
    }
    pool.close().await;
    Ok(Report {
        server: version,
        common,
        targets: Vec::new(),
    })
}

// ---------------------------------------------------------------------------
// Helpers shared by the scenarios.

/// A fresh, migrated database `name`; returns its URL and a client.
pub(crate) async fn fresh(name: &str) -> Res<(String, Client)> {
    let url = queue_examples::demo_database(name).await?;
    let client = Client::connect(&url).await?;
    client.migrate().await?;
    Ok((url, client))
}

/// Drops a bench database.
pub(crate) async fn drop_db(name: &str) {
    let url = queue_examples::database_url();
    let (base, _) = url.rsplit_once('/').unwrap_or((&url, ""));
    if let Ok(mut c) =
        <sqlx::MySqlConnection as sqlx::Connection>::connect(&format!("{base}/")).await
    {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{name}`"
        )))
        .execute(&mut c)
        .await;
    }
}

/// Resident set size of this process, MB (10^6 bytes).
pub(crate) fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb * 1024.0 / 1e6)
}

/// Starts this program again with a hidden subcommand; its stdout is piped
/// and read line by line into `on_line` on a thread.
pub(crate) fn spawn_self(args: &[String], on_line: impl Fn(&str) + Send + 'static) -> Res<Child> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let out = child.stdout.take().ok_or("no stdout")?;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            match line {
                Ok(l) => on_line(&l),
                Err(_) => break,
            }
        }
    });
    Ok(child)
}

fn arg(args: &[String], name: &str) -> Res<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| format!("missing {name}").into())
}

fn num_arg(args: &[String], name: &str) -> Res<u64> {
    Ok(arg(args, name)?.parse()?)
}

/// The hidden subcommands run in child processes.
async fn child(cmd: &str, args: &[String]) -> Res<()> {
    let url = arg(args, "--url")?;
    match cmd {
        // A runtime draining the no-op queue; reports its count every 20 ms
        // until its stdin closes.
        "__drain" => {
            let concurrency = num_arg(args, "--concurrency")? as usize;
            let client = Client::connect(&url).await?;
            let runtime = Runtime::builder(client)
                .concurrency(concurrency)
                .queues(["bench"])
                .cron(false)
                .start()
                .await?;
            let stop = Arc::new(AtomicBool::new(false));
            let s2 = stop.clone();
            std::thread::spawn(move || {
                let mut sink = String::new();
                while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
                s2.store(true, Ordering::SeqCst);
            });
            let report = || {
                println!(
                    "count {} {}",
                    tasks::DONE.load(Ordering::Relaxed),
                    tasks::FIRST_US.load(Ordering::Relaxed)
                );
                let _ = std::io::stdout().flush();
            };
            while !stop.load(Ordering::SeqCst) {
                report();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            runtime.shutdown(Duration::from_secs(10)).await?;
            report();
            Ok(())
        }
        // Enqueues `timed` jobs at a steady rate, as another process would.
        "__trickle" => {
            let rate = num_arg(args, "--rate")?;
            let secs = num_arg(args, "--secs")?;
            let client = Client::connect(&url).await?;
            let sent = scenarios::trickle(&client, rate, secs).await?;
            println!("sent {}", sent.0);
            println!("enqueue_p50_ms {}", sent.1);
            Ok(())
        }
        // Enqueues held jobs for the memory scenario.
        "__enqueue" => {
            let n = num_arg(args, "--n")?;
            let chunk = num_arg(args, "--chunk")?;
            let client = Client::connect(&url).await?;
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk);
                tasks::hold::enqueue_many(&client, std::iter::repeat_n((), k as usize)).await?;
                left -= k;
            }
            println!("sent {n}");
            Ok(())
        }
        _ => Err(format!("unknown subcommand {cmd}").into()),
    }
}
