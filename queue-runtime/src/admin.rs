//! The client's admin API: counts, dead jobs and their repair, one job,
//! cancel, recurring tasks, and this process's claim metrics. The SQL is in
//! `store::admin` and `store::cron`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use queue_core::{JobId, JobState, Schedule};

use crate::client::Client;
use crate::error::{Error, Result};

use crate::store::admin::TaskCount;
pub use crate::store::admin::{AttemptError, DeadJob, JobInfo, Waiting};

/// Job counts of one queue (or of all queues).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    /// Waiting to be claimed.
    pub ready: u64,
    /// Waiting for a future run time (delays and retry backoff).
    pub scheduled: u64,
    /// Claimed and running under a lease.
    pub running: u64,
    /// Out of attempts, permanently failed or undecodable.
    pub dead: u64,
    /// Waiting for a slot of their task's concurrency limit
    /// ([`JobState::Blocked`]).
    pub blocked: u64,
    /// Of `scheduled`: held back by their task's rate limit until the
    /// window in which they hold a reserved start.
    pub rate_limited: u64,
    /// Which counts are lower bounds ("at least"): their state has more
    /// jobs than [`Client::stats`] counts one by one (see
    /// [`Stats::exact`]). All `false`: every count is exact.
    pub at_least: LowerBounds,
}

/// Which counts of a [`QueueCounts`] are lower bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LowerBounds {
    /// `ready` is at least that.
    pub ready: bool,
    /// `scheduled` (and `rate_limited`) is at least that.
    pub scheduled: bool,
    /// `running` is at least that.
    pub running: bool,
    /// `dead` is at least that.
    pub dead: bool,
    /// `blocked` is at least that.
    pub blocked: bool,
}

impl LowerBounds {
    /// Whether any count is a lower bound.
    pub fn any(&self) -> bool {
        self.ready || self.scheduled || self.running || self.dead || self.blocked
    }

    fn set(&mut self, state: JobState) {
        match state {
            JobState::Ready => self.ready = true,
            JobState::Scheduled => self.scheduled = true,
            JobState::Running => self.running = true,
            JobState::Dead => self.dead = true,
            JobState::Blocked => self.blocked = true,
            _ => {}
        }
    }
}

impl QueueCounts {
    /// Every job counted (`rate_limited` jobs are among `scheduled`).
    pub fn total(&self) -> u64 {
        self.ready + self.scheduled + self.running + self.dead + self.blocked
    }

    fn add(&mut self, state: JobState, n: u64) {
        match state {
            JobState::Ready => self.ready += n,
            JobState::Scheduled => self.scheduled += n,
            JobState::Running => self.running += n,
            JobState::Dead => self.dead += n,
            JobState::Blocked => self.blocked += n,
            _ => {}
        }
    }
}

/// What `client.stats()` reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    /// Counts per queue.
    pub queues: BTreeMap<String, QueueCounts>,
    /// Counts over all queues.
    pub total: QueueCounts,
    /// Claim latency in this process over the last minute (p50, p99), if
    /// a runtime of this client claimed in that time.
    pub claim_latency: Option<(Duration, Duration)>,
    /// Time from a job's run time (its enqueue, for a job due at once) to
    /// the start of its attempt, in this process over the last minute (p50, p99).
    pub start_lag: Option<(Duration, Duration)>,
    /// Jobs waiting or running (not dead) whose task no `#[task]` of this
    /// process declares, per task name: jobs of an older or newer
    /// deployment, or inserted by hand with a wrong name. A runtime hands
    /// them back every minute without spending an attempt, until a runtime
    /// that knows the task runs them. Counted against the tasks of the
    /// process that calls `stats()`: in a process that declares no tasks,
    /// every waiting job counts.
    pub unknown_tasks: BTreeMap<String, u64>,
    /// InnoDB's history list length: undo records purge has not yet removed.
    /// Rising with claim latency means a long-open read view is stalling
    /// purge. `None` when the server does not expose it.
    pub history_list_length: Option<u64>,
    /// The paused queues ([`Client::pause_queue`]), whether or not they
    /// hold jobs.
    pub paused_queues: Vec<String>,
    /// Cluster-wide limits in use or holding jobs back: each concurrency
    /// key with running or blocked jobs, and each rate key with starts in
    /// the last day (at most 1,000 of each kind).
    pub limits: Vec<LimitStatus>,
    /// Whether every count above is exact. With more than 10,000 jobs in
    /// the table, [`Client::stats`] counts at most 10,000 jobs of each
    /// state (and of each queue's ready jobs) and reads the queue and task
    /// of at most 1,000 of them: counts past those caps are lower bounds,
    /// flagged in [`QueueCounts::at_least`], and `unknown_tasks` counts
    /// only the jobs it read.
    pub exact: bool,
    /// InnoDB's estimate of the number of jobs (its table statistics:
    /// often 10–50 % off), when the counts are not exact; `None` otherwise.
    pub estimated_jobs: Option<u64>,
    /// The Galera node this client's connection reached, when the server
    /// is a MariaDB Galera node (`wsrep_on`); `None` otherwise.
    pub galera: Option<GaleraStatus>,
}

