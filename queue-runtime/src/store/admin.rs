//! The client's inspection and repair statements: counts, dead jobs, one
//! job, cancel, purge, InnoDB's history list length.
//!
//! [`DeadJob`] and [`JobInfo`] are rows as stored; they are public, and
//! re-exported by the crate's `admin` module, which builds everything else
//! it reports from what these functions return.

use chrono::{DateTime, Utc};
use queue_core::{JobId, JobState};
use sqlx::Row;

use super::{ReadyOrder, Store};
use crate::error::Result;
use crate::time::At;

/// Dead jobs deleted per statement by [`Store::purge_dead`].
const PURGE_BATCH: u64 = 1000;

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

/// How many jobs of one task are in one state in one queue.
#[derive(Clone, Debug)]
pub(crate) struct TaskCount {
    pub queue: String,
    pub state: JobState,
    pub task: String,
    pub jobs: u64,
}

impl Store {
    /// The jobs counted by queue, state and task: one statement that scans
    /// every job (a row per combination that has jobs).
    pub(crate) async fn count_jobs(&self) -> Result<Vec<TaskCount>> {
        let rows = self
            .q("SELECT queue, state, task, COUNT(*) FROM queue_jobs GROUP BY queue, state, task")
            .fetch_all(&self.pool)
            .await?;
        let mut counts = Vec::with_capacity(rows.len());
        for row in rows {
            let n: i64 = row.get(3);
            let Some(state) = JobState::from_u8(row.get(1)) else {
                continue;
            };
            counts.push(TaskCount {
                queue: row.get(0),
                state,
                task: row.get(2),
                jobs: u64::try_from(n).unwrap_or(0),
            });
        }
        Ok(counts)
    }

    /// InnoDB's history list length, from `information_schema.INNODB_METRICS`;
    /// `None` when the server does not expose it (or cannot be asked).
    pub(crate) async fn history_list_length(&self) -> Option<u64> {
        sqlx::query_scalar::<_, i64>(
            "SELECT `COUNT` FROM information_schema.INNODB_METRICS WHERE NAME = 'trx_rseg_history_len'",
        )
        .fetch_optional(&self.pool)
        .await
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
    }

    /// Up to `limit` dead jobs, newest first.
    pub(crate) async fn dead_jobs(&self, limit: u32) -> Result<Vec<DeadJob>> {
        let rows = self
            .q(
                "SELECT id, task, queue, attempts, last_error, payload, dead_at FROM queue_jobs \
                FORCE INDEX (queue_jobs_dead) WHERE dead_at IS NOT NULL AND state = ? \
                ORDER BY dead_at DESC, id DESC LIMIT ?",
            )
            .bind(JobState::Dead.as_u8())
            .bind(limit)
            .fetch_all(&self.pool)
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

    /// Makes a dead job ready to run at `now`, its attempts reset. Returns
    /// whether a dead job had this id.
    pub(crate) async fn retry_dead(&self, id: JobId, now: DateTime<Utc>) -> Result<bool> {
        let mut tx = self.begin().await?;
        let res = self
            .q(
                "UPDATE queue_jobs SET state = ?, attempts = 0, dead_at = NULL, run_at = ?, \
                updated_at = ? WHERE id = ? AND state = ?",
            )
            .bind(JobState::Ready.as_u8())
            .bind(At(now))
            .bind(At(now))
            .bind(id.0)
            .bind(JobState::Dead.as_u8())
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        self.index_ready_by_id(&mut tx, &[id.0], ReadyOrder::Id)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes a job if it is ready or scheduled; returns whether it did.
    pub(crate) async fn cancel(&self, id: JobId) -> Result<bool> {
        let n = self
            .q("DELETE FROM queue_jobs WHERE id = ? AND state IN (?, ?)")
            .bind(id.0)
            .bind(JobState::Ready.as_u8())
            .bind(JobState::Scheduled.as_u8())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Pauses `queue` (validated): returns whether it was running.
    pub(crate) async fn pause_queue(&self, queue: &str, now: DateTime<Utc>) -> Result<bool> {
        let n = self
            .q("INSERT IGNORE INTO queue_paused (queue, paused_at) VALUES (?, ?)")
            .bind(queue)
            .bind(At(now))
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Resumes `queue`: returns whether it was paused.
    pub(crate) async fn resume_queue(&self, queue: &str) -> Result<bool> {
        let n = self
            .q("DELETE FROM queue_paused WHERE queue = ?")
            .bind(queue)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// The paused queues, by name.
    pub(crate) async fn paused_queues(&self) -> Result<Vec<String>> {
        self.q("SELECT queue FROM queue_paused ORDER BY queue")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
    }

    /// Deletes the jobs that died before `cutoff`, [`PURGE_BATCH`] per
    /// statement. Returns how many.
    pub(crate) async fn purge_dead(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let sql = format!(
            "DELETE FROM queue_jobs WHERE dead_at IS NOT NULL AND dead_at < ? AND state = ? \
             LIMIT {PURGE_BATCH}"
        );
        let mut total = 0;
        loop {
            let n = self
                .q(&sql)
                .bind(At(cutoff))
                .bind(JobState::Dead.as_u8())
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += n;
            if n < PURGE_BATCH {
                return Ok(total);
            }
        }
    }

    /// One job as stored, or `None` if it does not exist.
    pub(crate) async fn job(&self, id: JobId) -> Result<Option<JobInfo>> {
        let row = self
            .q(
                "SELECT id, task, queue, priority, state, attempts, max_attempts, run_at, \
                last_error, payload FROM queue_jobs WHERE id = ?",
            )
            .bind(id.0)
            .fetch_optional(&self.pool)
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
