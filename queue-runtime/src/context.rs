//! What a task sees of its job while it runs.

use std::sync::Arc;

use queue_core::{Deadline, JobId};

use crate::client::Client;
use crate::db::Db;

/// The job an attempt runs for, passed as the first argument of a `#[task]`
/// function that asks for it.
#[derive(Clone, Debug)]
pub struct TaskContext {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    job_id: JobId,
    attempt: u32,
    max_attempts: u32,
    task_name: String,
    queue: String,
    deadline: Option<Deadline>,
    client: Client,
    /// The test's transaction that `db()` runs in (`testing::perform`).
    pinned: Option<crate::db::Pinned>,
}

impl TaskContext {
    pub(crate) fn new(
        job_id: JobId,
        attempt: u32,
        max_attempts: u32,
        task_name: String,
        queue: String,
        deadline: Option<Deadline>,
        client: Client,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                job_id,
                attempt,
                max_attempts,
                task_name,
                queue,
                deadline,
                client,
                pinned: None,
            }),
        }
    }

    /// A context whose `db()` runs every statement in `pinned`: what
    /// `testing::perform` gives the handler.
    #[cfg(feature = "testing")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pinned(
        job_id: JobId,
        attempt: u32,
        max_attempts: u32,
        task_name: String,
        queue: String,
        deadline: Option<Deadline>,
        client: Client,
        pinned: crate::db::Pinned,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                job_id,
                attempt,
                max_attempts,
                task_name,
                queue,
                deadline,
                client,
                pinned: Some(pinned),
            }),
        }
    }

    /// The job's id.
    pub fn job_id(&self) -> JobId {
        self.inner.job_id
    }

    /// This attempt's number, from 1. Every start counts, including one whose
    /// process died.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// How many attempts the job may have in all (retries + 1).
    pub fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    /// The task's stored name.
    pub fn task_name(&self) -> &str {
        &self.inner.task_name
    }

    /// The queue the job was claimed from.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }

    /// This attempt's deadline, if the task or the job set one.
    pub fn deadline(&self) -> Option<Deadline> {
        self.inner.deadline
    }

    /// The client of the runtime running this job, to enqueue follow-up jobs.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// A deadline-aware handle on the database, to use as a sqlx executor:
    /// `sqlx::query("…").fetch_one(ctx.db())`.
    ///
    /// A statement issued after the deadline fails at once without reaching
    /// the server; one issued before it is limited on the server to the time
    /// left (lock waits included), so that the server, not a dropped socket,
    /// ends it. [`Db::begin`] starts a transaction limited the same way.
    /// Without a deadline the handle behaves like the pool. See
    /// `docs/deadlines.md`.
    pub fn db(&self) -> Db<'_> {
        Db::new(self.client(), self.deadline()).pinned_to(self.inner.pinned.as_ref())
    }
}

/// Written here rather than in `db/`, so that the database handles do not
/// depend on [`Client`]: they need only its pool and flavour.
impl<'a> Db<'a> {
    /// A handle on `client`'s pool limited by `deadline` (and by
    /// [`Deadline::current`] wherever a statement is issued). Inside a task,
    /// use `ctx.db()`; this is for code that keeps its own deadline.
    pub fn new(client: &'a Client, deadline: Option<Deadline>) -> Db<'a> {
        Db::on_pool(
            client.pool(),
            client.flavor(),
            client.store().galera,
            deadline,
        )
    }
}
