//! Seed 000 made real: an email sender whose outgoing queue lives in the
//! database.
//!
//! It enqueues 1,000 outgoing emails, sends 10 at a time through a fake SMTP
//! call that fails some recipients (a few always, others now and then),
//! retries failures with backoff until their attempts are spent, shows its
//! progress live, and ends with a summary read from `client.stats()`.
//!
//! Run it with `scripts/demo` (starts a private MariaDB if `DATABASE_URL` is
//! unset), or `cargo run --release --example email_sender -- [COUNT]`.
//! It works in its own database, `queue_demo`, which it recreates each run.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use queue_runtime::{Client, Runtime, TaskContext, TaskError, task};
use serde::{Deserialize, Serialize};

/// An outgoing email.
#[derive(Debug, Serialize, Deserialize)]
struct Email {
    id: u32,
    to: String,
    subject: String,
}

/// What the fake SMTP server answers when it refuses a message.
#[derive(Debug, thiserror::Error)]
enum SmtpError {
    #[error("550 mailbox unavailable: {0}")]
    MailboxUnavailable(String),
    #[error("421 service not available, try again later")]
    TryLater,
}

static SENT: AtomicU64 = AtomicU64::new(0);
static FAILED_ATTEMPTS: AtomicU64 = AtomicU64::new(0);
/// Sends in progress now, and the most there ever were at once.
static SENDING: AtomicU64 = AtomicU64::new(0);
static MOST_AT_ONCE: AtomicU64 = AtomicU64::new(0);

/// Sends one email; a failure is retried up to 3 times with exponential
/// backoff (200 ms, 400 ms, 800 ms, plus jitter).
#[task(
    queue = "outbox",
    retries = 3,
    backoff = "exponential(200ms, 2s)",
    name = "demo.send_email"
)]
async fn send_email(ctx: TaskContext, email: Email) -> Result<(), TaskError> {
    let now = SENDING.fetch_add(1, Ordering::SeqCst) + 1;
    MOST_AT_ONCE.fetch_max(now, Ordering::SeqCst);
    let result = fake_smtp(&email).await;
    SENDING.fetch_sub(1, Ordering::SeqCst);
    match result {
        Ok(()) => {
            SENT.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            FAILED_ATTEMPTS.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(attempt = ctx.attempt(), to = %email.to, error = %e, "send failed");
            Err(e.into())
        }
    }
}

/// A fake SMTP call: 5–25 ms; recipients whose id is a multiple of 37 never
/// accept mail; every other attempt fails with probability 15%.
async fn fake_smtp(email: &Email) -> Result<(), SmtpError> {
    tokio::time::sleep(Duration::from_millis(fastrand::u64(5..25))).await;
    if email.id.is_multiple_of(37) {
        return Err(SmtpError::MailboxUnavailable(email.to.clone()));
    }
    if fastrand::u8(0..100) < 15 {
        return Err(SmtpError::TryLater);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let count: u32 = std::env::args().nth(1).map_or(Ok(1000), |a| a.parse())?;

    let url = queue_examples::demo_database("queue_demo").await?;
    let client = Client::connect(&url).await?;
    client.migrate().await?;

    let emails = (1..=count).map(|id| Email {
        id,
        to: format!("user{id}@example.com"),
        subject: format!("Your weekly digest #{id}"),
    });
    let started = Instant::now();
    let ids = send_email::enqueue_many(&client, emails).await?;
    println!(
        "enqueued {} emails in {:.0?} (one multi-row INSERT per 2,000); sending 10 at a time",
        ids.len(),
        started.elapsed()
    );

    let runtime = Runtime::builder(client.clone())
        .concurrency(10)
        .queues(["outbox"])
        .start()
        .await?;

    println!(
        "  sent: accepted by the fake SMTP server · sending: in an SMTP call now · \
         leased: claimed by the runtime, sending or prefetched waiting for one of the 10 slots · \
         retrying: failed, waiting for its backoff · dead: out of attempts (or never deliverable)"
    );
    let bar = if std::io::stdout().is_terminal() {
        ProgressBar::new(u64::from(count))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} {msg}")?
            .progress_chars("=> "),
    );
    let mut last_line = Instant::now();
    loop {
        let stats = client.stats().await?;
        let sent = SENT.load(Ordering::Relaxed);
        let t = stats.total;
        // `running` counts leased jobs: the ones sending now and the ones
        // claimed ahead (prefetched) waiting for one of the 10 slots.
        let msg = format!(
            "sent {sent} · sending {} · leased {} · retrying {} · dead {}",
            SENDING.load(Ordering::Relaxed),
            t.running,
            t.scheduled,
            t.dead
        );
        // Position and message in one update, drawn together: set one at
        // a time, the rate-limited draw showed a position one refresh
        // ahead of the "sent" count beside it.
        bar.update(|state| state.set_pos(sent + t.dead));
        bar.set_message(msg.clone());
        bar.force_draw();
        if bar.is_hidden() && last_line.elapsed() >= Duration::from_secs(1) {
            println!("{:>5.1}s  {msg}", started.elapsed().as_secs_f64());
            last_line = Instant::now();
        }
        if t.ready + t.scheduled + t.running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish();
    runtime.shutdown(Duration::from_secs(10)).await?;

    let stats = client.stats().await?;
    let elapsed = started.elapsed();
    let sent = SENT.load(Ordering::Relaxed);
    println!();
    println!("summary (from client.stats())");
    println!("  emails enqueued      {count}");
    println!("  sent                 {sent}");
    println!(
        "  failed attempts      {}",
        FAILED_ATTEMPTS.load(Ordering::Relaxed)
    );
    println!("  dead (out of tries)  {}", stats.total.dead);
    println!(
        "  most sent at once    {} (concurrency 10)",
        MOST_AT_ONCE.load(Ordering::SeqCst)
    );
    println!(
        "  still queued         {}",
        stats.total.ready + stats.total.scheduled + stats.total.running
    );
    println!(
        "  elapsed              {:.2?} ({:.0} emails/s)",
        elapsed,
        f64::from(count) / elapsed.as_secs_f64()
    );
    if let Some((p50, p99)) = stats.claim_latency {
        println!("  claim latency        p50 {p50:.2?}, p99 {p99:.2?}");
    }
    let dead = client.dead_jobs(5).await?;
    if !dead.is_empty() {
        println!();
        println!("newest dead jobs (client.dead_jobs(5)):");
        for d in dead {
            println!(
                "  job {:>5}  attempts {}  {}",
                d.id, d.attempts, d.last_error
            );
        }
    }
    assert_eq!(
        sent + stats.total.dead,
        u64::from(count),
        "every email is sent or dead"
    );
    Ok(())
}
