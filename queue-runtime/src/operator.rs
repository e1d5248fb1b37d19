//! The operator's side of the client: paged job listings, live runtimes,
//! per-minute counts, and the repairs `run_now`, `delete_job` and
//! `retry_dead_all`. The SQL is in `store::operator`; docs/operations.md
//! tells how each stays cheap on a big table.

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use queue_core::{JobId, JobState};
use serde::Serialize;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::store::operator::ListFilter;

/// Jobs per page when [`JobFilter::limit`] is 0.
pub const DEFAULT_PAGE: u32 = 50;
/// Jobs per page at most.
pub const MAX_PAGE: u32 = 1000;
/// How recent a runtime's heartbeat must be for [`Client::runtimes`] to
/// list it (runtimes refresh theirs every 10 s).
pub const RUNTIME_LIVE: Duration = Duration::from_secs(60);
/// How far back [`Client::throughput`] reaches at most: the counts are
/// kept a day.
pub const THROUGHPUT_KEPT: Duration = Duration::from_secs(24 * 3600);

/// Which jobs [`Client::jobs`] lists. Every field is optional; the
/// default lists every job, newest first, 50 a page.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this queue (a valid queue name).
    pub queue: Option<String>,
    /// Only jobs of this task (its stored name, 1 to 255 characters).
    pub task: Option<String>,
    /// Only jobs with a smaller id: [`JobPage::next`] of the page before.
    pub after: Option<JobId>,
    /// Jobs per page: 0 means [`DEFAULT_PAGE`]; more than [`MAX_PAGE`] is
    /// cut to it.
    pub limit: u32,
}

/// One page of [`Client::jobs`].
#[derive(Clone, Debug, Serialize)]
pub struct JobPage {
    /// The jobs, newest (highest id) first.
    pub jobs: Vec<JobSummary>,
    /// Where the next page starts: pass it as [`JobFilter::after`]. `None`
    /// when no job below the last one matches. A page may be short (even
    /// empty) with `next` set: one call examines at most 50,000 ids, so a
    /// filter that matches few jobs among many takes several calls.
    pub next: Option<JobId>,
}

/// A job as [`Client::jobs`] lists it: [`JobInfo`](crate::JobInfo)
/// without the payload and the error history.
#[derive(Clone, Debug, Serialize)]
pub struct JobSummary {
    /// The job's id.
    pub id: JobId,
    /// The task's stored name.
    pub task: String,
    /// The queue.
    pub queue: String,
    /// Priority, 0 highest.
    pub priority: u8,
    /// Current state.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The earliest time it may run.
    pub run_at: DateTime<Utc>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When its row last changed.
    pub updated_at: DateTime<Utc>,
    /// The first 500 characters of its last error, if an attempt failed
    /// (`client.job(id)` has all of it).
    pub last_error: Option<String>,
}

/// A live runtime, as [`Client::runtimes`] lists it.
#[derive(Clone, Debug, Serialize)]
pub struct RuntimeInfo {
    /// Its owner id ([`Runtime::owner`](crate::Runtime::owner)), as stored
    /// in the leases of the jobs it runs.
    pub owner: String,
    /// The host name of its machine.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Jobs it runs at once at most.
    pub concurrency: u32,
    /// Jobs it held (running or prefetched) at its last heartbeat.
    pub in_flight: u32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat (every 10 s).
    pub heartbeat_at: DateTime<Utc>,
}

/// Attempts of one minute, cluster-wide ([`Client::throughput`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MinuteCounts {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// Attempts started (claimed by a runtime).
    pub started: u64,
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed and will be retried (a lost lease included).
    pub failed: u64,
    /// Attempts that failed for good: jobs that died.
    pub dead: u64,
}

impl Client {
    /// A page of jobs, newest (highest id) first, filtered by state, queue
    /// and task; [`JobPage::next`] continues it.
    ///
    /// Paged by id (keyset: no `OFFSET`), so each page costs the same at
    /// any depth. A state with an index of its own (scheduled, running,
    /// dead) holding at most 10,000 jobs is read through it and sorted by
    /// id; otherwise the primary key is read backwards in windows of
    /// 5,000 ids, at most 50,000 ids a call (a filter that matches few of
    /// many jobs may return a short page, with `next` set). No statement
    /// sorts the whole table.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a queue name that is not valid or a
    /// task name longer than 255 characters or empty; a database error.
    pub async fn jobs(&self, filter: &JobFilter) -> Result<JobPage> {
        if let Some(queue) = &filter.queue {
            crate::admin::valid_queue(queue)?;
        }
        if let Some(task) = &filter.task
            && (task.is_empty() || task.chars().count() > 255)
        {
            return Err(Error::InvalidArgument(format!(
                "invalid task name `{task}`: expected 1 to 255 characters"
            )));
        }
        let limit = match filter.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let f = ListFilter {
            state: filter.state,
            queue: filter.queue.clone(),
            task: filter.task.clone(),
            before: filter.after.map(|a| a.0),
            limit: limit as usize,
        };
        let (rows, next) = self.store().list_jobs(&f).await?;
        Ok(JobPage {
            jobs: rows,
            next: next.map(JobId),
        })
    }

