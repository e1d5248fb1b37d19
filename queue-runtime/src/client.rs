//! The client: a pool, the server's flavour, a clock, and the admin API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use queue_core::{JobId, JobState};
use sqlx::Row;
use sqlx::mysql::MySqlPool;
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::connect::ClientOptions;
use crate::error::{Error, Result};
use crate::flavor::Flavor;
use crate::store::{NewJob, Store};
use crate::time::At;

/// A handle on the job database. Cheap to clone: clones share one pool.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) clock: Arc<dyn Clock>,
    /// Bumped when this process makes a job ready (wakes local runtimes).
    pub(crate) ready_gen: watch::Sender<u64>,
    /// Bumped when this process schedules a job for later (wakes dispatchers).
    pub(crate) scheduled_gen: watch::Sender<u64>,
    pub(crate) metrics: crate::metrics::Metrics,
    /// Set once the schema was found to be this build's (a failure is not
    /// remembered: the next call checks again).
    pub(crate) schema_checked: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("flavor", &self.inner.store.flavor)
            .field("clock", &self.inner.clock)
            .finish_non_exhaustive()
    }
}

/// Job counts of one queue (or of all queues).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Waiting to be claimed.
    pub ready: u64,
    /// Waiting for a future run time (delays and retry backoff).
    pub scheduled: u64,
    /// Claimed and running under a lease.
    pub running: u64,
    /// Out of attempts, permanently failed or undecodable.
    pub dead: u64,
}

impl QueueCounts {
    /// Every job counted.
    pub fn total(&self) -> u64 {
        self.ready + self.scheduled + self.running + self.dead
    }

    fn add(&mut self, state: JobState, n: u64) {
        match state {
            JobState::Ready => self.ready += n,
            JobState::Scheduled => self.scheduled += n,
            JobState::Running => self.running += n,
            JobState::Dead => self.dead += n,
            _ => {}
        }
    }
}

/// What `client.stats()` reports.
#[derive(Clone, Debug, Default)]
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
}

/// A dead job, as `client.dead_jobs()` lists it.
#[derive(Clone, Debug)]
pub struct DeadJob {
    /// The job's id.
    pub id: JobId,
    /// The task's stored name.
    pub task: String,
    /// The queue.
    pub queue: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error's text ("deadline exceeded" for a deadline failure).
    pub last_error: String,
    /// The payload, as stored (JSON).
    pub payload: String,
    /// When it died.
    pub died_at: DateTime<Utc>,
}

/// One job as stored, for inspection.
#[derive(Clone, Debug)]
pub struct JobInfo {
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
    /// The last error, if any attempt failed.
    pub last_error: Option<String>,
    /// The payload (JSON).
    pub payload: String,
}

impl Client {
    /// Connects a new pool to `url` (`mysql://user:password@host:port/database`,
    /// or `mariadb://…`), with [`ClientOptions`]' defaults: up to 20
    /// connections, a 10-s acquire timeout.
    ///
    /// TLS is asked for with URL parameters (`ssl-mode=REQUIRED`,
    /// `VERIFY_CA` or `VERIFY_IDENTITY`, `ssl-ca=<file>`) and needs the `tls`
    /// feature.
    ///
    /// # Errors
    /// - [`Error::InvalidArgument`] for another database's URL (`postgres://`),
    ///   a URL that does not parse, or one requiring TLS without the `tls` feature.
    /// - [`Error::Database`] at once if the server refuses the connection or
    ///   its host does not resolve (the message names `host:port`), after
    ///   the acquire timeout if it accepts but does not answer, or if it
    ///   rejects the credentials.
    pub async fn connect(url: &str) -> Result<Client> {
        Self::connect_with(url, ClientOptions::new()).await
    }

