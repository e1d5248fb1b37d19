//! Every argument and every parameter shape of `#[task]`, and the typed API
//! the attribute generates.

use std::time::Duration;

use queue_runtime::{Client, EnqueueBuilder, JobId, TaskContext, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Email {
    to: String,
    subject: String,
}

#[derive(Serialize, Deserialize)]
struct Payload(u32);

#[derive(Debug)]
struct MyError;

impl std::fmt::Display for MyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("my error")
    }
}

impl std::error::Error for MyError {}

/// The line of `send_email`'s name below.
const SEND_EMAIL_LINE: u32 = 41;

/// Context and payload, every option but the cron ones.
#[task(
    priority = 1,
    retries = 5,
    deadline = "30s",
    queue = "mail",
    backoff = "exponential(1s, 10m)",
    name = "mail.send"
)]
pub async fn send_email(ctx: TaskContext, email: Email) -> Result<(), TaskError> {
    let _ = (ctx.attempt(), email.to, email.subject);
    Ok(())
}

/// Payload only, with another error type.
#[task(backoff = "linear(10s)", retries = 0)]
async fn payload_only(n: u64) -> Result<(), MyError> {
    if n == 0 { Err(MyError) } else { Ok(()) }
}

/// Context only.
#[task(priority = 4, backoff = "constant(100ms)")]
async fn ctx_only(_ctx: TaskContext) -> Result<(), TaskError> {
    Ok(())
}

/// Neither.
#[task]
async fn nothing() -> Result<(), TaskError> {
    Ok(())
}

/// A periodic task.
#[task(cron = "0 */5 * * * *", tz = "Europe/Berlin", catch_up = "skip")]
async fn purge_sessions(_ctx: TaskContext) -> Result<(), TaskError> {
    Ok(())
}

/// A five-field cron expression, without a time zone.
#[task(
    cron = "*/5 * * * *",
    catch_up = "latest",
    overlap = false,
    name = "reports.hourly"
)]
async fn hourly() -> Result<(), TaskError> {
    Ok(())
}

/// A payload type named like the generated alias, and a path through `self`.
#[task]
async fn shadowed(_p: self::Payload) -> Result<(), TaskError> {
    Ok(())
}

mod nested {
    use queue_runtime::{TaskError, task};

    /// A payload type reached through `super`.
    #[task(queue = "nested")]
    pub(crate) async fn through_super(email: super::Email) -> Result<(), TaskError> {
        let _ = email;
        Ok(())
    }
}

#[allow(dead_code)]
async fn use_the_api(client: &Client) -> Result<(), queue_runtime::Error> {
    let email = || Email {
        to: "a@example.com".into(),
        subject: "hi".into(),
    };
    let _: JobId = send_email::enqueue(client, email()).await?;
    let builder: EnqueueBuilder<Email> = send_email::with(email());
    let _: JobId = builder
        .priority(0)
        .delay(Duration::from_secs(60))
        .deadline(Duration::from_secs(5))
        .enqueue(client)
        .await?;
    let _: Vec<JobId> = send_email::enqueue_many(client, vec![email(), email()]).await?;
    payload_only::enqueue(client, 7).await?;
    ctx_only::enqueue(client, ()).await?;
    nothing::with(()).priority(3).enqueue(client).await?;
    purge_sessions::enqueue(client, ()).await?;
    hourly::enqueue_many(client, [(), ()]).await?;
    shadowed::enqueue(client, Payload(1)).await?;
    nested::through_super::enqueue(client, email()).await?;
    Ok(())
}

#[allow(dead_code)]
async fn call_directly() -> Result<(), MyError> {
    // The functions stay plain functions.
    payload_only(1).await?;
    let _ = nothing().await;
    let _ = hourly().await;
    Ok(())
}

const _: () = {
    assert!(send_email::OPTIONS.priority.get() == 1);
    assert!(send_email::OPTIONS.retries == 5);
    assert!(payload_only::OPTIONS.retries == 0);
};

fn main() {
    assert_eq!(send_email::NAME, "mail.send");
    assert_eq!(send_email::OPTIONS.queue, "mail");
    assert_eq!(send_email::OPTIONS.deadline, Some(Duration::from_secs(30)));
    assert_eq!(nothing::NAME, concat!(module_path!(), "::nothing"));
    assert_eq!(
        nested::through_super::NAME,
        concat!(module_path!(), "::nested::through_super")
    );
    assert_eq!(nothing::OPTIONS.queue, "default");
    assert_eq!(purge_sessions::OPTIONS.cron, Some("0 */5 * * * *"));
    assert_eq!(purge_sessions::OPTIONS.tz, Some("Europe/Berlin"));
    assert_eq!(
        purge_sessions::OPTIONS.catch_up,
        queue_runtime::CatchUp::Skip
    );
    assert_eq!(hourly::NAME, "reports.hourly");
    assert!(!hourly::OPTIONS.overlap);
    assert!(purge_sessions::OPTIONS.overlap);
    let _: fn(()) -> EnqueueBuilder<()> = nothing::with;

    // The registration points at the function's name (for the "declared
    // twice" error at start-up).
    let registration =
        queue_runtime::__private::inventory::iter::<queue_runtime::__private::TaskRegistration>
            .into_iter()
            .find(|r| r.options.name == "mail.send")
            .expect("`send_email` is registered");
    assert_eq!(registration.line, SEND_EMAIL_LINE);
    assert!(registration.file.ends_with("every-argument-and-shape.rs"));
}

/// Flow-control limits, partitioned by keys taken from the payload (any
/// `Display` value).
#[task(
    concurrency = 2,
    concurrency_key = |e: &Email| e.to.clone(),
    rate = "100/1s",
    rate_key = |e: &Email| e.to.len()
)]
async fn limited(email: Email) -> Result<(), TaskError> {
    let _ = email.subject;
    Ok(())
}

/// A limit without a key; the key may also be given at enqueue.
#[task(concurrency = 5, rate = "1000/1h")]
async fn limited_plain(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

#[allow(dead_code)]
fn limits() {
    assert_eq!(limited::OPTIONS.concurrency, Some(2));
    assert_eq!(
        limited::OPTIONS.rate.map(|r| r.to_string()).as_deref(),
        Some("100/1s")
    );
    assert_eq!(limited_plain::OPTIONS.rate.map(|r| r.per), Some(Duration::from_secs(3600)));
    let _ = limited_plain::with(1).concurrency_key("tenant-7").rate_key("tenant-7");
}
