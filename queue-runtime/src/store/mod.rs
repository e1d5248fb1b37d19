//! Every SQL statement the runtime sends. Nothing here decides policy: the
//! runtime and client call these with times from their clock.

mod claim;

use std::time::Duration;

use chrono::{DateTime, Utc};
use queue_core::{JobId, JobState};
use sqlx::mysql::MySqlArguments;
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, MySql, MySqlPool, Row};

pub(crate) use claim::{ClaimTicket, Claimed, ClaimedJob, Cursors, claim_sql};

use crate::error::{Result, is_retryable};
use crate::flavor::Flavor;

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
}

/// A time as the text of a MySQL `DATETIME(6)` literal.
pub(crate) fn sql_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
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

    /// Inserts jobs in multi-row INSERTs.
    async fn insert_plain(
        &self,
        tx: &mut sqlx::MySqlConnection,
        jobs: &[NewJob],
        now: DateTime<Utc>,
        chunk: usize,
    ) -> Result<Vec<JobId>> {
        let mut ids = Vec::with_capacity(jobs.len());
        let mut rest = jobs;
        for size in statement_sizes(jobs.len(), chunk) {
            let (part, after) = rest.split_at(size);
            rest = after;
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
                    .bind(job.run_at)
                    .bind(if due { None } else { Some(job.run_at) })
                    .bind(now)
                    .bind(now);
            }
            let res = q.execute(&mut *tx).await?;
            // A multi-row INSERT whose row count is known up front gets
            // consecutive AUTO_INCREMENT values in every
            // innodb_autoinc_lock_mode (0, 1 and 2): the first is
            // LAST_INSERT_ID().
            let first = res.last_insert_id();
            debug_assert_eq!(res.rows_affected(), part.len() as u64);
            let part_ids: Vec<u64> = (0..part.len() as u64).map(|i| first + i).collect();
            let due: Vec<(&NewJob, u64)> = part
                .iter()
                .zip(part_ids.iter().copied())
                .filter(|(j, _)| j.run_at <= now)
                .collect();
            let mut due = due.as_slice();
            for size in statement_sizes(due.len(), chunk) {
                let (rows, after) = due.split_at(size);
                due = after;
                let mut sql =
                    String::from("INSERT INTO queue_ready (queue, priority, job_id) VALUES ");
                for i in 0..rows.len() {
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str("(?, ?, ?)");
                }
                let mut q = self.q(&sql);
                for (job, id) in rows {
                    q = q.bind(&job.queue).bind(job.priority).bind(*id);
                }
                q.execute(&mut *tx).await?;
            }
            ids.extend(part_ids.into_iter().map(JobId));
        }
        Ok(ids)
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

    /// Moves a failed attempt's job to scheduled (or straight to ready when
    /// `run_at` is not after `now`), with its error.
    pub(crate) async fn retry_later(
        &self,
        id: JobId,
        attempt: u32,
        run_at: DateTime<Utc>,
        error: &str,
        now: DateTime<Utc>,
        uncount_attempt: bool,
    ) -> Result<bool> {
        retry_deadlocks(|| self.try_reschedule(id, attempt, run_at, error, now, uncount_attempt))
            .await
    }

    async fn try_reschedule(
        &self,
        id: JobId,
        attempt: u32,
        run_at: DateTime<Utc>,
        error: &str,
        now: DateTime<Utc>,
        uncount_attempt: bool,
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
            .bind(run_at)
            .bind(if due { None } else { Some(run_at) })
            .bind(error)
            .bind(u32::from(uncount_attempt))
            .bind(now)
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
    pub(crate) async fn bury(
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
                .bind(now)
                .bind(error)
                .bind(now)
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
    /// (looking only at leases after `since`, when given): back to ready, or
    /// dead when their attempts are spent. Returns (requeued, buried).
    pub(crate) async fn rescue_expired(
        &self,
        now: DateTime<Utc>,
        since: Option<DateTime<Utc>>,
    ) -> Result<(u64, u64)> {
        let mut requeued = 0;
        let mut buried = 0;
        loop {
            let (r, b, more) = retry_deadlocks(|| self.try_rescue(now, since)).await?;
            requeued += r;
            buried += b;
            if !more {
                return Ok((requeued, buried));
            }
        }
    }

    async fn try_rescue(
        &self,
        now: DateTime<Utc>,
        since: Option<DateTime<Utc>>,
    ) -> Result<(u64, u64, bool)> {
        const BATCH: usize = 200;
        let mut tx = self.begin().await?;
        let lower = since.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let rows = self
            .q(
                "SELECT id, attempts, max_attempts FROM queue_jobs FORCE INDEX (queue_jobs_lease) \
                 WHERE lease_expires_at > ? AND lease_expires_at <= ? \
                 ORDER BY lease_expires_at LIMIT 200 FOR UPDATE SKIP LOCKED",
            )
            .bind(lower)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        let more = rows.len() == BATCH;
        let mut requeue = Vec::new();
        let mut bury = Vec::new();
        for row in &rows {
            let id: u64 = row.get(0);
            let attempts: u32 = row.get(1);
            let max: u32 = row.get(2);
            if attempts >= max {
                bury.push(id)
            } else {
                requeue.push(id)
            }
        }
        if !requeue.is_empty() {
            let list = placeholders(requeue.len());
            let sql = format!(
                "UPDATE queue_jobs SET state = ?, lease_expires_at = NULL, lease_owner = NULL, run_at = ?, \
                 last_error = CONCAT('lease expired: the worker running attempt ', attempts, ' was lost'), \
                 updated_at = ? WHERE id IN ({list})"
            );
            let mut q = self
                .q(&sql)
                .bind(JobState::Ready.as_u8())
                .bind(now)
                .bind(now);
            for id in &requeue {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
            let sql = format!(
                "INSERT INTO queue_ready (queue, priority, job_id) SELECT queue, priority, id FROM queue_jobs \
                 WHERE id IN ({list}) ORDER BY id"
            );
            let mut q = self.q(&sql);
            for id in &requeue {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        if !bury.is_empty() {
            let sql = format!(
                "UPDATE queue_jobs SET state = ?, lease_expires_at = NULL, lease_owner = NULL, dead_at = ?, \
                 unique_key = NULL, last_error = CONCAT('lease expired: the worker running attempt ', attempts, ' was lost; no attempts left'), \
                 updated_at = ? WHERE id IN ({})",
                placeholders(bury.len())
            );
            let mut q = self
                .q(&sql)
                .bind(JobState::Dead.as_u8())
                .bind(now)
                .bind(now);
            for id in &bury {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok((requeue.len() as u64, bury.len() as u64, more))
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
        let lower = since.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let ids: Vec<u64> = self
            .q(
                "SELECT id FROM queue_jobs FORCE INDEX (queue_jobs_scheduled) \
                 WHERE scheduled_at >= ? AND scheduled_at <= ? \
                 ORDER BY scheduled_at, id LIMIT 500 FOR UPDATE SKIP LOCKED",
            )
            .bind(lower)
            .bind(now)
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
        let mut q = self.q(&sql).bind(JobState::Ready.as_u8()).bind(now);
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
        Ok(self
            .q(
                "SELECT scheduled_at FROM queue_jobs FORCE INDEX (queue_jobs_scheduled) \
                 WHERE scheduled_at >= ? ORDER BY scheduled_at LIMIT 1",
            )
            .bind(since.unwrap_or(DateTime::<Utc>::UNIX_EPOCH))
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get(0)))
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
            .bind(since.unwrap_or(DateTime::<Utc>::UNIX_EPOCH))
            .bind(now)
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
    use super::statement_sizes;

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