    /// The live runtimes on the database: those with a heartbeat in the
    /// last [`RUNTIME_LIVE`] by this client's clock, oldest first. A
    /// runtime registers at start, refreshes its row every 10 s and
    /// removes it at a clean shutdown; one that died drops out of this
    /// list within a minute.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub async fn runtimes(&self) -> Result<Vec<RuntimeInfo>> {
        let since = crate::time::clamp(crate::clock::sub(self.now(), RUNTIME_LIVE));
        Ok(self
            .store()
            .runtimes(since)
            .await?
            .into_iter()
            .map(|r| RuntimeInfo {
                owner: r.owner,
                host: r.host,
                pid: r.pid,
                queues: r.queues,
                concurrency: r.concurrency,
                in_flight: r.in_flight,
                started_at: r.started_at,
                heartbeat_at: r.heartbeat_at,
            })
            .collect())
    }

    /// Makes a scheduled job (a delayed job, or a retry waiting for its
    /// backoff) due now. It enters the claim index the way every due job
    /// does: a job with a concurrency limit takes a slot of its key first,
    /// or waits blocked when the key is full; a job deferred by its rate
    /// limit gives up the start it had reserved, and its next claim checks
    /// the rate again. Returns whether it did: `false` if no scheduled job
    /// has this id (it is ready, running, blocked, dead, finished or
    /// unknown).
    ///
    /// # Errors
    /// If the database cannot be written.
    pub async fn run_now(&self, id: JobId) -> Result<bool> {
        let now = crate::time::now(self.now())?;
        let done = self.store().run_now(id, now).await?;
        if done {
            self.wake_ready();
        }
        Ok(done)
    }

    /// Deletes a job that is not running: ready, scheduled, blocked or
    /// dead. Like [`cancel`](Self::cancel) (which leaves dead jobs alone),
    /// a concurrency slot the job held goes to the next blocked job of its
    /// key, and its unique key is free again. Returns whether it deleted
    /// it: `false` for a running job (it runs to its end), a finished or
    /// an unknown one.
    ///
    /// # Errors
    /// If the database cannot be written.
    pub async fn delete_job(&self, id: JobId) -> Result<bool> {
        let now = crate::time::now(self.now())?;
        self.store().cancel(id, now, true).await
    }

    /// Puts every dead job (of `task`, if given: its stored name) back to
    /// run now, attempts reset, as [`retry_dead`](Self::retry_dead) does
    /// one: 500 per transaction, oldest death first. Returns how many.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty task name or one longer
    /// than 255 characters; a database error (the jobs of the
    /// transactions that committed before it stay retried).
    pub async fn retry_dead_all(&self, task: Option<&str>) -> Result<u64> {
        if let Some(task) = task
            && (task.is_empty() || task.chars().count() > 255)
        {
            return Err(Error::InvalidArgument(format!(
                "invalid task name `{task}`: expected 1 to 255 characters"
            )));
        }
        let now = crate::time::now(self.now())?;
        let n = self.store().retry_dead_all(task, now).await?;
        if n > 0 {
            self.wake_ready();
        }
        Ok(n)
    }

    /// Attempts per minute over the last `last` (at most the day that is
    /// kept), cluster-wide, summed over queues and tasks: one entry per
    /// minute, oldest first, the last one the current (partial) minute;
    /// minutes without counts are zeros. `last` under a minute is one
    /// minute.
    ///
    /// Each runtime counts in memory and adds its counts to the database
    /// with the acknowledgements it writes anyway, or within about a
    /// second, so the current minute lags by up to a second; a runtime that
    /// crashes loses its last second of counts.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub async fn throughput(&self, last: Duration) -> Result<Vec<MinuteCounts>> {
        self.throughput_filtered(None, last).await
    }

    /// [`throughput`](Self::throughput) of one queue.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a queue name that is not valid; a
    /// database error.
    pub async fn throughput_of(&self, queue: &str, last: Duration) -> Result<Vec<MinuteCounts>> {
        crate::admin::valid_queue(queue)?;
        self.throughput_filtered(Some(queue), last).await
    }

    async fn throughput_filtered(
        &self,
        queue: Option<&str>,
        last: Duration,
    ) -> Result<Vec<MinuteCounts>> {
        let minutes = last.min(THROUGHPUT_KEPT).as_secs().div_ceil(60).max(1);
        let now = crate::time::clamp(self.now());
        let current = now
            .duration_trunc(chrono::TimeDelta::minutes(1))
            .unwrap_or(now);
        let first = crate::clock::sub(current, Duration::from_secs((minutes - 1) * 60));
        let rows = self.store().throughput(first, queue).await?;
        let mut out = Vec::with_capacity(usize::try_from(minutes).unwrap_or(0));
        let mut rows = rows.into_iter().peekable();
        let mut minute = first;
        while minute <= current {
            let mut entry = MinuteCounts {
                minute,
                started: 0,
                succeeded: 0,
                failed: 0,
                dead: 0,
            };
            while let Some(r) = rows.next_if(|r| r.minute <= minute) {
                if r.minute == minute {
                    entry.started += r.counts.started;
                    entry.succeeded += r.counts.succeeded;
                    entry.failed += r.counts.failed;
                    entry.dead += r.counts.dead;
                }
            }
            out.push(entry);
            minute = crate::clock::add(minute, Duration::from_secs(60));
        }
        Ok(out)
    }
}
