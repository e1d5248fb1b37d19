//! The client's inspection and repair statements: counts, dead jobs, one
//! job, cancel, purge, InnoDB's history list length.
//!
//! [`DeadJob`] and [`JobInfo`] are rows as stored; they are public, and
//! re-exported by the crate's `admin` module, which builds everything else
//! it reports from what these functions return.

use chrono::{DateTime, Utc};
use queue_core::{JobId, JobState};
use sqlx::{AssertSqlSafe, Row};

use super::{ReadyOrder, Store};
use crate::error::Result;
use crate::time::At;

/// Dead jobs deleted per statement by [`Store::purge_dead`].
const PURGE_BATCH: u64 = 1000;

/// A dead job, as `client.dead_jobs()` lists it.
#[derive(Clone, Debug, serde::Serialize)]
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
#[derive(Clone, Debug, serde::Serialize)]
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
    /// What limit the job waits for, if it is held back by one: blocked
    /// for a concurrency slot, or scheduled for the rate window in which
    /// it holds a reserved start.
    pub waiting: Option<Waiting>,
    /// Every failed attempt's error, oldest first: the last 20 failed
    /// attempts only (older ones are dropped), each text cut at 2,000
    /// characters ([`last_error`](Self::last_error) keeps the whole last
    /// one). Hand-backs that did not spend an attempt (a shutdown, a task
    /// the runtime does not declare) are not in it.
    pub errors: Vec<AttemptError>,
    /// The runtime running it (its [`Runtime::owner`](crate::Runtime::owner)),
    /// while it is running.
    pub lease_owner: Option<String>,
    /// When its lease ends, while it is running.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When its row last changed.
    pub updated_at: DateTime<Utc>,
}

/// One failed attempt of a job ([`JobInfo::errors`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttemptError {
    /// The attempt's number (1-based; it starts again from 1 after
    /// [`Client::retry_dead`](crate::Client::retry_dead)).
    pub attempt: u32,
    /// When the failure was recorded.
    pub at: DateTime<Utc>,
    /// The error's text (at most 2,000 characters).
    pub error: String,
}

/// The error history as stored (a JSON array, see migration 0007);
/// entries that do not decode are skipped, text that is no JSON array is
/// no history.
pub(crate) fn parse_errors(stored: Option<&str>) -> Vec<AttemptError> {
    #[derive(serde::Deserialize)]
    struct Stored {
        attempt: u32,
        at: String,
        error: String,
    }
    let Some(text) = stored else {
        return Vec::new();
    };
    let Ok(entries) = serde_json::from_str::<Vec<serde_json::Value>>(text) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Stored>(v).ok())
        .filter_map(|e| {
            Some(AttemptError {
                attempt: e.attempt,
                at: DateTime::parse_from_rfc3339(&e.at)
                    .ok()?
                    .with_timezone(&Utc),
                error: e.error,
            })
        })
        .collect()
}

/// The limit a job waits for ([`JobInfo::waiting`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Waiting {
    /// Blocked: its task's concurrency limit (for its key, if the task has
    /// `concurrency_key`) is full. It moves to ready, holding a slot, when
    /// a job of the same limit ends.
    Concurrency {
        /// The concurrency key taken from the payload, if any.
        key: Option<String>,
    },
    /// Scheduled by its task's rate limit: it starts in the window that
    /// begins at `window`, where it holds a reserved start.
    Rate {
        /// The rate key taken from the payload, if any.
        key: Option<String>,
        /// The start of its window.
        window: DateTime<Utc>,
    },
}

/// The user's part of a stored limit key (task, U+001F, key).
pub(crate) fn user_key(stored: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stored);
    text.split_once('\u{1f}').map(|(_, k)| k.to_owned())
}

/// The task part of a stored limit key.
pub(crate) fn key_task(stored: &[u8]) -> String {
    let text = String::from_utf8_lossy(stored);
    text.split_once('\u{1f}')
        .map_or(text.as_ref(), |(t, _)| t)
        .to_owned()
}

/// A concurrency semaphore or rate window, as stored.
#[derive(Clone, Debug)]
pub(crate) struct LimitRow {
    pub key: Vec<u8>,
    /// Concurrency: slots held. Rate: starts counted in `window`.
    pub active: u64,
    pub limit: u64,
    /// Concurrency: blocked jobs. Rate: unused (counted by the caller).
    pub waiting: u64,
    /// Rate only: the window's length and its start.
    pub window: Option<(u64, DateTime<Utc>)>,
}

/// Jobs counted one by one per state at most, by [`Store::count_bounded`]
/// (a queue's claim-index rows; each other state's index entries).
pub(crate) const READY_CAP: usize = 10_000;
/// See [`READY_CAP`].
pub(crate) const STATE_CAP: usize = 10_000;
/// Jobs of each state (but ready) whose queue and task are read.
pub(crate) const SAMPLE: usize = 1_000;
/// Jobs at the head of each queue's claim index whose task is read.
pub(crate) const READY_SAMPLE: usize = 200;

