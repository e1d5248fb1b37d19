//! The `#[task]` attribute of `queue-runtime`.
//!
//! Use it through the facade, `queue_runtime::task`; the code it generates
//! names `::queue_runtime` and does not work without it.
//!
//! ```ignore
//! use queue_runtime::{task, TaskContext, TaskError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Email { to: String, subject: String }
//!
//! #[task(priority = 1, retries = 3, deadline = "30s", queue = "mail", name = "mail.send")]
//! async fn send_email(ctx: TaskContext, email: Email) -> Result<(), TaskError> {
//!     Ok(())
//! }
//!
//! #[task(cron = "0 */5 * * * *", tz = "Europe/Berlin", catch_up = "skip")]
//! async fn purge_sessions(ctx: TaskContext) -> Result<(), TaskError> {
//!     Ok(())
//! }
//!
//! // The function stays callable; the module beside it enqueues jobs:
//! send_email::enqueue(&client, Email { to: "a@example.com".into(), subject: "hi".into() }).await?;
//! send_email::with(email).priority(0).delay(Duration::from_secs(60)).enqueue(&client).await?;
//! purge_sessions::enqueue(&client, ()).await?;
//! ```
//!
//! See [`task`] for the arguments and what is generated.

mod args;
mod expand;
mod model;

use proc_macro::TokenStream;

/// Declares a task: an `async fn` that runs a job.
///
/// ```ignore
/// #[task(priority = 1, retries = 3, deadline = "30s", queue = "mail")]
/// async fn send_email(ctx: TaskContext, email: Email) -> Result<(), TaskError> {
///     Ok(())
/// }
/// ```
///
/// # The function
///
/// It must be a non-generic `async fn`. Its parameters are an optional
/// `TaskContext`, which must come first, and at most one payload, an owned
/// type that is `Serialize + DeserializeOwned + Send + 'static`: a task with
/// several values takes a struct or a tuple. It returns `Result<(), E>` for
/// any `E: Into<TaskError>`.
///
/// The function is kept exactly as written, so it can still be called
/// directly (`send_email(ctx, email).await`), for instance in unit tests.
///
/// # Arguments
///
/// All are optional, and all are checked at compile time with the same
/// parsers the runtime uses; each mistake is reported at its token.
///
/// | argument | value | default |
/// |----------|-------|---------|
/// | `priority` | integer `0` (highest) to `4` (lowest) | `2` |
/// | `retries` | retries after the first attempt, so at most N+1 attempts | `3` |
/// | `deadline` | wall time one attempt may take: `"250ms"`, `"30s"`, `"5m"`, `"1h"` | none |
/// | `queue` | the queue its jobs go to | `"default"` |
/// | `backoff` | `"constant(100ms)"`, `"linear(10s)"` or `"exponential(1s, 10m)"` | `"exponential(1s, 1h)"` |
/// | `cron` | a cron expression, seconds first (5 fields read as minute first); only on a task without payload | not periodic |
/// | `tz` | the IANA zone `cron` is read in, such as `"Europe/Berlin"`; needs `cron` | `"UTC"` |
/// | `catch_up` | `"latest"` (fire the latest missed tick once) or `"skip"`; needs `cron` | `"latest"` |
/// | `name` | the name stored with each job | the module path |
///
/// # The name
///
/// Without `name = "…"`, a task is named after its module path and function
/// name, as `module_path!()` spells it: `my_app::mail::send_email`. Moving
/// or renaming the function therefore renames the task, and jobs already
/// stored under the old name no longer find it (they end dead as unknown).
/// Give anything long-lived an explicit, stable `name = "…"`.
///
/// # What is generated
///
/// Beside the function, a module of the same name and visibility (functions
/// and modules live in different namespaces):
///
/// ```ignore
/// pub mod send_email {
///     pub const NAME: &str = "...";
///     pub const OPTIONS: TaskOptions = TaskOptions { /* ... */ };
///     pub type Payload = Email; // `()` for a task without payload
///     pub fn with(payload: Payload) -> EnqueueBuilder<Payload>;
///     pub async fn enqueue(client: &Client, payload: Payload) -> Result<JobId, Error>;
///     pub async fn enqueue_many<I: IntoIterator<Item = Payload>>(client: &Client, payloads: I)
///         -> Result<Vec<JobId>, Error>;
///     // The same inside the caller's transaction (pass `&mut tx`).
///     pub async fn enqueue_many_in<I: IntoIterator<Item = Payload>>(
///         client: &Client, conn: &mut MySqlConnection, payloads: I,
///     ) -> Result<Vec<JobId>, Error>;
/// }
/// ```
///
/// and the task's registration, which the runtime collects at start-up:
/// there is no list of tasks to keep by hand. Inside the module, the payload
/// type is reached through `use super::*`, so it means what it means beside
/// the function.
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::task(args.into(), item.into()).into()
}
