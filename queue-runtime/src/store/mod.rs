//! Every SQL statement the runtime sends. Nothing here decides policy: the
//! runtime and client call these with times from their clock.

mod claim;

use std::time::Duration;

use chrono::{DateTime, Utc};
use queue_core::{JobId, JobState};
use sqlx::mysql::MySqlArguments;
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, MySql, MySqlPool, Row};

pub(crate) use claim::{ClaimTicket, Claimed, ClaimedJob, LEVELS, claim_sql};

use crate::error::{Result, is_retryable};
use crate::flavor::Flavor;
use crate::time::At;

/// How long any of the runtime's own statements may run on the server.
pub(crate) const STATEMENT_LIMIT: Duration = Duration::from_secs(10);

/// A job to insert.
#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub task: String,
    pub queue: String,
    pub priority: u8,
    pub payload: String,
    pub max_attempts: u32,
    pub deadline_ms: Option<u64>,
    pub run_at: DateTime<Utc>,
    /// Not enqueued again while a job of the task with this key is pending.
    pub unique_key: Option<String>,
}

/// The SQL side of a `Client`: a pool and the server's flavour.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub pool: MySqlPool,
    pub flavor: Flavor,
    /// The server's `max_allowed_packet`, once read.
    packet: std::sync::Arc<std::sync::OnceLock<u64>>,
}

/// A time as the text of a MySQL `DATETIME(6)` literal.
pub(crate) fn sql_time(t: DateTime<Utc>) -> String {
    crate::time::literal(t)
}

/// `?, ?, ?` for `n` parameters.
pub(crate) fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// The stored form of a job's unique key: the task's name, U+001F and the
/// key, so that the one-column unique index keeps keys apart per task.
pub(crate) fn stored_unique_key(task: &str, key: &str) -> String {
    format!("{task}\u{1f}{key}")
}

/// Expired leases taken back per transaction.
const RESCUE_BATCH: usize = 200;

/// A running job whose lease expired: the worker running it was lost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExpiredLease {
    pub id: JobId,
    /// The attempt the lost worker was running.
    pub attempt: u32,
    pub max_attempts: u32,
}

/// What the rescuer does with an expired lease's job (the runtime's retry
/// policy decides; see `runtime::outcome`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rescue {
    /// Runs again at `run_at` (at once if that is not after now).
    Retry {
        run_at: DateTime<Utc>,
        error: String,
    },
    /// Dead, with `error`.
    Dead { error: String },
}

/// How long a ready job waits, unchanged, before a missing claim-index
/// row is made for it.
const HEAL_AFTER: Duration = Duration::from_secs(60);

/// Rows per multi-row INSERT at most.
pub(crate) const INSERT_CHUNK: usize = 2000;

/// How many rows each multi-row INSERT of `n` rows carries: full chunks of
/// `chunk`, then the rest in descending powers of two. Each row count is a
/// distinct statement text, prepared and cached per connection by sqlx; with
/// these shapes a connection sees at most a dozen of them per table, however
/// the batch sizes vary, so they never evict each other from sqlx's
/// 100-statement cache (an eviction's `COM_STMT_CLOSE` followed by the next
/// command costs a 40 ms Nagle/delayed-ACK stall: docs/benchmarks.md).
fn statement_sizes(n: usize, chunk: usize) -> Vec<usize> {
    let mut sizes = vec![chunk; n / chunk];
    let mut rest = n % chunk;
    while rest > 0 {
        let p = 1usize << rest.ilog2();
        sizes.push(p);
        rest -= p;
    }
    sizes
}

/// What a row adds to an INSERT's packet besides its strings: a type and
/// value per parameter, length prefixes (generous).
const ROW_OVERHEAD: u64 = 256;

/// Room kept in a packet for the statement's header and the rest of a row
/// read back with the payload (task, queue, last error: a TEXT, at most
/// 64 KiB).
const PACKET_RESERVE: u64 = 128 * 1024;

/// The largest payload, in bytes, a server with this `max_allowed_packet`
/// takes: the packet less [`PACKET_RESERVE`].
pub(crate) fn payload_limit(max_packet: u64) -> u64 {
    max_packet.saturating_sub(PACKET_RESERVE)
}

