//! Runs one handler directly, with a test context, without the queue.

use std::future::{Future, IntoFuture};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use queue_core::{Deadline, JobId, TaskError};

use crate::db::{Db, Pinned};
use crate::registry::Registry;
use crate::{Client, Error, Result, TaskContext, TaskRef};

/// How long past its deadline a performed handler may run before it is
/// stopped, as in the runtime.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// Runs `task`'s handler once on `payload`, in this test, with a test
/// [`TaskContext`]: no job is enqueued or claimed. The payload goes through
/// the task's JSON encoding and decoding, as a job's would.
///
/// `ctx.db()` runs every statement inside one transaction that the test
/// holds: read the handler's writes through [`Performed::db`] (they are
/// not committed), then let them go ([`Performed::rollback`], or drop) or
/// keep them ([`Performed::commit`]). A transaction the handler begins with
/// `ctx.db().begin()` is a savepoint in it.
///
/// Set the attempt, the attempts allowed and the deadline to test how the
/// handler behaves on its last attempt or when its time runs out:
///
/// ```rust,no_run
/// use queue_runtime::{task, testing, TaskContext, TaskError};
/// use std::time::Duration;
///
/// #[task(retries = 4)]
/// async fn record_visit(ctx: TaskContext, page: String) -> Result<(), TaskError> {
///     sqlx::query("INSERT INTO visits (page, attempt) VALUES (?, ?)")
///         .bind(&page)
///         .bind(ctx.attempt())
///         .execute(ctx.db())
///         .await?;
///     Ok(())
/// }
///
/// # async fn demo(client: &queue_runtime::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let performed = testing::perform(client, record_visit::TASK, "/home".to_owned())
///     .attempt(5)
///     .deadline(Duration::from_secs(2))
///     .await?;
/// performed.result().as_ref().map_err(|e| e.to_string())?;
/// let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM visits WHERE attempt = 5")
///     .fetch_one(performed.db())
///     .await?;
/// assert_eq!(n, 1);
/// performed.rollback().await?; // nothing of it stays
/// # Ok(()) }
/// # fn main() {}
/// ```
pub fn perform<P: 'static>(client: &Client, task: TaskRef<P>, payload: P) -> Perform<'_, P> {
    Perform {
        client,
        task,
        payload,
        attempt: 1,
        max_attempts: None,
        deadline: None,
        job_id: JobId(0),
    }
}

/// The settings of a [`perform`]; await it to run the handler.
#[derive(Debug)]
#[must_use = "the handler runs only when awaited"]
pub struct Perform<'a, P: 'static> {
    client: &'a Client,
    task: TaskRef<P>,
    payload: P,
    attempt: u32,
    max_attempts: Option<u32>,
    deadline: Option<Duration>,
    job_id: JobId,
}

