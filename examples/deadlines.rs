//! Deadlines.
//!
//! - `build_report` has a 500 ms deadline and runs `SELECT SLEEP(3)` through
//!   `ctx.db()`: the server itself ends the query when the deadline passes
//!   (MariaDB `max_statement_time`, MySQL `MAX_EXECUTION_TIME`), not 3 s
//!   later;
//! - `fetch_rates` has a 300 ms deadline and wraps a slow (fake) HTTP call in
//!   `Deadline::current().run(…)`, which gives up when the time is up.
//!
//! Both are retried once, then end dead with "deadline exceeded". Stops by
//! itself after a few seconds.
//!
//! `cargo run --example deadlines`

use std::time::Duration;

use queue_runtime::{Client, Deadline, JobState, Runtime, TaskContext, TaskError, task};
use tokio::time::Instant;

/// A report whose query would take 3 s; its attempts get 500 ms.
#[task(
    queue = "deadlines",
    deadline = "500ms",
    retries = 1,
    backoff = "constant(100ms)",
    name = "demo.build_report"
)]
async fn build_report(ctx: TaskContext) -> Result<(), TaskError> {
    let start = Instant::now();
    let result = sqlx::query("SELECT SLEEP(3)").fetch_one(ctx.db()).await;
    match result {
        Ok(_) => println!("  build_report: the query finished (unexpected)"),
        Err(e) => {
            println!(
                "  build_report attempt {}: query ended after {:?} by the server: {e}",
                ctx.attempt(),
                start.elapsed()
            );
            return Err(e.into());
        }
    }
    Ok(())
}

/// A slow upstream: answers after 2 s.
async fn fake_http_get(url: &str) -> String {
    tokio::time::sleep(Duration::from_secs(2)).await;
    format!("rates from {url}")
}

/// Fetches exchange rates from a slow upstream; its attempts get 300 ms.
#[task(
    queue = "deadlines",
    deadline = "300ms",
    retries = 1,
    backoff = "constant(100ms)",
    name = "demo.fetch_rates"
)]
async fn fetch_rates(ctx: TaskContext) -> Result<(), TaskError> {
    let start = Instant::now();
    let deadline = Deadline::current().expect("the task has a deadline");
    println!(
        "  fetch_rates attempt {}: {:?} left, calling upstream",
        ctx.attempt(),
        deadline.time_left()
    );
    let body = deadline
        .run(fake_http_get("https://rates.example/latest"))
        .await
        .inspect_err(|e| println!("  fetch_rates: gave up after {:?}: {e}", start.elapsed()))?;
    println!("  fetch_rates: {body}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .init();
    let url = queue_examples::demo_database("queue_deadlines_demo").await?;
    let client = Client::connect(&url).await?;
    client.migrate().await?;
    println!("server flavour: {:?}", client.flavor());

    let report = build_report::enqueue(&client, ()).await?;
    let rates = fetch_rates::enqueue(&client, ()).await?;
    let runtime = Runtime::builder(client.clone())
        .queues(["deadlines"])
        .start()
        .await?;

    // Wait (at most 10 s) until both jobs are dead.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut dead = 0;
        for id in [report, rates] {
            if client
                .job(id)
                .await?
                .is_some_and(|j| j.state == JobState::Dead)
            {
                dead += 1;
            }
        }
        if dead == 2 || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    runtime.shutdown(Duration::from_secs(5)).await?;

    println!("dead jobs:");
    for job in client.dead_jobs(10).await? {
        println!(
            "  {} after {} attempts: {}",
            job.task, job.attempts, job.last_error
        );
    }
    let running: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%SLEEP(3)%' AND ID <> CONNECTION_ID()",
    )
    .fetch_one(client.pool())
    .await?;
    println!("SLEEP(3) statements still running on the server: {running}");
    Ok(())
}
