//! Graceful shutdown on SIGTERM or Ctrl-C.
//!
//! A worker process runs slow jobs until it is told to stop — by SIGTERM
//! (what `kill`, systemd, Docker and Kubernetes send), by Ctrl-C, or, for a
//! non-interactive run, after `--for SECONDS`. Then it calls
//! `runtime.shutdown(drain)`: the runtime stops claiming, lets running jobs
//! finish within `drain`, and hands the unfinished ones back to the queue at
//! once (their interrupted attempt not counted), so another process starts
//! them without waiting for their lease to expire.
//!
//! ```text
//! cargo run --example graceful_shutdown -- [--jobs N] [--for SECONDS] [--drain SECONDS]
//! ```
//!
//! Defaults: 20 jobs of 1–6 s each, 4 at a time, run until a signal, drain
//! 30 s. Try `--for 3 --drain 1`: a few jobs finish, the running ones are
//! handed back, and the summary shows them ready again.
//!
//! It works in its own database, `queue_shutdown_demo`, recreated each run
//! (on `DATABASE_URL`, or the private MariaDB that `scripts/db.sh` starts).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use queue_runtime::{Client, Runtime, TaskContext, TaskError, task};
use serde::{Deserialize, Serialize};

/// An image to make thumbnails of.
#[derive(Debug, Serialize, Deserialize)]
struct Image {
    id: u32,
    millis: u64,
}

static STARTED: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU64 = AtomicU64::new(0);

/// A slow job. Written to be safe to run again (see docs/delivery.md): its
/// only effect, the thumbnail, would be written under a key made of the
/// image id, so a second run overwrites the first instead of adding to it.
#[task(queue = "images", retries = 3, name = "demo.make_thumbnails")]
async fn make_thumbnails(ctx: TaskContext, image: Image) -> Result<(), TaskError> {
    STARTED.fetch_add(1, Ordering::Relaxed);
    println!(
        "  image {:>3}: started (attempt {})",
        image.id,
        ctx.attempt()
    );
    tokio::time::sleep(Duration::from_millis(image.millis)).await;
    println!("  image {:>3}: done", image.id);
    DONE.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Command-line options.
struct Options {
    jobs: u32,
    run_for: Option<Duration>,
    drain: Duration,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        jobs: 20,
        run_for: None,
        drain: Duration::from_secs(30),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let secs = || {
            value
                .parse::<f64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--jobs" => o.jobs = value.parse().map_err(|e| format!("--jobs {value}: {e}"))?,
            "--for" => o.run_for = Some(Duration::from_secs_f64(secs()?)),
            "--drain" => o.drain = Duration::from_secs_f64(secs()?),
            _ => {
                return Err(format!(
                    "unknown argument {flag} (use --jobs N, --for SECONDS, --drain SECONDS)"
                ));
            }
        }
    }
    Ok(o)
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT), or after `run_for` if given;
/// returns what happened.
async fn stop_signal(run_for: Option<Duration>) -> &'static str {
    let timer = async {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
            () = timer => "--for elapsed",
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
            () = timer => "--for elapsed",
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs under RUST_LOG (e.g. RUST_LOG=queue_runtime=info; warnings and
    // errors only when unset), coloured only on a terminal.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let opts = options()?;

    let url = queue_examples::demo_database("queue_shutdown_demo").await?;
    let client = Client::connect(&url).await?;
    client.migrate().await?;
    let images = (1..=opts.jobs).map(|id| Image {
        id,
        millis: 1_000 + fastrand::u64(0..5_000),
    });
    make_thumbnails::enqueue_many(&client, images).await?;

    let runtime = Runtime::builder(client.clone())
        .concurrency(4)
        .queues(["images"])
        .start()
        .await?;
    println!(
        "running {} jobs, 4 at a time (pid {}); stop with Ctrl-C or `kill {}`",
        opts.jobs,
        std::process::id(),
        std::process::id()
    );

    let why = stop_signal(opts.run_for).await;
    println!(
        "{why}: shutting down, letting running jobs finish for up to {:?}",
        opts.drain
    );
    let started = Instant::now();
    // Stop claiming, drain, hand back the rest. An error means some outcome
    // could not be written (database gone): those jobs come back after
    // their lease expires instead, so nothing is lost either way.
    let result = runtime.shutdown(opts.drain).await;
    println!(
        "shutdown returned after {:.1?}: {result:?}",
        started.elapsed()
    );

    let stats = client.stats().await?;
    let done = DONE.load(Ordering::Relaxed);
    // Every start either finished or was interrupted and handed back (the
    // task never fails), so the difference is what the shutdown handed back.
    let handed_back = STARTED.load(Ordering::Relaxed).saturating_sub(done);
    println!();
    println!("finished                                    {done}");
    println!("handed back (interrupted, attempt refunded) {handed_back}");
    println!(
        "never started (still ready)                 {}",
        stats.total.ready.saturating_sub(handed_back)
    );
    println!(
        "ready for the next process in all           {}",
        stats.total.ready
    );
    println!(
        "still running                               {}",
        stats.total.running
    );
    println!(
        "dead                                        {}",
        stats.total.dead
    );
    result?;
    Ok(())
}
