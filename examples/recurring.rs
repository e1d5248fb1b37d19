//! Delayed and recurring tasks.
//!
//! - `rebuild_report` runs every 2 seconds (cron, seconds field first);
//! - `weekday_digest` uses the 5-field form in a time zone (listed, not
//!   waited for);
//! - `remind` is enqueued with a delay and runs when it is due.
//!
//! Two runtimes run side by side on one database, as two processes would:
//! each cron tick fires once between them. Stops by itself after ~7 s.
//!
//! `cargo run --example recurring`

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use queue_runtime::{Client, Runtime, TaskContext, TaskError, task};

static REPORTS: AtomicU32 = AtomicU32::new(0);

/// Rebuilds a report every two seconds.
#[task(
    cron = "*/2 * * * * *",
    queue = "reports",
    name = "demo.rebuild_report"
)]
async fn rebuild_report(ctx: TaskContext) -> Result<(), TaskError> {
    let n = REPORTS.fetch_add(1, Ordering::SeqCst) + 1;
    println!("  report rebuilt (#{n}, job {})", ctx.job_id());
    Ok(())
}

/// Sends a digest at 08:30 Berlin time on weekdays.
#[task(
    cron = "30 8 * * MON-FRI",
    tz = "Europe/Berlin",
    queue = "reports",
    name = "demo.weekday_digest"
)]
async fn weekday_digest() -> Result<(), TaskError> {
    Ok(())
}

/// A reminder sent later.
#[task(queue = "reports", name = "demo.remind")]
async fn remind(text: String) -> Result<(), TaskError> {
    println!("  reminder: {text}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let url = queue_examples::demo_database("queue_recurring_demo").await?;
    let a = Client::connect(&url).await?;
    a.migrate().await?;
    let b = Client::connect(&url).await?;

    let started = Instant::now();
    remind::with("stand up and stretch".to_owned())
        .delay(Duration::from_secs(3))
        .enqueue(&a)
        .await?;
    println!("enqueued a reminder due in 3 s; starting two runtimes");

    let ra = Runtime::builder(a.clone())
        .queues(["reports"])
        .start()
        .await?;
    let rb = Runtime::builder(b.clone())
        .queues(["reports"])
        .start()
        .await?;

    // The runtimes register their recurring tasks as they start.
    let mut tasks = a.recurring().await?;
    while tasks.len() < 2 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        tasks = a.recurring().await?;
    }
    for task in tasks {
        println!(
            "recurring: {:<22} {:<22} {:<14} next {}",
            task.task,
            task.expression,
            task.timezone,
            task.next_tick.map_or("-".into(), |t| t.to_rfc3339())
        );
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    ra.shutdown(Duration::from_secs(5)).await?;
    rb.shutdown(Duration::from_secs(5)).await?;
    let secs = started.elapsed().as_secs_f64();
    let n = REPORTS.load(Ordering::SeqCst);
    println!("{n} report rebuilds in {secs:.1} s across two runtimes (one per 2-second tick)");
    Ok(())
}
