//! New jobs: multi-row INSERTs cut to the server's packet and to few
//! statement shapes, unique keys, and the due jobs' entry into the claim
//! index.

use chrono::{DateTime, Utc};
use queue_core::{JobId, JobState};
use sqlx::Row;

use super::{NewJob, Store, retry_deadlocks, value_rows};
use crate::error::{Error, Result};
use crate::flavor::Flavor;
use crate::time::At;

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
        + job.unique_key.as_ref().map_or(0, String::len)
        + job.concurrency_key.as_ref().map_or(0, String::len)
        + job.rate_key.as_ref().map_or(0, String::len)) as u64
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

impl Store {
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
        // Checked once, before the transaction begins, not on every try.
        self.check_sizes(jobs).await?;
        let ids = retry_deadlocks(|| self.try_insert_jobs(jobs, now, INSERT_CHUNK)).await?;
        crate::telemetry::enqueued(jobs);
        Ok(ids)
    }

    async fn try_insert_jobs(
        &self,
        jobs: &[NewJob],
        now: DateTime<Utc>,
        chunk: usize,
    ) -> Result<Vec<JobId>> {
        let mut tx = self.begin().await?;
        let ids = self.insert_checked_in(&mut tx, jobs, now, chunk).await?;
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
        let ids = self.insert_checked_in(tx, jobs, now, chunk).await?;
        // Counted when inserted, whether or not the caller's transaction commits.
        crate::telemetry::enqueued(jobs);
        Ok(ids)
    }

    /// [`Store::insert_jobs_in`] for jobs whose sizes were checked.
    async fn insert_checked_in(
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
        Err(Error::Busy(format!(
            "unique key {key:?} of task {}: the pending job kept changing",
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
        let mut sql = format!(
            "INSERT INTO queue_jobs (task, unique_key, queue, priority, state, payload, attempts, \
             max_attempts, deadline_ms, run_at, scheduled_at, created_at, updated_at, \
             concurrency_key, rate_key) VALUES {}",
            value_rows("(?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)", part.len())
        );
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
                .bind(At(now))
                .bind(job.concurrency_key.as_deref())
                .bind(job.rate_key.as_deref());
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
            return Err(Error::Database(sqlx::Error::Protocol(format!(
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
        let mut due: Vec<(&NewJob, u64)> = part
            .iter()
            .zip(ids.iter().copied())
            .filter(|(j, _)| j.run_at <= now)
            .collect();
        // Jobs with a concurrency limit enter the index only with a slot;
        // the others are blocked (see `limits`).
        let wanting: Vec<super::limits::Wanting> = due
            .iter()
            .filter_map(|(j, id)| {
                Some(super::limits::Wanting {
                    id: *id,
                    key: j.concurrency_key.as_ref()?.as_bytes().to_vec(),
                    priority: j.priority,
                    limit: j.concurrency_limit,
                })
            })
            .collect();
        if !wanting.is_empty() {
            let granted: std::collections::HashSet<u64> = self
                .acquire_slots(tx, &wanting)
                .await?
                .into_iter()
                .collect();
            due.retain(|(j, id)| j.concurrency_key.is_none() || granted.contains(id));
        }
        let mut due = due.as_slice();
        for size in statement_sizes(due.len(), chunk) {
            let (rows, after) = due.split_at(size);
            due = after;
            let sql = format!(
                "INSERT INTO queue_ready (queue, priority, job_id, limited) VALUES {}",
                value_rows("(?, ?, ?, ?)", rows.len())
            );
            let mut q = self.q(&sql);
            for (job, id) in rows {
                q = q
                    .bind(&job.queue)
                    .bind(job.priority)
                    .bind(*id)
                    .bind(u8::from(job.limited()));
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
            Some(job) => Err(Error::PayloadTooLarge {
                task: job.task.clone(),
                size: job.payload.len() as u64,
                limit,
            }),
            None => Ok(()),
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
            concurrency_key: None,
            concurrency_limit: None,
            rate_key: None,
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
