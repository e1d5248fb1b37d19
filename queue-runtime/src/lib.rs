//! An embedded, MySQL/MariaDB-backed job runtime.
//!
//! Mark an async function with [`#[task]`](task); enqueue typed payloads
//! through the module the attribute adds beside it; start a [`Runtime`] that
//! claims jobs from the database and runs them, with priorities, retries and
//! backoff, delays, cron schedules and deadlines.
//!
//! ```rust,no_run
//! use queue_runtime::{task, Client, Runtime, TaskContext, TaskError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Email { to: String, subject: String }
//!
//! #[task(priority = 1, retries = 3, queue = "mail")]
//! async fn send_email(ctx: TaskContext, email: Email) -> Result<(), TaskError> {
//!     println!("attempt {} to {}", ctx.attempt(), email.to);
//!     Ok(())
//! }
//!
//! # fn main() {}
//! # async fn demo() -> Result<(), queue_runtime::Error> {
//! let client = Client::connect("mysql://queue:queue@127.0.0.1:3366/queue").await?;
//! client.migrate().await?;
//! send_email::enqueue(&client, Email { to: "a@example.com".into(), subject: "hi".into() }).await?;
//! let runtime = Runtime::builder(client.clone()).concurrency(10).start().await?;
//! // ...
//! runtime.shutdown(std::time::Duration::from_secs(30)).await?;
//! # Ok(()) }
//! ```
//!
//! `#[task]` goes on functions at module level (not inside a function
//! body): the module it generates refers to the function and its payload
//! type through `super::`.
//!
//! See `docs/architecture.md` for the schema and the claim path.

mod admin;
mod client;
pub mod clock;
mod coalesce;
mod connect;
mod context;
mod db;
mod enqueue;
mod error;
pub mod flavor;
mod metrics;
mod operator;
mod registry;
mod runtime;
mod settings;
mod store;
mod task_ref;
mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
mod wakeup;
#[cfg(feature = "web")]
pub mod web;

pub use admin::{
    AttemptError, DeadJob, GaleraStatus, JobInfo, LimitKind, LimitStatus, LowerBounds, QueueCounts,
    RecurringTask, Stats, Waiting,
};
pub use client::Client;
pub use clock::{Clock, ManualClock, SystemClock};
pub use connect::ClientOptions;
pub use context::TaskContext;
pub use db::{Db, DbTransaction};
pub use enqueue::EnqueueBuilder;
pub use error::{Error, Result};
pub use operator::{
    DEFAULT_PAGE, JobFilter, JobPage, JobSummary, MAX_PAGE, MinuteCounts, RUNTIME_LIVE,
    RuntimeInfo, THROUGHPUT_KEPT,
};
pub use queue_core::{
    Backoff, CatchUp, Deadline, DeadlineExceeded, JobId, JobState, Priority, Schedule, TaskError,
    TaskErrorKind, TaskOptions,
};
pub use queue_macros::task;
pub use runtime::{Runtime, RuntimeBuilder};
pub use task_ref::TaskRef;

/// The README's code, compiled as doc tests so that it cannot drift (its
/// testing section needs the `testing` feature, on in `scripts/test`).
#[cfg(all(doctest, feature = "testing"))]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// The guide's code, compiled as doc tests so that it cannot drift.
#[cfg(all(doctest, feature = "testing"))]
#[doc = include_str!("../../docs/guide.md")]
struct GuideDoctests;

/// The dashboard guide's code, compiled as doc tests so that it cannot drift.
#[cfg(all(doctest, feature = "web"))]
#[doc = include_str!("../../docs/dashboard.md")]
struct DashboardDoctests;

/// Support for the code `#[task]` generates (and the guarded transaction
/// SQL on Galera, for `galera-batch-stress`). Not public API.
#[doc(hidden)]
pub mod __private {
    /// The guarded transaction's statements on a Galera node.
    pub mod galera {
        pub use crate::store::galera::{GUARDED_BEGIN_RC, GUARDED_COMMIT, GUARDED_ROLLBACK};
    }
    pub use crate::registry::{Handler, HandlerFuture, TaskRegistration};
    pub use inventory;
    pub use queue_core::{Backoff, CatchUp, Priority, TaskError, TaskOptions};
    pub use std::time::Duration;

    /// Decodes a JSON payload; a failure is a permanent decode error.
    pub fn decode<T: serde::de::DeserializeOwned>(payload: &str) -> Result<T, TaskError> {
        serde_json::from_str(payload).map_err(TaskError::decode)
    }

    /// Converts a handler's result.
    pub fn into_task_result<E: Into<TaskError>>(r: Result<(), E>) -> Result<(), TaskError> {
        r.map_err(Into::into)
    }

    /// A priority known valid at compile time.
    pub const fn priority(v: u8) -> Priority {
        match Priority::new(v) {
            Ok(p) => p,
            Err(_) => panic!("priority out of range"),
        }
    }

    /// Checks at compile time that a payload type can cross tasks.
    pub const fn assert_payload<T: Send + 'static>() {}

    pub use crate::enqueue::{Encoder, Keyer, LimitKeys};
    pub use queue_core::Rate;

