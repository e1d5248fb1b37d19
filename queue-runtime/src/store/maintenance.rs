//! The maintenance services' statements: rescue of expired leases, dispatch
//! of scheduled jobs that came due, healing of the claim index.

use std::time::Duration;

use chrono::{DateTime, Utc};
use queue_core::{JobId, JobState};
use sqlx::Row;

use super::outcome::{append_error, history_time};
use super::{LIMITED, ReadyOrder, Store, bind_ids, inline_list, placeholders, retry_deadlocks};
use crate::error::Result;
use crate::time::At;

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

/// A job the rescuer took back.
#[derive(Debug, Clone)]
pub(crate) struct Rescued {
    pub queue: String,
    pub task: String,
    /// Dead (no attempts left), rather than retried.
    pub dead: bool,
}

/// How long a ready job waits, unchanged, before a missing claim-index
/// row is made for it.
const HEAL_AFTER: Duration = Duration::from_secs(60);
/// Jobs a repair of the claim index puts back per statement at most.
const HEAL_BATCH: usize = 1000;

/// Scheduled jobs made ready per transaction.
const DISPATCH_BATCH: usize = 500;

impl Store {
    /// Takes back running jobs whose lease expired at or before `now`
    /// (looking only at leases after `since`, when given), each as `decide`
    /// says: back to ready (or scheduled) or dead. Returns each job taken
    /// back.
    pub(crate) async fn rescue_expired(
        &self,
        now: DateTime<Utc>,
        since: Option<DateTime<Utc>>,
        decide: &(dyn Fn(&ExpiredLease) -> Rescue + Sync),
    ) -> Result<Vec<Rescued>> {
        let mut all = Vec::new();
        loop {
            let (jobs, more) = retry_deadlocks(|| self.try_rescue(now, since, decide)).await?;
            all.extend(jobs);
            if !more {
                return Ok(all);
            }
        }
    }

