//! A worker process for the fault-injection tests (`tests/tests/faults.rs`):
//! a queue runtime in its own process, so that a test can SIGKILL it, stop
//! it (SIGSTOP) past its lease, run several at once, or read its logs.
//!
//! ```text
//! QUEUE_TEST_DATABASE_URL=mysql://… queue-test-worker \
//!     [--queue NAME]… [--concurrency N] [--prefetch N] [--lease-ms MS] [--heartbeat-ms MS] [--drain-ms MS]
//!     [--poll-ms MS] [--wakeups on|off]
//! ```
//!
//! It runs the tasks of `tests/faults/tasks.rs` (the test binary declares the
//! same ones), logs to stderr (`RUST_LOG`, default `info`), prints
//! `ready PID` on stdout once its runtime has started, and on SIGTERM or
//! SIGINT shuts down gracefully (`shutdown(drain)`, default 5 s): exit code 0
//! if that succeeded, 1 if it returned an error, 2 on a usage or start-up error.

#[path = "../../tests/faults/tasks.rs"]
#[allow(dead_code, unreachable_pub)]
mod tasks;

use std::process::ExitCode;
use std::time::Duration;

use queue_runtime::{Client, Runtime};
use tokio::signal::unix::{SignalKind, signal};

/// The worker's settings, from the command line.
struct Args {
    url: String,
    queues: Vec<String>,
    concurrency: usize,
    prefetch: Option<usize>,
    lease: Option<Duration>,
    heartbeat: Option<Duration>,
    drain: Duration,
    poll: Option<Duration>,
    wakeups: bool,
}

fn parse_args() -> Result<Args, String> {
    let url = std::env::var("QUEUE_TEST_DATABASE_URL")
        .map_err(|_| "QUEUE_TEST_DATABASE_URL is not set".to_owned())?;
    let mut args = Args {
        url,
        queues: Vec::new(),
        concurrency: 10,
        prefetch: None,
        lease: None,
        heartbeat: None,
        drain: Duration::from_secs(5),
        poll: None,
        wakeups: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--queue" => args.queues.push(value.clone()),
            "--concurrency" => {
                args.concurrency = usize::try_from(number()?).map_err(|e| e.to_string())?
            }
            "--prefetch" => {
                args.prefetch = Some(usize::try_from(number()?).map_err(|e| e.to_string())?)
            }
            "--lease-ms" => args.lease = Some(Duration::from_millis(number()?)),
            "--heartbeat-ms" => args.heartbeat = Some(Duration::from_millis(number()?)),
            "--drain-ms" => args.drain = Duration::from_millis(number()?),
            "--poll-ms" => args.poll = Some(Duration::from_millis(number()?)),
            "--wakeups" => args.wakeups = value != "off",
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if args.queues.is_empty() {
        args.queues.push("faults".to_owned());
    }
    Ok(args)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let pid = std::process::id();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("queue-test-worker: {e}");
            return ExitCode::from(2);
        }
    };
    // Install the handlers before the runtime starts: a SIGTERM that arrives
    // early must not kill the process without a shutdown.
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("queue-test-worker: cannot install signal handlers");
            return ExitCode::from(2);
        }
    };
    let client = match Client::connect(&args.url).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("queue-test-worker: cannot connect: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = Runtime::builder(client)
        .concurrency(args.concurrency)
        .queues(args.queues.clone())
        .cron(false)
        .cross_process_wakeups(args.wakeups);
    if let Some(poll) = args.poll {
        builder = builder.poll_interval(poll);
    }
    if let Some(prefetch) = args.prefetch {
        builder = builder.prefetch(prefetch);
    }
    if let Some(lease) = args.lease {
        builder = builder.lease(lease);
    }
    if let Some(heartbeat) = args.heartbeat {
        builder = builder.heartbeat(heartbeat);
    }
    let runtime = match builder.start().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("queue-test-worker: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    println!("ready {pid}");
    tokio::select! {
        _ = term.recv() => eprintln!("queue-test-worker {pid}: SIGTERM, shutting down"),
        _ = int.recv() => eprintln!("queue-test-worker {pid}: SIGINT, shutting down"),
    }
    match runtime.shutdown(args.drain).await {
        Ok(()) => {
            eprintln!("queue-test-worker {pid}: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("queue-test-worker {pid}: shutdown failed: {e}");
            ExitCode::from(1)
        }
    }
}