    /// [`connect`](Self::connect) with the pool's size and acquire timeout
    /// of `options`.
    ///
    /// ```rust,no_run
    /// # async fn example() -> queue_runtime::Result<()> {
    /// use std::time::Duration;
    /// use queue_runtime::{Client, ClientOptions};
    ///
    /// let options = ClientOptions::new().acquire_timeout(Duration::from_secs(30));
    /// let client = Client::connect_with("mysql://queue:queue@127.0.0.1:3366/queue", options).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Client> {
        let pool = crate::connect::connect_pool(url, &options).await?;
        Self::from_pool(pool).await
    }

    /// Uses the host application's pool. The runtime's statements name all
    /// their tables and set their own isolation level per transaction, so
    /// the pool's session settings do not matter.
    ///
    /// # Errors
    /// If the server cannot be reached to detect its flavour.
    pub async fn from_pool(pool: MySqlPool) -> Result<Client> {
        let version: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&pool)
            .await?;
        Ok(Client {
            inner: Arc::new(Inner {
                store: Store::new(pool, Flavor::from_version(&version)),
                clock: Arc::new(SystemClock),
                ready_gen: watch::channel(0).0,
                scheduled_gen: watch::channel(0).0,
                metrics: crate::metrics::Metrics::default(),
                schema_checked: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// This client reading time from `clock` (for tests: a [`ManualClock`](crate::ManualClock)).
    /// Returns a new client on the same pool; clones of the old one keep their clock.
    pub fn with_clock(&self, clock: impl Clock) -> Client {
        self.derived(self.inner.store.clone(), Arc::new(clock))
    }

    /// A new client on this one's pool with `store` and `clock`: its own
    /// wake-ups and metrics, this one's schema check.
    fn derived(&self, store: Store, clock: Arc<dyn Clock>) -> Client {
        Client {
            inner: Arc::new(Inner {
                store,
                clock,
                ready_gen: watch::channel(0).0,
                scheduled_gen: watch::channel(0).0,
                metrics: crate::metrics::Metrics::default(),
                schema_checked: tokio::sync::OnceCell::new_with(
                    self.inner.schema_checked.get().copied(),
                ),
            }),
        }
    }

    /// This client as if its server were of `flavor`: for tests that run
    /// the MySQL statements against a MariaDB server (MariaDB ignores
    /// MySQL's optimizer hints). Not public API.
    #[doc(hidden)]
    pub fn with_flavor(&self, flavor: Flavor) -> Client {
        self.derived(
            Store::new(self.inner.store.pool.clone(), flavor),
            self.inner.clock.clone(),
        )
    }

    /// The largest payload, in bytes of JSON, the server takes: its
    /// `max_allowed_packet` less 128 KiB for the rest of the row. A bigger
    /// one is refused at enqueue with [`Error::PayloadTooLarge`] before
    /// anything is sent. Read from the server once per client.
    ///
    /// # Errors
    /// If the server cannot be asked.
    pub async fn payload_limit(&self) -> Result<u64> {
        Ok(crate::store::payload_limit(
            self.store().max_packet().await?,
        ))
    }

    /// The pool.
    ///
    /// Its [`connect_options()`](sqlx::Pool::connect_options) are sqlx's
    /// `MySqlConnectOptions`, whose `Debug` output includes the password:
    /// do not log them. Nothing of this crate prints them (nor the URL).
    pub fn pool(&self) -> &MySqlPool {
        &self.inner.store.pool
    }

    /// The server's flavour, detected at connect.
    pub fn flavor(&self) -> Flavor {
        self.inner.store.flavor
    }

    /// The current time of this client's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Applies the bundled schema migrations. Idempotent, and safe to call
    /// from many processes at once.
    ///
    /// # Errors
    /// If a statement fails, [`Error::SchemaTooNew`] if the schema is newer
    /// than this build, [`Error::InvalidArgument`] if the URL (or pool)
    /// names no database.
    pub async fn migrate(&self) -> Result<()> {
        crate::migrate::run(self.pool()).await?;
        let _ = self.inner.schema_checked.set(());
        Ok(())
    }

    /// Checks, once per client, that the database's schema is this build's
    /// ([`Error::SchemaTooNew`], [`Error::SchemaTooOld`]), on `executor`:
    /// the pool, or the caller's connection when enqueueing inside its
    /// transaction (a read of `queue_schema_migrations`, no locks).
    pub(crate) async fn check_schema<'e>(
        &self,
        executor: impl sqlx::MySqlExecutor<'e>,
    ) -> Result<()> {
        self.inner
            .schema_checked
            .get_or_try_init(|| crate::migrate::check(executor))
            .await?;
        Ok(())
    }

    /// Inserts jobs built at `now` (the instant that decides which are due)
    /// and wakes this process's runtimes.
    pub(crate) async fn insert(&self, jobs: Vec<NewJob>, now: DateTime<Utc>) -> Result<Vec<JobId>> {
        let any_ready = jobs.iter().any(|j| j.run_at <= now);
        let any_scheduled = jobs.iter().any(|j| j.run_at > now);
        self.check_schema(self.pool()).await?;
        let ids = self.store().insert_jobs(&jobs, now).await?;
        if any_ready {
            self.inner.ready_gen.send_modify(|g| *g += 1);
        }
        if any_scheduled {
            self.inner.scheduled_gen.send_modify(|g| *g += 1);
        }
        Ok(ids)
    }

    /// Counts per queue and state, the jobs of unknown tasks, the claim
    /// latency and InnoDB's history list length.
    ///
    /// One statement scans every job (grouped by queue, state and task:
    /// a row per combination that has jobs), then the task names are
    /// compared with this process's `#[task]`s.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub async fn stats(&self) -> Result<Stats> {
        let rows = sqlx::query(self.store().sql(
            "SELECT queue, state, task, COUNT(*) FROM queue_jobs GROUP BY queue, state, task",
        ))
        .fetch_all(self.pool())
        .await?;
        let mut stats = Stats::default();
        for row in rows {
            let queue: String = row.get(0);
            let state: u8 = row.get(1);
            let task: String = row.get(2);
            let n: i64 = row.get(3);
            let n = u64::try_from(n).unwrap_or(0);
            let Some(state) = JobState::from_u8(state) else {
                continue;
            };
            if state != JobState::Dead && !crate::registry::is_declared(&task) {
                *stats.unknown_tasks.entry(task).or_default() += n;
            }
            stats.queues.entry(queue).or_default().add(state, n);
            stats.total.add(state, n);
        }
        stats.claim_latency = self.inner.metrics.claim_latency();
        stats.start_lag = self.inner.metrics.start_lag();
        stats.history_list_length = history_list_length(self.pool()).await;
        Ok(stats)
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
        let rows = sqlx::query(self.store().sql(
            "SELECT id, task, queue, attempts, last_error, payload, dead_at FROM queue_jobs \
             FORCE INDEX (queue_jobs_dead) WHERE dead_at IS NOT NULL AND state = ? \
             ORDER BY dead_at DESC, id DESC LIMIT ?",
        ))
        .bind(JobState::Dead.as_u8())
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadJob {
                    id: JobId(r.try_get(0)?),
                    task: r.try_get(1)?,
                    queue: r.try_get(2)?,
                    attempts: r.try_get(3)?,
                    last_error: r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
                    payload: r.try_get(5)?,
                    died_at: crate::time::stored(r, 6)?,
                })
            })
            .collect()
    }

    /// Puts a dead job back to run now, with its attempts reset.
    ///
    /// # Errors
    /// [`Error::NotDead`] if no dead job has this id.
    pub async fn retry_dead(&self, id: JobId) -> Result<()> {
        let now = self.now();
        let store = self.store();
        let mut tx = store.begin().await?;
        let res = sqlx::query(store.sql(
            "UPDATE queue_jobs SET state = ?, attempts = 0, dead_at = NULL, run_at = ?, updated_at = ? \
             WHERE id = ? AND state = ?",
        ))
        .bind(JobState::Ready.as_u8())
        .bind(At(now))
        .bind(At(now))
        .bind(id.0)
        .bind(JobState::Dead.as_u8())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(Error::NotDead(id));
        }
        sqlx::query(store.sql(
            "INSERT INTO queue_ready (queue, priority, job_id) SELECT queue, priority, id FROM queue_jobs WHERE id = ?",
        ))
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.inner.ready_gen.send_modify(|g| *g += 1);
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
        let n = sqlx::query(
            self.store()
                .sql("DELETE FROM queue_jobs WHERE id = ? AND state IN (?, ?)"),
        )
        .bind(id.0)
        .bind(JobState::Ready.as_u8())
        .bind(JobState::Scheduled.as_u8())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n > 0)
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
        let mut total = 0;
        loop {
            let n = sqlx::query(self.store().sql(
                "DELETE FROM queue_jobs WHERE dead_at IS NOT NULL AND dead_at < ? AND state = ? LIMIT 1000",
            ))
            .bind(At(cutoff))
            .bind(JobState::Dead.as_u8())
            .execute(self.pool())
            .await?
            .rows_affected();
            total += n;
            if n < 1000 {
                return Ok(total);
            }
        }
    }

    /// One job as stored, or `None` if it does not exist (a job that
    /// succeeded is deleted).
    ///
    /// # Errors
    /// If the database cannot be read.
    pub async fn job(&self, id: JobId) -> Result<Option<JobInfo>> {
        let row = sqlx::query(self.store().sql(
            "SELECT id, task, queue, priority, state, attempts, max_attempts, run_at, last_error, payload \
             FROM queue_jobs WHERE id = ?",
        ))
        .bind(id.0)
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(JobInfo {
            id: JobId(r.try_get(0)?),
            task: r.try_get(1)?,
            queue: r.try_get(2)?,
            priority: r.try_get(3)?,
            state: JobState::from_u8(r.try_get(4)?).unwrap_or(JobState::Dead),
            attempts: r.try_get(5)?,
            max_attempts: r.try_get(6)?,
            run_at: crate::time::stored(&r, 7)?,
            last_error: r.try_get(8)?,
            payload: r.try_get(9)?,
        }))
    }
}

/// InnoDB's history list length, from `information_schema.INNODB_METRICS`.
pub(crate) async fn history_list_length(pool: &MySqlPool) -> Option<u64> {
    sqlx::query_scalar::<_, i64>(
        "SELECT `COUNT` FROM information_schema.INNODB_METRICS WHERE NAME = 'trx_rseg_history_len'",
    )
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()
    .and_then(|v| u64::try_from(v).ok())
}