    /// How the jobs of a task encode and decode their payload. `#[task]`
    /// takes the one of its payload type in one place,
    /// `const CODEC: &dyn Codec<Payload> = codec::<Payload>()`, so a type
    /// that lacks the serde impls is reported there, once per missing impl,
    /// and not by every generated function that handles the payload.
    pub trait Codec<T>: Sync {
        /// The payload's encoder.
        fn encoder(&self) -> Encoder<T>;
        /// Decodes a stored payload; a failure is a permanent decode error.
        fn decode(&self, payload: &str) -> Result<T, TaskError>;
    }

    /// The JSON codec of a serde type.
    pub struct Json<T>(std::marker::PhantomData<fn() -> T>);

    impl<T> Json<T> {
        /// The codec.
        pub const NEW: Self = Self(std::marker::PhantomData);
    }

    /// What a payload type needs: serde's `Serialize` and `Deserialize`.
    /// Named so that a type without them gets one error that says so, at
    /// the payload type, rather than notes about this module's codec.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task's payload: it must implement serde's `Serialize` and `Deserialize`",
        label = "not `Serialize + Deserialize`",
        note = "add `#[derive(serde::Serialize, serde::Deserialize)]` to `{Self}` (serde with its `derive` feature)"
    )]
    pub trait Payload: serde::Serialize + serde::de::DeserializeOwned {}

    impl<T: serde::Serialize + serde::de::DeserializeOwned> Payload for T {}

    /// The JSON codec of a payload type, as `#[task]` takes it.
    pub const fn codec<T: Payload + 'static>() -> &'static dyn Codec<T> {
        &Json(std::marker::PhantomData)
    }

    impl<T: Payload> Codec<T> for Json<T> {
        fn encoder(&self) -> Encoder<T> {
            crate::enqueue::encode_json::<T>
        }

        fn decode(&self, payload: &str) -> Result<T, TaskError> {
            decode(payload)
        }
    }

    pub use sqlx::MySqlConnection;

    /// The generated `enqueue_many_in`.
    ///
    /// # Errors
    /// As [`crate::Client::enqueue_many_with`]; the caller's transaction is
    /// left as it is.
    pub async fn enqueue_many_in<T, I: IntoIterator<Item = T>>(
        client: &crate::Client,
        conn: &mut sqlx::MySqlConnection,
        options: TaskOptions,
        payloads: I,
        encode: Encoder<T>,
        keyer: Option<Keyer<T>>,
    ) -> crate::Result<Vec<crate::JobId>> {
        client
            .enqueue_many_encoded(Some(conn), options, payloads, encode, keyer)
            .await
    }

    /// The generated `enqueue_many`.
    ///
    /// # Errors
    /// As [`crate::Client::enqueue_many_with`].
    pub async fn enqueue_many<T, I: IntoIterator<Item = T>>(
        client: &crate::Client,
        options: TaskOptions,
        payloads: I,
        encode: Encoder<T>,
        keyer: Option<Keyer<T>>,
    ) -> crate::Result<Vec<crate::JobId>> {
        client
            .enqueue_many_encoded(None, options, payloads, encode, keyer)
            .await
    }

    /// The claim statement for given cursors, for plan tests.
    pub fn claim_sql(
        queue: &str,
        last: &[u64; 5],
        stragglers: &[(u8, u64)],
        limit: usize,
    ) -> String {
        crate::store::claim_sql(queue, last, stragglers, limit)
    }

    /// The statement that picks the first blocked jobs of keys (each with
    /// the slots it freed), for plan tests.
    pub fn pick_blocked_sql(freed: &[(&[u8], u32)]) -> String {
        crate::store::limits::pick_blocked_sql(
            &freed.iter().map(|(k, n)| (k.to_vec(), *n)).collect(),
        )
    }

    /// The same as [`pick_blocked_sql`] for a release that does not hold the
    /// semaphores' lock, reading each key in `after` past its cursor
    /// `(priority, job id)`, for plan tests.
    pub fn pick_blocked_fast_sql(freed: &[(&[u8], u32)], after: &[(&[u8], u8, u64)]) -> String {
        crate::store::limits::pick_blocked_after_sql(
            &freed.iter().map(|(k, n)| (k.to_vec(), *n)).collect(),
            &after
                .iter()
                .map(|(k, p, id)| (k.to_vec(), (*p, *id)))
                .collect(),
            true,
        )
    }

    /// The statements of a job listing (`Client::jobs`), for plan tests:
    /// the window scan over ids `[low, high)`, and the read of the
    /// filter's state's own index below `high` (if it has one).
    pub fn list_jobs_sql(
        filter: &crate::JobFilter,
        low: u64,
        high: u64,
    ) -> (String, Option<String>) {
        let f = crate::store::operator::ListFilter {
            state: filter.state,
            queue: filter.queue.clone(),
            task: filter.task.clone(),
            before: Some(high),
            limit: 50,
        };
        (
            crate::store::operator::list_window_sql(&f, low, high, 50),
            filter
                .state
                .and_then(|s| crate::store::operator::list_index_sql(s, high)),
        )
    }

    /// Checks at compile time that a handler's error converts into a `TaskError`.
    pub fn assert_handler_result<E: Into<TaskError>>(_: &Result<(), E>) {}
}
