//! The statements of `queue_runtime::testing`: reads of pending jobs as
//! stored, for typed views and assertion messages.

use chrono::{DateTime, Utc};
use queue_core::{JobId, JobState};
use sqlx::Row;

use super::Store;
use crate::error::Result;

/// A pending (ready or scheduled) job as stored.
#[derive(Debug, Clone)]
pub(crate) struct PendingRow {
    pub id: JobId,
    pub queue: String,
    pub priority: u8,
    pub state: JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at: DateTime<Utc>,
    pub deadline_ms: Option<u64>,
    /// The key as given at enqueue (without the stored task prefix).
    pub unique_key: Option<String>,
    pub payload: String,
}

impl Store {
    /// The pending jobs of `task`, oldest first.
    pub(crate) async fn pending_jobs_of(&self, task: &str) -> Result<Vec<PendingRow>> {
        let rows = self
            .q(
                "SELECT id, queue, priority, state, attempts, max_attempts, run_at, deadline_ms, \
                unique_key, payload FROM queue_jobs WHERE task = ? AND state IN (?, ?) ORDER BY id",
            )
            .bind(task)
            .bind(JobState::Ready.as_u8())
            .bind(JobState::Scheduled.as_u8())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let key: Option<Vec<u8>> = r.try_get(8)?;
                Ok(PendingRow {
                    id: JobId(r.try_get(0)?),
                    queue: r.try_get(1)?,
                    priority: r.try_get(2)?,
                    state: JobState::from_u8(r.try_get(3)?).unwrap_or(JobState::Ready),
                    attempts: r.try_get(4)?,
                    max_attempts: r.try_get(5)?,
                    run_at: crate::time::stored(r, 6)?,
                    deadline_ms: r.try_get(7)?,
                    unique_key: key.map(|k| {
                        let k = String::from_utf8_lossy(&k);
                        k.split_once('\u{1f}')
                            .map_or_else(|| k.to_string(), |(_, key)| key.to_owned())
                    }),
                    payload: r.try_get(9)?,
                })
            })
            .collect()
    }

    /// How many jobs are pending (ready or scheduled) per task.
    pub(crate) async fn pending_counts(&self) -> Result<Vec<(String, u64)>> {
        let rows = self
            .q("SELECT task, COUNT(*) FROM queue_jobs WHERE state IN (?, ?) GROUP BY task ORDER BY task")
            .bind(JobState::Ready.as_u8())
            .bind(JobState::Scheduled.as_u8())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)?.unsigned_abs())))
            .collect()
    }

    /// The queues that have rows in the claim index (ready jobs, or rows of
    /// cancelled jobs that a claim will take away), sorted.
    pub(crate) async fn queues_with_ready(&self) -> Result<Vec<String>> {
        let rows = self
            .q("SELECT DISTINCT queue FROM queue_ready WHERE job_id <> 0 ORDER BY queue")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}