    async fn try_rescue(
        &self,
        now: DateTime<Utc>,
        since: Option<DateTime<Utc>>,
        decide: &(dyn Fn(&ExpiredLease) -> Rescue + Sync),
    ) -> Result<(Vec<Rescued>, bool)> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "SELECT id, attempts, max_attempts, IF(slot = 1, concurrency_key, NULL), queue, task \
             FROM queue_jobs FORCE INDEX (queue_jobs_lease) \
             WHERE lease_expires_at > ? AND lease_expires_at <= ? \
             ORDER BY lease_expires_at LIMIT {RESCUE_BATCH} FOR UPDATE SKIP LOCKED"
        );
        let rows = self.lock_window(&mut tx, &sql, since, now).await?;
        let leases: Vec<ExpiredLease> = rows
            .iter()
            .map(|r| {
                Ok(ExpiredLease {
                    id: JobId(r.try_get(0)?),
                    attempt: r.try_get(1)?,
                    max_attempts: r.try_get(2)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        // The slots the lost workers held come back with the lease.
        let mut freed: std::collections::BTreeMap<Vec<u8>, u32> = Default::default();
        for r in &rows {
            if let Some(key) = r.try_get::<Option<Vec<u8>>, _>(3)? {
                *freed.entry(key).or_insert(0) += 1;
            }
        }
        let more = leases.len() == RESCUE_BATCH;
        // Jobs with the same decision are written by one statement.
        let mut groups: std::collections::BTreeMap<Rescue, Vec<u64>> = Default::default();
        let decisions: Vec<Rescue> = leases.iter().map(decide).collect();
        for (lease, d) in leases.iter().zip(&decisions) {
            groups.entry(d.clone()).or_default().push(lease.id.0);
        }
        let mut rescued = Vec::with_capacity(rows.len());
        for (r, d) in rows.iter().zip(&decisions) {
            rescued.push(Rescued {
                queue: r.try_get(4)?,
                task: r.try_get(5)?,
                dead: matches!(d, Rescue::Dead { .. }),
            });
        }
        for (rescue, ids) in groups {
            let list = placeholders(ids.len());
            let q = match &rescue {
                Rescue::Retry { run_at, error } => {
                    let due = *run_at <= now;
                    let sql = format!(
                        "UPDATE queue_jobs SET {}, state = ?, lease_expires_at = NULL, lease_owner = NULL, \
                         run_at = ?, scheduled_at = ?, last_error = ?, updated_at = ?, slot = 0 WHERE id IN ({list})",
                        append_error()
                    );
                    self.q(&sql)
                        .bind(history_time(now))
                        .bind(error.as_str())
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
                    // A dead job releases its unique key.
                    let sql = format!(
                        "UPDATE queue_jobs SET {}, state = ?, lease_expires_at = NULL, lease_owner = NULL, \
                         dead_at = ?, unique_key = NULL, last_error = ?, updated_at = ?, slot = 0 WHERE id IN ({list})",
                        append_error()
                    );
                    self.q(&sql)
                        .bind(history_time(now))
                        .bind(error.as_str())
                        .bind(JobState::Dead.as_u8())
                        .bind(At(now))
                        .bind(error.as_str())
                        .bind(At(now))
                }
            };
            bind_ids(q, &ids).execute(&mut *tx).await?;
            if matches!(&rescue, Rescue::Retry { run_at, .. } if *run_at <= now) {
                self.index_ready_by_id(&mut tx, &ids, ReadyOrder::Id)
                    .await?;
            }
        }
        self.release_slots(&mut tx, &freed, now).await?;
        tx.commit().await?;
        Ok((rescued, more))
    }

    /// Puts ready jobs that have no row in the claim index back in it;
    /// returns how many. Only jobs that have been ready, unchanged, for a
    /// minute are looked at: a job enters the claim index in the
    /// transaction that makes it ready, so one younger than that may be
    /// in a transaction that has not committed yet.
    ///
    /// The search is a plain read (a consistent snapshot, no locks): a
    /// full scan of both tables, run at start and hourly. Written as one
    /// `INSERT … SELECT`, it took shared locks on every row it read, so for
    /// as long as it ran (~330 ms at 1,000,000 ready jobs) every enqueue
    /// waited to insert into the claim index and every claim skipped the
    /// locked rows: the churn bench's priority-0 jobs enqueued in the first
    /// third of a second all started at its end. Only the jobs it finds
    /// (none, unless something wrote `queue_jobs` around the runtime) are
    /// then inserted, by the locking statement, limited to their ids.
    pub(crate) async fn heal_claim_index(&self, now: DateTime<Utc>) -> Result<u64> {
        let settled = crate::clock::sub(now, HEAL_AFTER);
        let missing = "FROM queue_jobs j WHERE j.state = ? AND j.updated_at < ? \
             AND j.id NOT IN (SELECT r.job_id FROM queue_ready r)";
        let mut total = 0;
        loop {
            let ids: Vec<u64> = self
                .q(&format!(
                    "SELECT j.id {missing} ORDER BY j.id LIMIT {HEAL_BATCH}"
                ))
                .bind(JobState::Ready.as_u8())
                .bind(At(settled))
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
            if ids.is_empty() {
                return Ok(total);
            }
            let n = retry_deadlocks(|| async {
                Ok(self
                    .q(&format!(
                        "INSERT INTO queue_ready (queue, priority, job_id, limited) \
                         SELECT j.queue, j.priority, j.id, {LIMITED} {missing} \
                         AND j.id IN ({}) ORDER BY j.id",
                        inline_list(ids.iter())
                    ))
                    .bind(JobState::Ready.as_u8())
                    .bind(At(settled))
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            })
            .await?;
            total += n;
            if ids.len() < HEAL_BATCH {
                return Ok(total);
            }
        }
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
        let mut tx = self.begin().await?;
        let sql = format!(
            "SELECT id FROM queue_jobs FORCE INDEX (queue_jobs_scheduled) \
             WHERE scheduled_at >= ? AND scheduled_at <= ? \
             ORDER BY scheduled_at, id LIMIT {DISPATCH_BATCH} FOR UPDATE SKIP LOCKED"
        );
        let ids: Vec<u64> = self
            .lock_window(&mut tx, &sql, since, now)
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
        bind_ids(
            self.q(&sql).bind(JobState::Ready.as_u8()).bind(At(now)),
            &ids,
        )
        .execute(&mut *tx)
        .await?;
        // Enter the claim index in run-time order, so `seq` follows run time.
        self.index_ready_by_id(&mut tx, &ids, ReadyOrder::RunAt)
            .await?;
        tx.commit().await?;
        Ok((ids.len() as u64, ids.len() == DISPATCH_BATCH))
    }

    /// The rows `sql` selects (locking) with its two parameters, the time
    /// window's ends: `since` (the earliest time, if `None`) and `now`.
    async fn lock_window(
        &self,
        tx: &mut sqlx::MySqlConnection,
        sql: &str,
        since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Vec<sqlx::mysql::MySqlRow>> {
        Ok(self
            .q(sql)
            .bind(At(since.unwrap_or_else(crate::time::earliest)))
            .bind(At(now))
            .fetch_all(&mut *tx)
            .await?)
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