/// What [`Store::count_bounded`] counted.
#[derive(Clone, Debug, Default)]
pub(crate) struct Bounded {
    /// Per queue: its claim-index rows, up to `READY_CAP + 1`.
    pub ready: Vec<(String, u64)>,
    /// Per state (scheduled, running, dead, blocked): its jobs, up to
    /// `STATE_CAP + 1`.
    pub totals: Vec<(JobState, u64)>,
    /// Jobs per queue, task and state among those read: up to
    /// `SAMPLE + 1` of each state, `READY_SAMPLE` of each queue's ready ones.
    pub sample: Vec<TaskCount>,
    /// Which entries of `sample` are of the ready samples.
    pub ready_sampled: Vec<usize>,
    /// InnoDB's estimate of the rows of `queue_jobs`.
    pub estimated_jobs: Option<u64>,
}

/// How many jobs of one task are in one state in one queue.
#[derive(Clone, Debug)]
pub(crate) struct TaskCount {
    pub queue: String,
    pub state: JobState,
    pub task: String,
    pub jobs: u64,
    /// Scheduled by a rate limit (holding a reserved start).
    pub rate_deferred: bool,
}

impl Store {
    /// Semaphores that are in use or have blocked jobs, and rate windows
    /// of the last day; at most 1,000 of each.
    pub(crate) async fn limit_rows(
        &self,
        now: DateTime<Utc>,
    ) -> Result<(Vec<LimitRow>, Vec<LimitRow>)> {
        let sems = self
            .q("SELECT s.concurrency_key, s.running, s.lim, \
                (SELECT COUNT(*) FROM queue_blocked b WHERE b.concurrency_key = s.concurrency_key) AS waiting \
                FROM queue_semaphores s HAVING s.running > 0 OR waiting > 0 \
                ORDER BY s.concurrency_key LIMIT 1000")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(LimitRow {
                    key: r.try_get(0)?,
                    active: u64::from(r.try_get::<u32, _>(1)?),
                    limit: u64::from(r.try_get::<u32, _>(2)?),
                    waiting: u64::try_from(r.try_get::<i64, _>(3)?).unwrap_or(0),
                    window: None,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let day_ago = crate::clock::sub(now, std::time::Duration::from_secs(86_400));
        let rates = self
            .q(
                "SELECT rate_key, starts, lim, window_ms, window_start FROM queue_rates \
                WHERE window_start >= ? ORDER BY rate_key LIMIT 1000",
            )
            .bind(At(day_ago))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(LimitRow {
                    key: r.try_get(0)?,
                    active: u64::from(r.try_get::<u32, _>(1)?),
                    limit: u64::from(r.try_get::<u32, _>(2)?),
                    waiting: 0,
                    window: Some((r.try_get(3)?, crate::time::stored(r, 4)?)),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((sems, rates))
    }

    /// The jobs counted by queue, state, task and whether a rate limit
    /// deferred them: one statement that scans every job (a row per
    /// combination that has jobs).
    pub(crate) async fn count_jobs(&self) -> Result<Vec<TaskCount>> {
        let rows = self
            .q(
                "SELECT queue, state, task, COUNT(*), rate_window IS NOT NULL FROM queue_jobs \
                GROUP BY queue, state, task, rate_window IS NOT NULL",
            )
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
                rate_deferred: row.try_get::<i64, _>(4).unwrap_or(0) != 0,
            });
        }
        Ok(counts)
    }

    /// Whether `queue_jobs` holds at most `n` rows: counts at most `n + 1`
    /// entries of a narrow index (every row has one), whatever the size.
    pub(crate) async fn jobs_at_most(&self, n: usize) -> Result<bool> {
        let sql = format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM queue_jobs FORCE INDEX (queue_jobs_dead) LIMIT {}) t",
            n + 1
        );
        let count: i64 = sqlx::raw_sql(AssertSqlSafe(self.limited(&sql)))
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(usize::try_from(count).unwrap_or(usize::MAX) <= n)
    }

    /// The queues with rows in the claim index (sentinels count), one
    /// primary-key seek each (a loose index scan written out: the servers
    /// scan the whole index for `DISTINCT queue`); at most `max`.
    pub(crate) async fn ready_queues(&self, max: usize) -> Result<Vec<String>> {
        let mut queues: Vec<String> = Vec::new();
        while queues.len() < max {
            let next: Option<String> = self
                .q("SELECT queue FROM queue_ready FORCE INDEX (PRIMARY) WHERE queue > ? ORDER BY queue LIMIT 1")
                .bind(queues.last().map_or("", String::as_str))
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
            match next {
                Some(q) => queues.push(q),
                None => break,
            }
        }
        Ok(queues)
    }

    /// The bounded counts of [`Bounded`], in one round trip: for each of
    /// `queues`, its claim-index rows (up to `READY_CAP + 1`) and the tasks
    /// of its first `READY_SAMPLE` of them; for scheduled, running, dead
    /// and blocked jobs, their number (up to `STATE_CAP + 1`, from the
    /// state's index alone) and the queue and task of the first `SAMPLE`.
    pub(crate) async fn count_bounded(&self, queues: &[String]) -> Result<Bounded> {
        use super::coalesced::text_literal;
        let mut statements = Vec::new();
        for q in queues {
            let q = text_literal(q);
            statements.push(format!(
                "SELECT 0, COUNT(*), {q}, NULL, 0, 0 FROM (SELECT 1 FROM queue_ready FORCE INDEX (PRIMARY) \
                 WHERE queue = {q} AND seq > 0 LIMIT {}) t",
                READY_CAP + 1
            ));
            statements.push(format!(
                "SELECT 1, COUNT(*), j.queue, j.task, CAST(j.state AS SIGNED), CAST(j.rate_window IS NOT NULL AS SIGNED) FROM \
                 (SELECT job_id FROM queue_ready FORCE INDEX (PRIMARY) WHERE queue = {q} AND seq > 0 \
                 LIMIT {READY_SAMPLE}) r JOIN queue_jobs j ON j.id = r.job_id \
                 GROUP BY j.queue, j.task, j.state, j.rate_window IS NOT NULL"
            ));
        }
        for state in [JobState::Scheduled, JobState::Running, JobState::Dead] {
            let (index, cond) = match state {
                JobState::Scheduled => ("queue_jobs_scheduled", "scheduled_at IS NOT NULL"),
                JobState::Running => ("queue_jobs_lease", "lease_expires_at IS NOT NULL"),
                _ => ("queue_jobs_dead", "dead_at IS NOT NULL"),
            };
            let n = state.as_u8();
            statements.push(format!(
                "SELECT 2, COUNT(*), NULL, NULL, {n}, 0 FROM (SELECT 1 FROM queue_jobs FORCE INDEX ({index}) \
                 WHERE {cond} LIMIT {}) t",
                STATE_CAP + 1
            ));
            statements.push(format!(
                "SELECT 3, COUNT(*), queue, task, {n}, CAST(rate_deferred AS SIGNED) FROM (SELECT queue, task, \
                 rate_window IS NOT NULL AS rate_deferred FROM queue_jobs FORCE INDEX ({index}) \
                 WHERE {cond} AND state = {n} LIMIT {}) t GROUP BY queue, task, rate_deferred",
                SAMPLE + 1
            ));
        }
        let blocked = JobState::Blocked.as_u8();
        statements.push(format!(
            "SELECT 2, COUNT(*), NULL, NULL, {blocked}, 0 FROM (SELECT 1 FROM queue_blocked LIMIT {}) t",
            STATE_CAP + 1
        ));
        statements.push(format!(
            "SELECT 3, COUNT(*), j.queue, j.task, {blocked}, 0 FROM (SELECT job_id FROM queue_blocked LIMIT {}) b \
             JOIN queue_jobs j ON j.id = b.job_id GROUP BY j.queue, j.task",
            SAMPLE + 1
        ));
        statements.push(
            "SELECT 4, CAST(TABLE_ROWS AS SIGNED), NULL, NULL, 0, 0 FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'queue_jobs'"
                .to_owned(),
        );
        let rows = sqlx::raw_sql(AssertSqlSafe(self.batch(&statements)))
            .fetch_all(&self.pool)
            .await?;
        let mut out = Bounded::default();
        for r in rows {
            let kind: i64 = r.try_get(0)?;
            let n = r
                .try_get::<Option<i64>, _>(1)?
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0);
            let state = || -> Result<JobState> {
                Ok(
                    JobState::from_u8(r.try_get::<i64, _>(4)?.try_into().unwrap_or(u8::MAX))
                        .unwrap_or(JobState::Dead),
                )
            };
            match kind {
                0 => out.ready.push((r.try_get(2)?, n)),
                2 => out.totals.push((state()?, n)),
                4 => out.estimated_jobs = Some(n),
                _ => {
                    if n == 0 {
                        continue;
                    }
                    out.sample.push(TaskCount {
                        queue: r.try_get(2)?,
                        state: state()?,
                        task: r.try_get(3)?,
                        jobs: n,
                        rate_deferred: r.try_get::<i64, _>(5)? != 0,
                    });
                    if kind == 1 {
                        out.ready_sampled.push(out.sample.len() - 1);
                    }
                }
            }
        }
        Ok(out)
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
        self.make_ready(id, JobState::Dead, "attempts = 0, dead_at = NULL", now)
            .await
    }

    /// Makes the job `id` ready to run at `now` if it is in state `from`
    /// (setting `sets` too: fixed SQL of the caller's), into the claim
    /// index by the path every dispatch takes (a slot of its concurrency
    /// key first, or blocked when the key is full), in one transaction.
    /// Returns whether a job in that state had this id.
    pub(crate) async fn make_ready(
        &self,
        id: JobId,
        from: JobState,
        sets: &'static str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE queue_jobs SET state = ?, {sets}, run_at = ?, updated_at = ? \
             WHERE id = ? AND state = ?"
        );
        super::retry_deadlocks(|| async {
            let mut tx = self.begin().await?;
            let res = self
                .q(&sql)
                .bind(JobState::Ready.as_u8())
                .bind(At(now))
                .bind(At(now))
                .bind(id.0)
                .bind(from.as_u8())
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
        })
        .await
    }

    /// Deletes a job if it is ready, scheduled or blocked (or dead too,
    /// with `dead`); returns whether it did. A slot the job held goes to
    /// the next blocked job of its key.
    pub(crate) async fn cancel(&self, id: JobId, now: DateTime<Utc>, dead: bool) -> Result<bool> {
        super::retry_deadlocks(|| async {
            let mut tx = self.begin().await?;
            let row = self
                .q("SELECT state, IF(slot = 1, concurrency_key, NULL), concurrency_key, priority \
                    FROM queue_jobs WHERE id = ? AND state IN (?, ?, ?, ?) FOR UPDATE")
                .bind(id.0)
                .bind(JobState::Ready.as_u8())
                .bind(JobState::Scheduled.as_u8())
                .bind(JobState::Blocked.as_u8())
                // A state no job has stands in for dead when it is not asked.
                .bind(if dead { JobState::Dead.as_u8() } else { u8::MAX })
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                tx.rollback().await?;
                return Ok(false);
            };
            self.q("DELETE FROM queue_jobs WHERE id = ?")
                .bind(id.0)
                .execute(&mut *tx)
                .await?;
            if row.try_get::<u8, _>(0)? == JobState::Blocked.as_u8() {
                // Under the key's semaphore lock, as every change to
                // `queue_blocked` (see `store::limits`).
                self.q("SELECT running FROM queue_semaphores WHERE concurrency_key = ? FOR UPDATE")
                    .bind(row.try_get::<Option<Vec<u8>>, _>(2)?)
                    .fetch_optional(&mut *tx)
                    .await?;
                self.q("DELETE FROM queue_blocked WHERE concurrency_key = ? AND priority = ? AND job_id = ?")
                    .bind(row.try_get::<Option<Vec<u8>>, _>(2)?)
                    .bind(row.try_get::<u8, _>(3)?)
                    .bind(id.0)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(key) = row.try_get::<Option<Vec<u8>>, _>(1)? {
                self.release_slots(&mut tx, &[(key, 1)].into(), now).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
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
                last_error, payload, concurrency_key, rate_key, rate_window, errors, lease_owner, \
                lease_expires_at, created_at, updated_at FROM queue_jobs WHERE id = ?",
            )
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let state = JobState::from_u8(r.try_get(4)?).unwrap_or(JobState::Dead);
        let waiting = if state == JobState::Blocked {
            let key: Option<Vec<u8>> = r.try_get(10)?;
            Some(Waiting::Concurrency {
                key: key.as_deref().and_then(user_key),
            })
        } else if state == JobState::Scheduled
            && let Some(window) = r.try_get::<Option<chrono::NaiveDateTime>, _>(12)?
        {
            let key: Option<Vec<u8>> = r.try_get(11)?;
            Some(Waiting::Rate {
                key: key.as_deref().and_then(user_key),
                window: window.and_utc(),
            })
        } else {
            None
        };
        Ok(Some(JobInfo {
            waiting,
            id: JobId(r.try_get(0)?),
            task: r.try_get(1)?,
            queue: r.try_get(2)?,
            priority: r.try_get(3)?,
            state,
            attempts: r.try_get(5)?,
            max_attempts: r.try_get(6)?,
            run_at: crate::time::stored(&r, 7)?,
            last_error: r.try_get(8)?,
            payload: r.try_get(9)?,
            errors: parse_errors(r.try_get::<Option<String>, _>(13)?.as_deref()),
            lease_owner: r.try_get(14)?,
            lease_expires_at: r
                .try_get::<Option<chrono::NaiveDateTime>, _>(15)
                .ok()
                .flatten()
                .map(|t| t.and_utc()),
            created_at: crate::time::stored(&r, 16)?,
            updated_at: crate::time::stored(&r, 17)?,
        }))
    }
}
