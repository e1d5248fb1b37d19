//! The vocabulary of the queue runtime, free of I/O.
//!
//! This crate holds the types that the runtime (`queue-runtime`), the
//! `#[task]` attribute (`queue-macros`) and user code share:
//!
//! - [`JobId`] and [`JobState`]: a job's identity and where it is in its life;
//! - [`Priority`]: 0 (highest) to 4 (lowest);
//! - [`parse_duration`] / [`format_duration`]: the `30s`, `5m`, `250ms`
//!   spelling of durations used in attributes and configuration;
//! - [`Backoff`]: how long a failed job waits before its next attempt;
//! - [`Schedule`]: a cron expression evaluated in a time zone;
//! - [`Deadline`]: a point in time a task must finish by, carried in a
//!   task-local so that code deep inside a task can see it;
//! - [`TaskError`]: what a task handler returns, `anyhow`-style;
//! - [`TaskOptions`]: what `#[task]` declares about a task.
//!
//! Nothing here touches a database, the network or the file system; the only
//! runtime dependency with behaviour is tokio's timer, used by [`Deadline`].

pub mod backoff;
pub mod deadline;
pub mod duration;
pub mod error;
pub mod job;
pub mod limits;
pub mod options;
pub mod priority;
pub mod schedule;

pub use backoff::{Backoff, BackoffError};
pub use deadline::{Deadline, DeadlineExceeded};
pub use duration::{DurationError, format_duration, parse_duration};
pub use error::{TaskError, TaskErrorKind, error_chain_text};
pub use job::{JobId, JobIdError, JobState, JobStateError};
pub use limits::{Rate, RateError};
pub use options::{
    CatchUp, CatchUpError, QueueNameError, TaskNameError, TaskOptions, validate_queue_name,
    validate_task_name,
};
pub use priority::{Priority, PriorityError};
pub use schedule::{Schedule, ScheduleError, normalize_cron};