/// What a MariaDB Galera node says of itself ([`Stats::galera`]). A
/// runtime claims through a node only while it is [`synced`](Self::synced).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct GaleraStatus {
    /// `wsrep_cluster_size`: nodes in the cluster component this node is in.
    pub cluster_size: u32,
    /// `wsrep_local_state_comment`: `Synced`, `Donor/Desynced`, `Joining`,
    /// `Joined`, `Initialized`…
    pub local_state: String,
    /// `wsrep_cluster_status`: `Primary`, or `non-Primary` for a node cut
    /// off from the majority.
    pub cluster_status: String,
    /// `wsrep_local_cert_failures`: local transactions that failed
    /// certification since the node started (lost races at commit).
    pub cert_failures: u64,
    /// `wsrep_local_bf_aborts`: local transactions aborted while they ran
    /// by a replicated write set (lost races before commit).
    pub bf_aborts: u64,
    /// `wsrep_gcomm_uuid`: the node's identity in the cluster (new at each
    /// start of the node), as runtimes record it in their registry row.
    pub node: String,
}

impl GaleraStatus {
    /// Whether the node serves claims: Synced, in the primary component.
    pub fn synced(&self) -> bool {
        self.local_state == "Synced" && self.cluster_status == "Primary"
    }
}

/// Tables of at most this many jobs are counted exactly by `stats()`.
const EXACT_UP_TO: usize = 10_000;
/// Queues whose ready jobs `stats()` counts at most (when not exact).
const STATS_QUEUES: usize = 1_000;

impl Stats {
    /// Adds the jobs of one (queue, state, task) to the counts.
    fn add_count(&mut self, count: TaskCount, deferred: &mut BTreeMap<String, u64>) {
        let (state, n) = (count.state, count.jobs);
        if count.rate_deferred && state == JobState::Scheduled {
            self.queues
                .entry(count.queue.clone())
                .or_default()
                .rate_limited += n;
            self.total.rate_limited += n;
            *deferred.entry(count.task.clone()).or_default() += n;
        }
        if state != JobState::Dead && !crate::registry::is_declared(&count.task) {
            *self.unknown_tasks.entry(count.task).or_default() += n;
        }
        self.queues.entry(count.queue).or_default().add(state, n);
        self.total.add(state, n);
    }
}

/// One concurrency or rate limit as the database counts it now
/// ([`Stats::limits`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LimitStatus {
    /// The task's stored name.
    pub task: String,
    /// The key taken from the payload, for a partitioned limit.
    pub key: Option<String>,
    /// Which limit.
    pub kind: LimitKind,
    /// The limit: slots, or starts per window.
    pub limit: u64,
    /// Concurrency: jobs holding a slot (running, or handed a freed slot
    /// and about to be claimed). Rate: starts counted or reserved in
    /// `window`.
    pub active: u64,
    /// Concurrency: blocked jobs waiting for a slot. Rate: jobs of the
    /// task deferred to a later window (counted per task: the same number
    /// on every key of the task).
    pub waiting: u64,
}

/// The kind of a [`LimitStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum LimitKind {
    /// `#[task(concurrency = N)]`.
    Concurrency,
    /// `#[task(rate = "N/per")]`; `window` is the latest window with
    /// starts (the current one, or a later one holding reservations).
    Rate {
        /// The window's length.
        per: Duration,
        /// The start of the latest window with starts.
        window: DateTime<Utc>,
    },
}

/// A recurring task as the database knows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecurringTask {
    /// The task's stored name.
    pub task: String,
    /// The cron expression (seconds first).
    pub expression: String,
    /// The IANA time zone it is evaluated in.
    pub timezone: String,
    /// The last tick that fired (or, for a task never fired, when it was
    /// first registered).
    pub last_tick: DateTime<Utc>,
    /// The next tick after now, by this client's clock.
    pub next_tick: Option<DateTime<Utc>>,
}