impl<'a, P: Send + 'static> Perform<'a, P> {
    /// What `ctx.attempt()` returns (default 1). From 1 to the attempts
    /// allowed; checked when run.
    pub fn attempt(mut self, n: u32) -> Self {
        self.attempt = n;
        self
    }

    /// What `ctx.max_attempts()` returns (default: the task's retries + 1).
    /// At least 1; checked when run.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// The attempt's deadline, from when it starts (default: the task's
    /// `deadline`, if any). The handler is stopped 250 ms after it, with
    /// "deadline exceeded", as in the runtime.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// What `ctx.job_id()` returns (default 0, which no real job has).
    pub fn job_id(mut self, id: JobId) -> Self {
        self.job_id = id;
        self
    }

    /// Runs the handler.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an attempt of 0 or above the attempts
    /// allowed; [`Error::UnknownTask`] if the task is not registered;
    /// [`Error::Encode`] if the payload cannot be encoded; the database's
    /// error if the transaction cannot begin. The handler's own failure is
    /// not an error here: it is [`Performed::result`].
    pub async fn run(self) -> Result<Performed> {
        let name = self.task.name();
        let max_attempts = self
            .max_attempts
            .unwrap_or_else(|| self.task.options().max_attempts());
        if max_attempts == 0 || self.attempt == 0 || self.attempt > max_attempts {
            return Err(Error::InvalidArgument(format!(
                "perform `{name}`: attempt {} of {max_attempts}; attempts count from 1 up to \
                 the attempts allowed (at least 1)",
                self.attempt
            )));
        }
        let registry = Registry::collect()?;
        let reg = registry
            .get(name)
            .ok_or_else(|| Error::UnknownTask(name.to_owned()))?;
        let json = self.task.encode(&self.payload)?;
        let tx: Pinned = Arc::new(tokio::sync::Mutex::new(self.client.pool().begin().await?));
        let budget = self.deadline.or(reg.options.deadline);
        let deadline = budget.map(Deadline::after);
        let ctx = TaskContext::pinned(
            self.job_id,
            self.attempt,
            max_attempts,
            name.to_owned(),
            reg.options.queue.to_owned(),
            deadline,
            self.client.clone(),
            tx.clone(),
        );
        let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| (reg.handler)(ctx, &json))) {
            Ok(fut) => fut,
            Err(p) => Box::pin(std::future::ready(Err(TaskError::panic(panic_text(p))))),
        };
        let fut = AssertUnwindSafe(Deadline::scope(deadline, fut)).catch_unwind();
        let stop_at = deadline.map(|d| d.expires_at() + DEADLINE_GRACE);
        let result = tokio::select! {
            r = fut => r.unwrap_or_else(|p| Err(TaskError::panic(panic_text(p)))),
            _ = async {
                match stop_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => Err(TaskError::deadline_exceeded()),
        };
        Ok(Performed {
            result,
            client: self.client.clone(),
            tx,
        })
    }
}

impl<'a, P: Send + 'static> IntoFuture for Perform<'a, P> {
    type Output = Result<Performed>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Performed>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// What a [`perform`] did: the handler's result, and the transaction its
/// `ctx.db()` wrote in, still open.
pub struct Performed {
    result: std::result::Result<(), TaskError>,
    client: Client,
    tx: Pinned,
}

impl std::fmt::Debug for Performed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Performed")
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

impl Performed {
    /// What the handler returned (a panic is an error of kind `Panic`, a
    /// deadline passed one of kind `Deadline`, as in the runtime).
    pub fn result(&self) -> &std::result::Result<(), TaskError> {
        &self.result
    }

    /// Whether the handler returned `Ok`.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }

    /// The handler's error, if it failed.
    pub fn error(&self) -> Option<&TaskError> {
        self.result.as_ref().err()
    }

    /// A handle on the transaction the handler wrote in, to read its
    /// (uncommitted) writes: `sqlx::query("…").fetch_one(performed.db())`.
    pub fn db(&self) -> Db<'_> {
        Db::new(&self.client, None).pinned_to(Some(&self.tx))
    }

    /// Commits the handler's writes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the handler left a clone of its
    /// context running (a spawned task), which still holds the transaction;
    /// the server's error.
    pub async fn commit(self) -> Result<()> {
        self.into_tx()?.commit().await?;
        Ok(())
    }

    /// Rolls the handler's writes back (dropping `Performed` does too).
    ///
    /// # Errors
    /// As [`Performed::commit`].
    pub async fn rollback(self) -> Result<()> {
        self.into_tx()?.rollback().await?;
        Ok(())
    }

    fn into_tx(self) -> Result<sqlx::Transaction<'static, sqlx::MySql>> {
        Arc::try_unwrap(self.tx)
            .map(tokio::sync::Mutex::into_inner)
            .map_err(|_| {
                Error::InvalidArgument(
                    "the performed handler's context is still alive (a task it spawned holds \
                     it), and with it the transaction"
                        .to_owned(),
                )
            })
    }
}
