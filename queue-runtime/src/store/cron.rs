//! The `queue_cron` rows of recurring tasks: one per task, holding the last
//! tick that fired. A tick fires by moving `last_tick` forward with a
//! conditional UPDATE in the transaction that enqueues its job: only one
//! runtime finds the row still behind the tick (see `runtime::cron`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{NewJob, Store};
use crate::error::Result;
use crate::time::At;

/// A recurring task as the database knows it.
#[derive(Clone, Debug)]
pub(crate) struct CronRow {
    pub task: String,
    /// The cron expression (seconds first).
    pub expression: String,
    /// The IANA time zone it is evaluated in.
    pub timezone: String,
    /// The last tick that fired (or when the task was first registered).
    pub last_tick: DateTime<Utc>,
}

impl Store {
    /// Every recurring task registered, by name.
    pub(crate) async fn recurring(&self) -> Result<Vec<CronRow>> {
        let rows = self
            .q("SELECT task, expression, timezone, last_tick FROM queue_cron ORDER BY task")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(CronRow {
                    task: r.try_get(0)?,
                    expression: r.try_get(1)?,
                    timezone: r.try_get(2)?,
                    last_tick: crate::time::stored(r, 3)?,
                })
            })
            .collect()
    }

    /// Registers a recurring task: a new one starts from `now` (its first
    /// tick is the next one); a known one takes the new expression and
    /// time zone and keeps its last tick.
    pub(crate) async fn register_cron(
        &self,
        task: &str,
        expression: &str,
        timezone: &str,
        next_tick: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.q(
            "INSERT INTO queue_cron (task, expression, timezone, last_tick, next_tick, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE expression = VALUES(expression), timezone = VALUES(timezone), \
             updated_at = VALUES(updated_at)",
        )
        .bind(task)
        .bind(expression)
        .bind(timezone)
        .bind(At(now))
        .bind(crate::time::opt(next_tick))
        .bind(At(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The last tick that fired, per registered task.
    pub(crate) async fn last_ticks(&self) -> Result<HashMap<String, DateTime<Utc>>> {
        self.q("SELECT task, last_tick FROM queue_cron")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, crate::time::stored(r, 1)?)))
            .collect()
    }

    /// Fires `tick` of `task`: moves its last tick forward to `tick` unless
    /// it is there already, and inserts `job` (if any) in the same
    /// transaction. Returns whether this call fired it (`false`: another
    /// runtime did). On a Galera cluster the runtimes of other nodes fire
    /// the same tick at once and all but one lose at certification (1213):
    /// retried, the loser finds the tick moved and returns `false`.
    pub(crate) async fn fire_cron_tick(
        &self,
        task: &str,
        tick: DateTime<Utc>,
        next_tick: Option<DateTime<Utc>>,
        job: Option<NewJob>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        super::retry_deadlocks(|| self.try_fire_cron_tick(task, tick, next_tick, job.as_ref(), now))
            .await
    }

    async fn try_fire_cron_tick(
        &self,
        task: &str,
        tick: DateTime<Utc>,
        next_tick: Option<DateTime<Utc>>,
        job: Option<&NewJob>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let moved = self
            .q(
                "UPDATE queue_cron SET last_tick = ?, next_tick = ?, updated_at = ? \
                WHERE task = ? AND last_tick < ?",
            )
            .bind(At(tick))
            .bind(crate::time::opt(next_tick))
            .bind(At(now))
            .bind(task)
            .bind(At(tick))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if moved == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(job) = job {
            self.insert_jobs_in(&mut tx, std::slice::from_ref(job), now, 1)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