impl Client {
    /// Counts per queue and state, the jobs of unknown tasks, the claim
    /// latency and InnoDB's history list length.
    ///
    /// Cheap at any size. A table of at most 10,000 jobs is counted
    /// exactly in one statement (grouped by queue, state and task; the task
    /// names are compared with this process's `#[task]`s). A bigger one is
    /// counted from indexes, each count capped: each queue's claim-index
    /// rows (its ready jobs) up to 10,000, the entries of the scheduled,
    /// running and dead jobs' indexes and of the blocked jobs' table up to
    /// 10,000 each, and the queue and task of the first 1,000 jobs of each
    /// state and 200 ready jobs of each queue; [`Stats::exact`] is then
    /// `false`, and counts past a cap are lower bounds
    /// ([`QueueCounts::at_least`]). About 7–15 ms at 1,000,000 jobs
    /// (docs/operations.md).
    ///
    /// The ready count of a large queue counts claim-index rows: a ready
    /// job cancelled but not yet reached by a claim still counts.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub async fn stats(&self) -> Result<Stats> {
        let mut stats = Stats::default();
        let mut deferred: BTreeMap<String, u64> = BTreeMap::new();
        let store = self.store();
        if store.jobs_at_most(EXACT_UP_TO).await? {
            stats.exact = true;
            for count in store.count_jobs().await? {
                stats.add_count(count, &mut deferred);
            }
        } else {
            self.bounded_counts(&mut stats, &mut deferred).await?;
        }
        stats.claim_latency = self.inner.metrics.claim_latency();
        stats.start_lag = self.inner.metrics.start_lag();
        stats.history_list_length = self.history_list_length().await;
        stats.galera = self.store().galera_status().await;
        stats.paused_queues = self.paused_queues().await?;
        let now = crate::time::clamp(self.now());
        let (sems, rates) = self.store().limit_rows(now).await?;
        use crate::store::admin::{key_task, user_key};
        for s in sems {
            stats.limits.push(LimitStatus {
                task: key_task(&s.key),
                key: user_key(&s.key),
                kind: LimitKind::Concurrency,
                limit: s.limit,
                active: s.active,
                waiting: s.waiting,
            });
        }
        for r in rates {
            let task = key_task(&r.key);
            let (ms, window) = r.window.unwrap_or((0, now));
            stats.limits.push(LimitStatus {
                waiting: deferred.get(&task).copied().unwrap_or(0),
                task,
                key: user_key(&r.key),
                kind: LimitKind::Rate {
                    per: Duration::from_millis(ms),
                    window,
                },
                limit: r.limit,
                active: r.active,
            });
        }
        Ok(stats)
    }

    /// The counts of a table too big to count exactly: see [`stats`](Self::stats).
    async fn bounded_counts(
        &self,
        stats: &mut Stats,
        deferred: &mut BTreeMap<String, u64>,
    ) -> Result<()> {
        use crate::store::admin::{READY_CAP, SAMPLE, STATE_CAP};
        let store = self.store();
        let queues = store.ready_queues(STATS_QUEUES).await?;
        let b = store.count_bounded(&queues).await?;
        stats.estimated_jobs = b.estimated_jobs;
        // Per queue, ready: its claim-index rows, capped.
        for (queue, n) in &b.ready {
            let counts = stats.queues.entry(queue.clone()).or_default();
            counts.ready = (*n).min(READY_CAP as u64);
            counts.at_least.ready = *n > READY_CAP as u64;
        }
        // The other states: per queue from the rows read (a state with
        // more rows than were read is a lower bound everywhere); their
        // totals from their indexes.
        let mut cut = Vec::new();
        for state in [
            JobState::Scheduled,
            JobState::Running,
            JobState::Dead,
            JobState::Blocked,
        ] {
            let read: u64 = b
                .sample
                .iter()
                .enumerate()
                .filter(|(i, c)| c.state == state && !b.ready_sampled.contains(i))
                .map(|(_, c)| c.jobs)
                .sum();
            if read > SAMPLE as u64 {
                cut.push(state);
            }
        }
        for (i, count) in b.sample.into_iter().enumerate() {
            if b.ready_sampled.contains(&i) {
                // Ready jobs at the head of their queue: for unknown tasks only.
                if !crate::registry::is_declared(&count.task) {
                    *stats.unknown_tasks.entry(count.task).or_default() += count.jobs;
                }
                continue;
            }
            stats.add_count(count, deferred);
        }
        for (state, counted) in &b.totals {
            let n = (*counted).min(STATE_CAP as u64);
            match state {
                JobState::Scheduled => stats.total.scheduled = n,
                JobState::Running => stats.total.running = n,
                JobState::Dead => stats.total.dead = n,
                JobState::Blocked => stats.total.blocked = n,
                _ => {}
            }
            if *counted > STATE_CAP as u64 {
                stats.total.at_least.set(*state);
            }
        }
        stats.total.ready = stats.queues.values().map(|q| q.ready).sum();
        stats.total.at_least.ready = stats.queues.values().any(|q| q.at_least.ready);
        for counts in stats.queues.values_mut() {
            for state in &cut {
                counts.at_least.set(*state);
            }
        }
        Ok(())
    }

    /// Pauses `queue` on every runtime on the database: within one poll
    /// interval no runtime starts another of its jobs; jobs already running
    /// run to their end; enqueue keeps accepting jobs (and cron ticks keep
    /// enqueuing them), which wait. Persisted: a runtime started later finds
    /// the queue paused. Pausing a paused queue changes nothing.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a name
    /// that is not a valid queue name; a database error.
    pub async fn pause_queue(&self, queue: &str) -> Result<()> {
        valid_queue(queue)?;
        let now = crate::time::now(self.now())?;
        let newly = self.store().pause_queue(queue, now).await?;
        if newly {
            tracing::info!(queue, "queue paused");
        }
        self.inner.paused_gen.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Resumes a paused queue on every runtime on the database (within one
    /// poll interval; at once in this process). Resuming a queue that is
    /// not paused changes nothing.
    ///
    /// # Errors
    /// As [`Client::pause_queue`].
    pub async fn resume_queue(&self, queue: &str) -> Result<()> {
        valid_queue(queue)?;
        if self.store().resume_queue(queue).await? {
            tracing::info!(queue, "queue resumed");
        }
        self.inner.paused_gen.send_modify(|g| *g += 1);
        self.wake_ready();
        Ok(())
    }

    /// The paused queues, by name.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub async fn paused_queues(&self) -> Result<Vec<String>> {
        self.store().paused_queues().await
    }

    /// InnoDB's history list length (as in [`Stats`]), without counting
    /// the jobs; `None` when the server does not expose it or cannot be
    /// asked.
    pub async fn history_list_length(&self) -> Option<u64> {
        self.store().history_list_length().await
    }

    /// Claim latency (p50, p99) of this client's runtimes in this process
    /// over the last minute, without touching the database (unlike
    /// [`stats`](Self::stats), which also counts every job).
    pub fn claim_latency(&self) -> Option<(Duration, Duration)> {
        self.inner.metrics.claim_latency()
    }

    /// Time from run time to start (p50, p99) of the jobs this client's
    /// runtimes started in this process over the last minute; no database
    /// access.
    pub fn start_lag(&self) -> Option<(Duration, Duration)> {
        self.inner.metrics.start_lag()
    }

    /// Dead jobs, newest first.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub async fn dead_jobs(&self, limit: u32) -> Result<Vec<DeadJob>> {
        self.store().dead_jobs(limit).await
    }

    /// Puts a dead job back to run now, with its attempts reset.
    ///
    /// # Errors
    /// [`Error::NotDead`] if no dead job has this id.
    pub async fn retry_dead(&self, id: JobId) -> Result<()> {
        if !self.store().retry_dead(id, self.now()).await? {
            return Err(Error::NotDead(id));
        }
        self.wake_ready();
        Ok(())
    }

    /// Cancels a job that has not started: deletes it if it is ready or
    /// scheduled. Returns whether it did; `false` if the job is running
    /// (it runs to its end), dead (see [`Client::purge_dead`]), finished or
    /// unknown. A claim that races with the cancel either takes the job
    /// first (`false`) or finds it gone. Its row in the claim index, if
    /// any, is removed by the next claim that reaches it.
    ///
    /// # Errors
    /// If the database cannot be written.
    pub async fn cancel(&self, id: JobId) -> Result<bool> {
        let now = crate::time::now(self.now())?;
        self.store().cancel(id, now, false).await
    }

    /// Deletes dead jobs that died more than `older_than` ago. Returns how many.
    ///
    /// # Errors
    /// If the database cannot be written.
    pub async fn purge_dead(&self, older_than: Duration) -> Result<u64> {
        // Saturating: an age reaching before the earliest storable time purges nothing.
        let cutoff = chrono::Duration::from_std(older_than)
            .ok()
            .and_then(|age| self.now().checked_sub_signed(age))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        self.store().purge_dead(cutoff).await
    }

    /// One job as stored, or `None` if it does not exist (a job that
    /// succeeded is deleted).
    ///
    /// # Errors
    /// If the database cannot be read.
    pub async fn job(&self, id: JobId) -> Result<Option<JobInfo>> {
        self.store().job(id).await
    }

    /// Every recurring task registered in the database, with its next fire time.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub async fn recurring(&self) -> Result<Vec<RecurringTask>> {
        let now = self.now();
        Ok(self
            .store()
            .recurring()
            .await?
            .into_iter()
            .map(|row| {
                let next_tick = Schedule::parse(&row.expression, Some(&row.timezone))
                    .ok()
                    .and_then(|s| s.next_after(now));
                RecurringTask {
                    task: row.task,
                    expression: row.expression,
                    timezone: row.timezone,
                    last_tick: row.last_tick,
                    next_tick,
                }
            })
            .collect())
    }
}

/// `queue` if it is a valid queue name.
pub(crate) fn valid_queue(queue: &str) -> Result<()> {
    queue_core::validate_queue_name(queue)
        .map_err(|e| crate::error::Error::InvalidArgument(e.to_string()))
}
