//! Testing your tasks (cargo feature `testing`, for `[dev-dependencies]`).
//!
//! ```toml
//! [dev-dependencies]
//! queue-runtime = { version = "0.1", features = ["testing"] }
//! ```
//!
//! Everything runs against a real MySQL or MariaDB server, in a database of
//! the test's own:
//!
//! - [`TestDatabase`]: a fresh, migrated database per test from
//!   `DATABASE_URL`, dropped afterwards; [`client_for`] migrates the pool
//!   of a `#[sqlx::test]` instead.
//! - [`enqueued`]: the pending jobs of a task with their typed payloads and
//!   options; [`assert_enqueued`], [`assert_enqueued_once`] and
//!   [`assert_not_enqueued`] fail with a message that shows what *was*
//!   enqueued and which fields differ.
//! - [`drain`]: runs the jobs in the test, one at a time, through the
//!   runtime's own claim, executor, retry policy and outcome writes, until
//!   none is ready, and returns each attempt's [`Outcome`] (succeeded,
//!   failed and scheduled again, dead).
//! - [`perform`]: runs one handler directly with a test [`TaskContext`]
//!   (attempt, deadline, `ctx.db()` inside a transaction the test reads).
//! - [`TestClock`]: a hand-moved clock that fires the cron ticks it passes.
//!
//! Tasks are named by the `TASK` constant that `#[task]` adds to the
//! task's module (`send_welcome::TASK`, a [`TaskRef`]), which
//! types the payloads.
//!
//! ```rust,no_run
//! use queue_runtime::{task, testing, TaskContext, TaskError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Welcome { to: String }
//!
//! #[task(queue = "mail")]
//! async fn send_welcome(ctx: TaskContext, w: Welcome) -> Result<(), TaskError> {
//!     if w.to.is_empty() {
//!         return Err(TaskError::permanent("no address"));
//!     }
//!     Ok(())
//! }
//!
//! #[tokio::test]
//! async fn welcome_is_sent() -> Result<(), Box<dyn std::error::Error>> {
//!     let db = testing::TestDatabase::new().await?;
//!     let client = db.client();
//!     send_welcome::enqueue(client, Welcome { to: "ann@example.com".into() }).await?;
//!
//!     let job = testing::assert_enqueued_once(
//!         client,
//!         send_welcome::TASK,
//!         &Welcome { to: "ann@example.com".into() },
//!     )
//!     .await?;
//!     assert_eq!(job.queue, "mail");
//!
//!     let drained = testing::drain(client).await?;
//!     assert_eq!(drained.succeeded(), 1);
//!     testing::assert_not_enqueued(client, send_welcome::TASK).await?;
//!     Ok(())
//! }
//! # fn main() {}
//! ```
//!
//! [`TaskContext`]: crate::TaskContext
//! [`TaskRef`]: crate::TaskRef

mod clock;
mod database;
mod drain;
mod enqueued;
mod perform;

pub use clock::{CronTick, TestClock};
pub use database::{TEST_DATABASE_PREFIX, TestDatabase, client_for};
pub use drain::{Attempt, Drain, Drained, Outcome, drain};
pub use enqueued::{
    AssertionFailed, Enqueued, assert_enqueued, assert_enqueued_once, assert_not_enqueued, enqueued,
};
pub use perform::{Perform, Performed, perform};