/// The bytes the rows of one INSERT may carry.
fn statement_budget(max_packet: u64) -> u64 {
    max_packet.saturating_sub(PACKET_RESERVE / 2)
}

/// What a job adds to an INSERT's packet, about.
fn row_bytes(job: &NewJob) -> u64 {
    (job.payload.len()
        + job.task.len()
        + job.queue.len()
        + job.unique_key.as_ref().map_or(0, String::len)) as u64
        + ROW_OVERHEAD
}

/// `jobs` cut into runs of at most `chunk` rows whose bytes fit `budget`
/// (a row bigger than the budget alone is a run of its own: the payload
/// check refuses such rows before this).
fn byte_groups(jobs: &[NewJob], chunk: usize, budget: u64) -> Vec<&[NewJob]> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, job) in jobs.iter().enumerate() {
        let b = row_bytes(job);
        if i > start && (i - start == chunk || bytes + b > budget) {
            groups.push(&jobs[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += b;
    }
    if start < jobs.len() {
        groups.push(&jobs[start..]);
    }
    groups
}

/// The ids of a MySQL multi-row INSERT of `n` rows: `first`, then
/// `step` apart.
fn mysql_ids(first: u64, step: u64, n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| first + i * step.max(1)).collect()
}

/// The `(id = 7 AND attempts = 1) OR …` fence over `jobs`: an outcome is
/// written only while the job is still at the attempt that produced it.
///
/// Written with the values inlined (they are integers): these statements
/// differ in length with every batch, and as prepared statements they would
/// churn the connection's statement cache, whose evictions cost a round
/// trip that waits on the server's delayed ACK (~40 ms) under sqlx 0.9.
fn fence(jobs: &[(JobId, u32)]) -> String {
    let mut s = String::new();
    for (i, (id, attempt)) in jobs.iter().enumerate() {
        if i > 0 {
            s.push_str(" OR ");
        }
        s.push_str(&format!("(id = {} AND attempts = {attempt})", id.0));
    }
    s
}

impl Store {
    /// The store of `pool`, a server of `flavor`.
    pub(crate) fn new(pool: MySqlPool, flavor: Flavor) -> Store {
        Store {
            pool,
            flavor,
            packet: Default::default(),
        }
    }

    /// A statement with the runtime's own server-side limit. The text is
    /// built by this module from constants and placeholders only.
    pub(crate) fn sql(&self, text: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(self.flavor.limit_statement(text, STATEMENT_LIMIT).0)
    }

    fn q(&self, text: &str) -> Query<'static, MySql, MySqlArguments> {
        sqlx::query(self.sql(text))
    }

    /// Starts a READ COMMITTED transaction: no gap locks, so claims do not
    /// block inserts at the tail of the index.
    pub(crate) async fn begin(&self) -> Result<sqlx::Transaction<'static, MySql>> {
        Ok(self
            .pool
            .begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
            .await?)
    }

    /// Inserts jobs; those due at `now` also enter the claim index. Returns
    /// their ids in order. One transaction for the whole slice.
    pub(crate) async fn insert_jobs(
        &self,
        jobs: &[NewJob],
        now: DateTime<Utc>,
    ) -> Result<Vec<JobId>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.check_sizes(jobs).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_insert_jobs(jobs, now, INSERT_CHUNK).await {
                Err(crate::Error::Database(e)) if is_retryable(&e) && attempt < 5 => continue,
                other => return other,
            }
        }
    }

    async fn try_insert_jobs(
        &self,
        jobs: &[NewJob],
        now: DateTime<Utc>,
        chunk: usize,
    ) -> Result<Vec<JobId>> {
        let mut tx = self.begin().await?;
        let ids = self.insert_jobs_in(&mut tx, jobs, now, chunk).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// Inserts jobs inside the caller's transaction. A job with a unique
    /// key whose task already has a pending job with that key is not
    /// inserted: the pending job's id stands in its place.
    pub(crate) async fn insert_jobs_in(
        &self,
        tx: &mut sqlx::MySqlConnection,
        jobs: &[NewJob],
        now: DateTime<Utc>,
        chunk: usize,
    ) -> Result<Vec<JobId>> {
        self.check_sizes(jobs).await?;
        if !jobs.iter().any(|j| j.unique_key.is_some()) {
            return self.insert_plain(tx, jobs, now, chunk).await;
        }
        let mut ids = Vec::with_capacity(jobs.len());
        for job in jobs {
            ids.push(match &job.unique_key {
                Some(key) => self.insert_unique(tx, job, key, now).await?,
                None => {
                    self.insert_plain(tx, std::slice::from_ref(job), now, chunk)
                        .await?[0]
                }
            });
        }
        Ok(ids)
    }

    /// Inserts a job with a unique key, or returns the id of the pending job
    /// of its task with that key.
    async fn insert_unique(
        &self,
        tx: &mut sqlx::MySqlConnection,
        job: &NewJob,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<JobId> {
        // Between a duplicate-key error and the look-up, the pending job may
        // finish and free the key: then insert again.
        for _ in 0..5 {
            match self
                .insert_plain(tx, std::slice::from_ref(job), now, 1)
                .await
            {
                Ok(ids) => return Ok(ids[0]),
                // Duplicate key: a pending job of the task has this key.
                Err(e) if e.db_code() == Some(1062) => {
                    // A locking read sees the latest committed row, whatever
                    // the caller's isolation level.
                    let id: Option<u64> = self
                        .q("SELECT id FROM queue_jobs WHERE unique_key = ? LOCK IN SHARE MODE")
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| r.get(0));
                    if let Some(id) = id {
                        return Ok(JobId(id));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let key = key.split_once('\u{1f}').map_or(key, |k| k.1);
        Err(crate::Error::InvalidArgument(format!(
            "unique key {key:?} of task {}: the pending job kept changing; try again",
            job.task
        )))
    }

    /// Inserts jobs in multi-row INSERTs, each within the server's
    /// `max_allowed_packet`.
    async fn insert_plain(
        &self,
        tx: &mut sqlx::MySqlConnection,
        jobs: &[NewJob],
        now: DateTime<Utc>,
        chunk: usize,
    ) -> Result<Vec<JobId>> {
        let packet = self.max_packet().await?;
        let mut ids = Vec::with_capacity(jobs.len());
        for group in byte_groups(jobs, chunk, statement_budget(packet)) {
            let mut rest = group;
            for size in statement_sizes(group.len(), chunk) {
                let (part, after) = rest.split_at(size);
                rest = after;
                let part_ids = self.insert_rows(tx, part, now).await?;
                self.index_ready(tx, part, &part_ids, now, chunk).await?;
                ids.extend(part_ids.into_iter().map(JobId));
            }
        }
        Ok(ids)
    }

    /// One multi-row INSERT into `queue_jobs`; returns the new ids in the
    /// order of `part`.
    async fn insert_rows(
        &self,
        tx: &mut sqlx::MySqlConnection,
        part: &[NewJob],
        now: DateTime<Utc>,
    ) -> Result<Vec<u64>> {
        let mut sql = String::from(
            "INSERT INTO queue_jobs (task, unique_key, queue, priority, state, payload, attempts, \
             max_attempts, deadline_ms, run_at, scheduled_at, created_at, updated_at) VALUES ",
        );
        for i in 0..part.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)");
        }
        if self.flavor == Flavor::MariaDb {
            sql.push_str(" RETURNING id");
        }
        let mut q = self.q(&sql);
        for job in part {
            let due = job.run_at <= now;
            let state = if due {
                JobState::Ready
            } else {
                JobState::Scheduled
            };
            q = q
                .bind(&job.task)
                .bind(job.unique_key.as_deref())
                .bind(&job.queue)
                .bind(job.priority)
                .bind(state.as_u8())
                .bind(&job.payload)
                .bind(job.max_attempts)
                .bind(job.deadline_ms)
                .bind(At(job.run_at))
                .bind(if due { None } else { Some(At(job.run_at)) })
                .bind(At(now))
                .bind(At(now));
        }
        let ids = match self.flavor {
            // The server says which ids it gave, in the order of the rows.
            Flavor::MariaDb => q
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<u64, _>(0))
                .collect::<Result<Vec<_>, _>>()?,
            // MySQL has no RETURNING. A multi-row INSERT whose row count is
            // known up front ("simple insert") takes its AUTO_INCREMENT
            // values as one block in every innodb_autoinc_lock_mode: the
            // first is LAST_INSERT_ID(), the rest follow it
            // `auto_increment_increment` apart (Group Replication sets 7,
            // master-master setups their own), never assumed to be 1.
            Flavor::MySql => {
                let res = q.execute(&mut *tx).await?;
                let step = if part.len() > 1 {
                    self.q("SELECT @@session.auto_increment_increment")
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get::<u64, _>(0)?
                } else {
                    1
                };
                mysql_ids(res.last_insert_id(), step, part.len())
            }
        };
        if ids.len() != part.len() {
            return Err(crate::Error::Database(sqlx::Error::Protocol(format!(
                "inserted {} jobs but the server returned {} ids",
                part.len(),
                ids.len()
            ))));
        }
        Ok(ids)
    }

    /// Adds the due jobs of `part` (whose ids are `ids`) to the claim index.
    async fn index_ready(
        &self,
        tx: &mut sqlx::MySqlConnection,
        part: &[NewJob],
        ids: &[u64],
        now: DateTime<Utc>,
        chunk: usize,
    ) -> Result<()> {
        let due: Vec<(&NewJob, u64)> = part
            .iter()
            .zip(ids.iter().copied())
            .filter(|(j, _)| j.run_at <= now)
            .collect();
        let mut due = due.as_slice();
        for size in statement_sizes(due.len(), chunk) {
            let (rows, after) = due.split_at(size);
            due = after;
            let sql = format!(
                "INSERT INTO queue_ready (queue, priority, job_id) VALUES {}",
                vec!["(?, ?, ?)"; rows.len()].join(", ")
            );
            let mut q = self.q(&sql);
            for (job, id) in rows {
                q = q.bind(&job.queue).bind(job.priority).bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        Ok(())
    }

    /// The server's `max_allowed_packet`, read once per pool.
    pub(crate) async fn max_packet(&self) -> Result<u64> {
        if let Some(&n) = self.packet.get() {
            return Ok(n);
        }
        let n: u64 = sqlx::query_scalar("SELECT @@max_allowed_packet")
            .fetch_one(&self.pool)
            .await?;
        Ok(*self.packet.get_or_init(|| n))
    }

    /// Refuses, before anything is sent, a job too big for the server: its
    /// payload over [`payload_limit`].
    pub(crate) async fn check_sizes(&self, jobs: &[NewJob]) -> Result<()> {
        let limit = payload_limit(self.max_packet().await?);
        match jobs.iter().find(|j| j.payload.len() as u64 > limit) {
            Some(job) => Err(crate::Error::PayloadTooLarge {
                task: job.task.clone(),
                size: job.payload.len() as u64,
                limit,
            }),
            None => Ok(()),
        }
    }

    /// Deletes succeeded jobs, each only while still at its attempt.
    pub(crate) async fn complete(&self, done: &[(JobId, u32)]) -> Result<u64> {
        let mut total = 0;
        for part in done.chunks(500) {
            let sql = self.sql(&format!("DELETE FROM queue_jobs WHERE {}", fence(part)));
            total += retry_deadlocks(|| async {
                Ok(sqlx::raw_sql(AssertSqlSafe(sql.0.clone()))
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            })
            .await?;
        }
        Ok(total)
    }

    /// How many of these jobs exist.
    pub(crate) async fn count_existing(&self, ids: &[JobId]) -> Result<u64> {
        let mut total = 0;
        for part in ids.chunks(500) {
            let list = part
                .iter()
                .map(|id| id.0.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let sql = self.sql(&format!(
                "SELECT COUNT(*) FROM queue_jobs WHERE id IN ({list})"
            ));
            // Text, not a prepared statement: see `fence`.
            let n: i64 = sqlx::raw_sql(sql).fetch_one(&self.pool).await?.try_get(0)?;
            total += u64::try_from(n).unwrap_or(0);
        }
        Ok(total)
    }

    /// Moves a failed attempt's job to scheduled (or straight to ready when
    /// `run_at` is not after `now`), with its error.
    pub(crate) async fn retry_later(
        &self,
        id: JobId,
        attempt: u32,
        run_at: DateTime<Utc>,
        error: &str,
        now: DateTime<Utc>,
        refund_attempt: bool,
    ) -> Result<bool> {
        retry_deadlocks(|| self.try_reschedule(id, attempt, run_at, error, now, refund_attempt))
            .await
    }

    async fn try_reschedule(
        &self,
        id: JobId,
        attempt: u32,
        run_at: DateTime<Utc>,
        error: &str,
        now: DateTime<Utc>,
        refund_attempt: bool,
    ) -> Result<bool> {
        let due = run_at <= now;
        let mut tx = self.begin().await?;
        let res = self
            .q(
                "UPDATE queue_jobs SET state = ?, run_at = ?, scheduled_at = ?, lease_expires_at = NULL, \
                 lease_owner = NULL, last_error = ?, attempts = attempts - ?, updated_at = ? \
                 WHERE id = ? AND attempts = ? AND state = ?",
            )
            .bind(if due { JobState::Ready.as_u8() } else { JobState::Scheduled.as_u8() })
            .bind(At(run_at))
            .bind(if due { None } else { Some(At(run_at)) })
            .bind(error)
            .bind(u32::from(refund_attempt))
            .bind(At(now))
            .bind(id.0)
            .bind(attempt)
            .bind(JobState::Running.as_u8())
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if due {
            self.q("INSERT INTO queue_ready (queue, priority, job_id) SELECT queue, priority, id FROM queue_jobs WHERE id = ?")
                .bind(id.0)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Marks a job dead with its error, only while still at `attempt`.
    pub(crate) async fn mark_dead(
        &self,
        id: JobId,
        attempt: u32,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        // A dead job releases its unique key.
        let sql = "UPDATE queue_jobs SET state = ?, dead_at = ?, lease_expires_at = NULL, lease_owner = NULL, \
                   unique_key = NULL, last_error = ?, updated_at = ? \
                   WHERE id = ? AND attempts = ? AND state = ?";
        let n = retry_deadlocks(|| async {
            Ok(self
                .q(sql)
                .bind(JobState::Dead.as_u8())
                .bind(At(now))
                .bind(error)
                .bind(At(now))
                .bind(id.0)
                .bind(attempt)
                .bind(JobState::Running.as_u8())
                .execute(&self.pool)
                .await?
                .rows_affected())
        })
        .await?;
        Ok(n > 0)
    }

    /// Extends the leases of jobs this owner runs. Returns how many it still held.
    pub(crate) async fn heartbeat(
        &self,
        owner: &str,
        jobs: &[(JobId, u32)],
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let mut total = 0;
        for part in jobs.chunks(500) {
            // Text with inlined values, for the reason given at `fence`; the
            // owner id is this runtime's own `rt-<hex>`.
            debug_assert!(
                owner
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            );
            let sql = self.sql(&format!(
                "UPDATE queue_jobs SET lease_expires_at = '{}', updated_at = '{}' \
                 WHERE lease_owner = '{owner}' AND state = {} AND ({})",
                sql_time(until),
                sql_time(now),
                JobState::Running.as_u8(),
                fence(part)
            ));
            total += sqlx::raw_sql(sql)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(total)
    }

    /// Takes back running jobs whose lease expired at or before `now`
    /// (looking only at leases after `since`, when given), each as `decide`
    /// says: back to ready (or scheduled) or dead. Returns (retried, dead).
    pub(crate) async fn rescue_expired(
        &self,
        now: DateTime<Utc>,
        since: Option<DateTime<Utc>>,
        decide: &(dyn Fn(&ExpiredLease) -> Rescue + Sync),
    ) -> Result<(u64, u64)> {
        let mut retried = 0;
        let mut dead = 0;
        loop {
            let (r, d, more) = retry_deadlocks(|| self.try_rescue(now, since, decide)).await?;
            retried += r;
            dead += d;
            if !more {
                return Ok((retried, dead));
            }
        }
    }

    async fn try_rescue(
        &self,
        now: DateTime<Utc>,
        since: Option<DateTime<Utc>>,
        decide: &(dyn Fn(&ExpiredLease) -> Rescue + Sync),
    ) -> Result<(u64, u64, bool)> {
        let mut tx = self.begin().await?;
        let lower = since.unwrap_or_else(crate::time::earliest);
        let sql = format!(
            "SELECT id, attempts, max_attempts FROM queue_jobs FORCE INDEX (queue_jobs_lease) \
             WHERE lease_expires_at > ? AND lease_expires_at <= ? \
             ORDER BY lease_expires_at LIMIT {RESCUE_BATCH} FOR UPDATE SKIP LOCKED"
        );
        let leases: Vec<ExpiredLease> = self
            .q(&sql)
            .bind(At(lower))
            .bind(At(now))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| {
                Ok(ExpiredLease {
                    id: JobId(r.try_get(0)?),
                    attempt: r.try_get(1)?,
                    max_attempts: r.try_get(2)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let more = leases.len() == RESCUE_BATCH;
        // Jobs with the same decision are written by one statement.
        let mut groups: std::collections::BTreeMap<Rescue, Vec<u64>> = Default::default();
        for lease in &leases {
            groups.entry(decide(lease)).or_default().push(lease.id.0);
        }
        let (mut retried, mut dead) = (0, 0);
        for (rescue, ids) in groups {
            let list = placeholders(ids.len());
            let q = match &rescue {
                Rescue::Retry { run_at, error } => {
                    retried += ids.len() as u64;
                    let due = *run_at <= now;
                    let sql = format!(
                        "UPDATE queue_jobs SET state = ?, lease_expires_at = NULL, lease_owner = NULL, \
                         run_at = ?, scheduled_at = ?, last_error = ?, updated_at = ? WHERE id IN ({list})"
                    );
                    self.q(&sql)
                        .bind(
                            if due {
                                JobState::Ready
                            } else {
                                JobState::Scheduled
                            }
                            .as_u8(),
                        )
                        .bind(At(*run_at))
                        .bind((!due).then_some(At(*run_at)))
                        .bind(error.as_str())
                        .bind(At(now))
                }
                Rescue::Dead { error } => {
                    dead += ids.len() as u64;
                    // A dead job releases its unique key.
                    let sql = format!(
                        "UPDATE queue_jobs SET state = ?, lease_expires_at = NULL, lease_owner = NULL, \
                         dead_at = ?, unique_key = NULL, last_error = ?, updated_at = ? WHERE id IN ({list})"
                    );
                    self.q(&sql)
                        .bind(JobState::Dead.as_u8())
                        .bind(At(now))
                        .bind(error.as_str())
                        .bind(At(now))
                }
            };
            let mut q = q;
            for id in &ids {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
            if matches!(&rescue, Rescue::Retry { run_at, .. } if *run_at <= now) {
                self.index_ready_by_id(&mut tx, &ids).await?;
            }
        }
        tx.commit().await?;
        Ok((retried, dead, more))
    }

    /// Adds jobs, by id, to the claim index (in id order).
    pub(crate) async fn index_ready_by_id(
        &self,
        tx: &mut sqlx::MySqlConnection,
        ids: &[u64],
    ) -> Result<()> {
        let sql = format!(
            "INSERT INTO queue_ready (queue, priority, job_id) SELECT queue, priority, id \
             FROM queue_jobs WHERE id IN ({}) ORDER BY id",
            placeholders(ids.len())
        );
        let mut q = self.q(&sql);
        for id in ids {
            q = q.bind(*id);
        }
        q.execute(&mut *tx).await?;
        Ok(())
    }

    /// Puts ready jobs that have no row in the claim index back in it;
    /// returns how many. Only jobs that have been ready, unchanged, for a
    /// minute are looked at: a job enters the claim index in the
    /// transaction that makes it ready, so one younger than that may be
    /// in a transaction that has not committed yet. One statement; the
    /// claim index's job ids are materialized once (a full scan of both
    /// tables: run at start and every ten minutes).
    pub(crate) async fn heal_claim_index(&self, now: DateTime<Utc>) -> Result<u64> {
        let settled = crate::clock::sub(now, HEAL_AFTER);
        retry_deadlocks(|| async {
            Ok(self
                .q("INSERT INTO queue_ready (queue, priority, job_id) \
                     SELECT j.queue, j.priority, j.id FROM queue_jobs j \
                     WHERE j.state = ? AND j.updated_at < ? \
                     AND j.id NOT IN (SELECT r.job_id FROM queue_ready r) ORDER BY j.id")
                .bind(JobState::Ready.as_u8())
                .bind(At(settled))
                .execute(&self.pool)
                .await?
                .rows_affected())
        })
        .await
    }

    /// Moves scheduled jobs due at `now` into the claim index, oldest first,
    /// looking only at run times after `since` when given. Returns how many.
    pub(crate) async fn dispatch_due(
        &self,
        now: DateTime<Utc>,
        since: Option<DateTime<Utc>>,
    ) -> Result<u64> {
        let mut total = 0;
        loop {
            let (n, more) = retry_deadlocks(|| self.try_dispatch(now, since)).await?;
            total += n;
            if !more {
                return Ok(total);
            }
        }
    }

    async fn try_dispatch(
        &self,
        now: DateTime<Utc>,
        since: Option<DateTime<Utc>>,
    ) -> Result<(u64, bool)> {
        const BATCH: usize = 500;
        let mut tx = self.begin().await?;
        let lower = since.unwrap_or_else(crate::time::earliest);
        let ids: Vec<u64> = self
            .q(
                "SELECT id FROM queue_jobs FORCE INDEX (queue_jobs_scheduled) \
                 WHERE scheduled_at >= ? AND scheduled_at <= ? \
                 ORDER BY scheduled_at, id LIMIT 500 FOR UPDATE SKIP LOCKED",
            )
            .bind(At(lower))
            .bind(At(now))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok((0, false));
        }
        let list = placeholders(ids.len());
        let sql = format!(
            "UPDATE queue_jobs SET state = ?, scheduled_at = NULL, updated_at = ? WHERE id IN ({list})"
        );
        let mut q = self.q(&sql).bind(JobState::Ready.as_u8()).bind(At(now));
        for id in &ids {
            q = q.bind(*id);
        }
        q.execute(&mut *tx).await?;
        // Enter the claim index in run-time order, so `seq` follows run time.
        let sql = format!(
            "INSERT INTO queue_ready (queue, priority, job_id) SELECT queue, priority, id FROM queue_jobs \
             WHERE id IN ({list}) ORDER BY run_at, id"
        );
        let mut q = self.q(&sql);
        for id in &ids {
            q = q.bind(*id);
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok((ids.len() as u64, ids.len() == BATCH))
    }

    /// The earliest scheduled run time at or after `since` (all, if
    /// `None`), if any. Non-locking.
    pub(crate) async fn next_scheduled(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Option<DateTime<Utc>>> {
        self.q(
            "SELECT scheduled_at FROM queue_jobs FORCE INDEX (queue_jobs_scheduled) \
             WHERE scheduled_at >= ? ORDER BY scheduled_at LIMIT 1",
        )
        .bind(At(since.unwrap_or_else(crate::time::earliest)))
        .fetch_optional(&self.pool)
        .await?
        .map(|r| crate::time::stored(&r, 0))
        .transpose()
    }

    /// Whether any lease expired in `(since, now]` (non-locking).
    pub(crate) async fn any_expired(
        &self,
        now: DateTime<Utc>,
        since: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        Ok(self
            .q("SELECT 1 FROM queue_jobs FORCE INDEX (queue_jobs_lease) \
                 WHERE lease_expires_at > ? AND lease_expires_at <= ? LIMIT 1")
            .bind(At(since.unwrap_or_else(crate::time::earliest)))
            .bind(At(now))
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }
}

/// Runs `f` again when it fails with a deadlock or lock wait timeout.
pub(crate) async fn retry_deadlocks<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match f().await {
            Err(crate::Error::Database(e)) if is_retryable(&e) && attempt < 8 => {
                tracing::debug!(error = %e, attempt, "retrying after a deadlock");
                tokio::time::sleep(Duration::from_millis(
                    u64::from(attempt) * 3 + fastrand::u64(0..5),
                ))
                .await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(payload_len: usize) -> NewJob {
        NewJob {
            task: "t".into(),
            queue: "q".into(),
            priority: 2,
            payload: "x".repeat(payload_len),
            max_attempts: 1,
            deadline_ms: None,
            run_at: DateTime::<Utc>::UNIX_EPOCH,
            unique_key: None,
        }
    }

    #[test]
    fn inserts_are_cut_by_bytes_and_rows() {
        let jobs: Vec<NewJob> = (0..5).map(|_| job(1000)).collect();
        let row = row_bytes(&jobs[0]);
        assert_eq!(row, 1000 + 2 + ROW_OVERHEAD);
        let lens = |g: Vec<&[NewJob]>| g.iter().map(|g| g.len()).collect::<Vec<_>>();
        assert_eq!(lens(byte_groups(&jobs, 2000, 10 * row)), [5]);
        assert_eq!(lens(byte_groups(&jobs, 2000, 2 * row)), [2, 2, 1]);
        assert_eq!(lens(byte_groups(&jobs, 2000, 2 * row - 1)), [1, 1, 1, 1, 1]);
        assert_eq!(lens(byte_groups(&jobs, 3, 10 * row)), [3, 2]);
        // A row over the budget still goes (alone); the size check refuses
        // payloads the server cannot take before this.
        assert_eq!(lens(byte_groups(&jobs, 2000, 10)), [1, 1, 1, 1, 1]);
        assert!(byte_groups(&[], 2000, 10).is_empty());
        // 2,000 rows of 10 KB do not fit one 16 MiB packet.
        let big: Vec<NewJob> = (0..2001).map(|_| job(10_000)).collect();
        let groups = byte_groups(&big, INSERT_CHUNK, statement_budget(16 << 20));
        assert_eq!(lens(groups.clone()), [1629, 372]);
        for g in groups {
            let bytes: u64 = g.iter().map(row_bytes).sum();
            assert!(bytes <= statement_budget(16 << 20));
        }
    }

    #[test]
    fn payload_limit_leaves_room_for_the_row() {
        assert_eq!(payload_limit(16 << 20), (16 << 20) - 128 * 1024);
        assert_eq!(payload_limit(1000), 0);
    }

    #[test]
    fn mysql_ids_step_by_the_increment() {
        assert_eq!(mysql_ids(7, 1, 3), [7, 8, 9]);
        assert_eq!(mysql_ids(2, 3, 4), [2, 5, 8, 11]);
        assert_eq!(mysql_ids(5, 0, 2), [5, 6]);
        assert!(mysql_ids(5, 3, 0).is_empty());
    }

    #[test]
    fn insert_statements_take_few_shapes() {
        assert_eq!(statement_sizes(0, 2000), Vec::<usize>::new());
        assert_eq!(statement_sizes(1, 2000), [1]);
        assert_eq!(statement_sizes(1000, 2000), [512, 256, 128, 64, 32, 8]);
        assert_eq!(
            statement_sizes(4500, 2000),
            [2000, 2000, 256, 128, 64, 32, 16, 4]
        );
        let mut shapes = std::collections::BTreeSet::new();
        for n in 0..=5000 {
            let sizes = statement_sizes(n, 2000);
            assert_eq!(sizes.iter().sum::<usize>(), n, "{n}");
            assert!(sizes.len() <= n / 2000 + 11, "{n}: {sizes:?}");
            shapes.extend(sizes);
        }
        assert_eq!(
            shapes.len(),
            12,
            "2000 and the powers of two 1..=1024: {shapes:?}"
        );
    }
}
