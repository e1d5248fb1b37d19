//! What the end of an attempt writes: a success deletes its job, a failure
//! schedules it again or marks it dead; heartbeats extend leases. Every
//! write is fenced by the attempt that produced it.

use chrono::{DateTime, Utc};
use queue_core::{JobId, JobState};
use sqlx::{AssertSqlSafe, Row};

use super::claim::ClaimedJob;
use super::limits::HandOff;
use super::{ReadyOrder, Store, fence, inline_list, retry_deadlocks, sql_time};
use crate::error::Result;
use crate::time::At;

/// Jobs per fenced statement at most (complete, heartbeat, count): keeps
/// each statement's text and its row locks small.
pub(crate) const FENCE_CHUNK: usize = 500;

/// Failed attempts kept in a job's error history (`queue_jobs.errors`):
/// the last ones.
pub(crate) const ERROR_HISTORY: usize = 20;

/// Characters of each error text kept in the history (`last_error` keeps
/// the whole last one).
pub(crate) const ERROR_HISTORY_TEXT: usize = 2000;

/// The assignment that appends a failed attempt to a job's error history,
/// dropping the oldest entry past [`ERROR_HISTORY`]: for the UPDATE that
/// records a retry or a death, placed first in its `SET` (it reads
/// `attempts` before any other assignment changes it). Two parameters: the
/// time as RFC 3339 text ([`history_time`]) and the error's text.
pub(crate) fn append_error() -> String {
    format!(
        "errors = JSON_REMOVE(JSON_ARRAY_APPEND(COALESCE(errors, '[]'), '$', \
         JSON_OBJECT('attempt', attempts, 'at', ?, 'error', LEFT(?, {ERROR_HISTORY_TEXT}))), \
         IF(JSON_LENGTH(COALESCE(errors, '[]')) >= {ERROR_HISTORY}, '$[0]', '$[{ERROR_HISTORY}]'))"
    )
}

/// A time as the error history stores it.
pub(crate) fn history_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A success of a job holding a concurrency slot, for
/// [`Store::complete_slotted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlottedSuccess {
    pub id: JobId,
    pub attempt: u32,
    /// The key whose slot it held.
    pub key: Vec<u8>,
    /// Spares that ran in the slot after this job, one after the other,
    /// and succeeded before any of them was recorded as holding it
    /// (`slot = 0` in the table): deleted with it, freeing nothing.
    pub also: Vec<(JobId, u32)>,
    /// The spare (`(id, attempt)`) that holds the slot now, started in it
    /// when the last of these jobs ended: the slot is recorded as the
    /// heir's (`slot = 1`) instead of being freed.
    pub heir: Option<(JobId, u32)>,
    /// Spares of the key to ask for (handed with the release, if blocked
    /// jobs wait and the runtime has room).
    pub spares: u32,
}

/// The statement that records the heirs' slots (`slot = 1`): each only
/// while at its attempt, running under `handoff`'s owner, without a slot.
/// None without heirs (or without a runtime, which has none).
fn promote_heirs(heirs: &[(JobId, u32)], handoff: Option<&HandOff>) -> Option<String> {
    let h = handoff?;
    if heirs.is_empty() {
        return None;
    }
    Some(format!(
        "UPDATE queue_jobs SET slot = 1 WHERE ({}) AND state = {} AND slot = 0 AND lease_owner = '{}'",
        fence(heirs),
        JobState::Running.as_u8(),
        h.owner
    ))
}

/// What [`Store::complete_slotted`] did.
#[derive(Debug, Default)]
pub(crate) struct SlottedDone {
    /// Jobs deleted (still at their attempt).
    pub deleted: u64,
    /// Jobs handed the freed slots, now running under the releasing
    /// runtime's lease, and the spares handed with them (in `spares`).
    pub handed: Vec<ClaimedJob>,
    /// Of `handed`, the spares: running under the releasing runtime's lease
    /// without a slot, for a slot of their key that one of its jobs passes on.
    pub spares: std::collections::HashSet<u64>,
    /// Heirs whose slot could not be recorded (their predecessor had lost
    /// its lease, or they had): they hold none.
    pub disinherited: Vec<JobId>,
    /// Jobs handed the freed slots that went into the claim index instead
    /// (for any runtime to claim).
    pub indexed: u64,
}

impl Store {
    /// Deletes succeeded jobs, each only while still at its attempt.
    pub(crate) async fn complete(&self, done: &[(JobId, u32)]) -> Result<u64> {
        let mut total = 0;
        for part in done.chunks(FENCE_CHUNK) {
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

    /// Deletes succeeded jobs that hold a concurrency slot (each only while
    /// still at its attempt) and hands their slots on, in one transaction
    /// of two round trips in the common case (every job still at its
    /// attempt, a blocked job waiting for each freed slot): the DELETE with
    /// the recording of the heirs' slots and the locking pick of the next
    /// blocked jobs (past `handoff`'s cursors), then the hand-overs with
    /// the COMMIT, without the semaphores' lock. A job with an heir frees
    /// nothing: its slot is the heir's. With a `handoff`, each success also
    /// asks for one spare of its key (the runtime's next heir). Slots nobody
    /// took are released under the semaphores' lock
    /// ([`Store::release_slots`]), in a third round trip.
    pub(crate) async fn complete_slotted(
        &self,
        done: &[SlottedSuccess],
        now: DateTime<Utc>,
        handoff: Option<&HandOff>,
    ) -> Result<SlottedDone> {
        let mut out = SlottedDone::default();
        for part in done.chunks(FENCE_CHUNK) {
            let fenced: Vec<(JobId, u32)> = part
                .iter()
                .flat_map(|d| std::iter::once((d.id, d.attempt)).chain(d.also.iter().copied()))
                .collect();
            let heirs: Vec<(JobId, u32)> = part.iter().filter_map(|d| d.heir).collect();
            // Only a job still running at its attempt holds its slot: one
            // whose lease expired was taken back by a rescue, which freed
            // the slot already (and left its attempt as it was).
            let running = JobState::Running.as_u8();
            let (n, moved, jobs, spares, disinherited) = retry_deadlocks(|| async {
                let mut conn = self.pool.acquire().await?;
                let result = async {
                    // Fast path, two round trips: the DELETE, the heirs'
                    // slots and the locking pick of the next blocked jobs
                    // of each key with an unlocked look at the semaphores
                    // (as if every job was still at its attempt), then the
                    // hand-overs with the COMMIT. A freed slot that a
                    // blocked job takes leaves its semaphore's count
                    // unchanged, so the hot semaphore row of a busy key is
                    // not locked at all, and several of these transactions
                    // commit side by side.
                    let mut freed = std::collections::BTreeMap::new();
                    let mut want = std::collections::BTreeMap::new();
                    for d in part {
                        if d.heir.is_none() {
                            *freed.entry(d.key.clone()).or_insert(0u32) += 1;
                        }
                        if d.spares > 0
                            && handoff.is_some_and(|h| h.room > 0 && !h.queues.is_empty())
                        {
                            *want.entry(d.key.clone()).or_insert(0u32) += d.spares;
                        }
                    }
                    let mut pick = freed.clone();
                    for (k, w) in &want {
                        *pick.entry(k.clone()).or_insert(0) += w;
                    }
                    let after =
                        handoff.map_or_else(Default::default, |h| h.cursors.after(pick.keys()));
                    let mut sql = vec![
                        self.begin_sql().to_owned(),
                        self.limited(&format!(
                            "DELETE FROM queue_jobs WHERE ({}) AND state = {running}",
                            fence(&fenced)
                        )),
                    ];
                    if let Some(promote) = promote_heirs(&heirs, handoff) {
                        sql.push(self.limited(&promote));
                    }
                    if !pick.is_empty() {
                        sql.push(
                            self.limited(&super::limits::pick_blocked_after_sql(
                                &pick, &after, true,
                            )),
                        );
                    }
                    if !freed.is_empty() {
                        sql.push(self.limited(&format!(
                            "SELECT 0, concurrency_key, running, lim FROM queue_semaphores \
                             WHERE concurrency_key IN ({})",
                            super::limits::hex_list(freed.keys())
                        )));
                    }
                    let mut affected = Vec::new();
                    let mut rows = Vec::new();
                    {
                        use futures_util::TryStreamExt;
                        let mut results =
                            sqlx::raw_sql(AssertSqlSafe(sql.join("; "))).fetch_many(&mut *conn);
                        // The begin's results first (a Galera begin's
                        // marker INSERT counts a row).
                        let mut begin = self.begin_results();
                        while let Some(item) = results.try_next().await? {
                            match item {
                                sqlx::Either::Left(_) if begin > 0 => begin -= 1,
                                sqlx::Either::Left(done) => affected.push(done.rows_affected()),
                                sqlx::Either::Right(row) => rows.push(row),
                            }
                        }
                    }
                    let n = affected.first().copied().unwrap_or(0);
                    let promoted = if heirs.is_empty() {
                        0
                    } else {
                        affected.get(1).copied().unwrap_or(0)
                    };
                    if n as usize == fenced.len() && promoted as usize == heirs.len() {
                        let picked = super::limits::read_release_rows(&rows, handoff)?;
                        let fast = super::limits::fast_release(
                            &picked.semaphores,
                            &picked.waiting,
                            &freed,
                            &want,
                            handoff.map_or(0, |h| h.room),
                        );
                        if let Some(h) = handoff {
                            h.cursors.advance(&fast.moved);
                        }
                        let spares: std::collections::HashSet<u64> =
                            fast.spares.iter().copied().collect();
                        let (mut writes, handed) = fast.writes(&picked.jobs, handoff, now);
                        if fast.rest.is_empty() {
                            let jobs = self
                                .release_write(&mut conn, writes, handed, Some(self.commit_sql()))
                                .await?;
                            return Ok::<_, crate::error::Error>((
                                n,
                                fast.moved.len() as u64,
                                jobs,
                                spares,
                                Vec::new(),
                            ));
                        }
                        // Slots no blocked job took (or a semaphore with
                        // room beyond them): released under the semaphores'
                        // lock, after the hand-over above (the last write).
                        let last = writes.len().checked_sub(1);
                        writes.extend(super::limits::release_reads(&fast.rest));
                        let (affected, reads) = self.run_batch(&mut conn, &writes, None).await?;
                        let mut jobs = self
                            .handed(
                                &mut conn,
                                handed,
                                last.and_then(|i| affected.get(i).copied()),
                            )
                            .await?;
                        let rest_handoff = handoff.map(|h| HandOff {
                            room: h.room.saturating_sub(fast.direct.len()),
                            ..h.clone()
                        });
                        let plan =
                            self.release_plan(&reads, &fast.rest, now, rest_handoff.as_ref())?;
                        let moved = fast.moved.len() as u64 + plan.moved;
                        jobs.extend(
                            self.release_write(
                                &mut conn,
                                plan.writes,
                                plan.handed,
                                Some(self.commit_sql()),
                            )
                            .await?,
                        );
                        return Ok::<_, crate::error::Error>((n, moved, jobs, spares, Vec::new()));
                    }
                    // Some were taken by another runtime (a lost lease), or
                    // an heir was: start again, locking the jobs still at
                    // their attempt and the heirs first, so that exactly
                    // the slots of those without a recorded heir are freed.
                    sqlx::raw_sql(self.rollback_sql())
                        .execute(&mut *conn)
                        .await?;
                    let sql = format!(
                        "{}; {}",
                        self.begin_sql(),
                        self.limited(&format!(
                            "SELECT id FROM queue_jobs WHERE ({}) AND state = {running} FOR UPDATE",
                            fence(&fenced)
                        ))
                    );
                    let held = sqlx::raw_sql(AssertSqlSafe(sql))
                        .fetch_all(&mut *conn)
                        .await?
                        .iter()
                        .map(|r| r.try_get::<u64, _>(0))
                        .collect::<Result<std::collections::HashSet<_>, _>>()?;
                    // Each heir still this runtime's, and whether its slot
                    // is already recorded (by an earlier try whose reply was
                    // lost: its predecessor is then gone).
                    let heir_slots: std::collections::HashMap<u64, bool> =
                        match (handoff, heirs.is_empty()) {
                            (Some(h), false) => {
                                let sql = format!(
                                    "SELECT id, slot = 1 FROM queue_jobs WHERE ({}) AND state = {} \
                                 AND lease_owner = '{}' FOR UPDATE",
                                    fence(&heirs),
                                    JobState::Running.as_u8(),
                                    h.owner
                                );
                                sqlx::raw_sql(self.sql(&sql))
                                    .fetch_all(&mut *conn)
                                    .await?
                                    .iter()
                                    .map(|r| {
                                        Ok((r.try_get::<u64, _>(0)?, r.try_get::<i64, _>(1)? != 0))
                                    })
                                    .collect::<Result<_>>()?
                            }
                            _ => Default::default(),
                        };
                    let mut freed = std::collections::BTreeMap::new();
                    let mut promote = Vec::new();
                    let mut disinherited = Vec::new();
                    for d in part {
                        let heir = d.heir.map(|(h, a)| (h, a, heir_slots.get(&h.0).copied()));
                        match (held.contains(&d.id.0), heir) {
                            (true, Some((h, a, Some(false)))) => promote.push((h, a)),
                            // (An heir already holding its slot has a
                            // predecessor that is gone: not this case.)
                            (true, Some((_, _, Some(true)))) => {}
                            // The heir is no longer this runtime's (its lease
                            // was lost): the slot is freed, the heir holds none.
                            (true, Some((h, _, None))) => {
                                *freed.entry(d.key.clone()).or_insert(0u32) += 1;
                                disinherited.push(h);
                            }
                            (true, None) => *freed.entry(d.key.clone()).or_insert(0u32) += 1,
                            (false, Some((_, _, Some(true)))) => {}
                            (false, Some((h, _, _))) => disinherited.push(h),
                            (false, None) => {}
                        }
                    }
                    if !held.is_empty() {
                        let sql = format!(
                            "DELETE FROM queue_jobs WHERE id IN ({})",
                            inline_list(held.iter())
                        );
                        sqlx::raw_sql(self.sql(&sql)).execute(&mut *conn).await?;
                    }
                    if let Some(sql) = promote_heirs(&promote, handoff) {
                        sqlx::raw_sql(self.sql(&sql)).execute(&mut *conn).await?;
                    }
                    let n = held.len() as u64;
                    let (moved, jobs) = if freed.is_empty() {
                        (0, Vec::new())
                    } else {
                        self.release_slots_to(&mut conn, &freed, now, handoff)
                            .await?
                    };
                    sqlx::raw_sql(self.commit_sql()).execute(&mut *conn).await?;
                    Ok::<_, crate::error::Error>((n, moved, jobs, Default::default(), disinherited))
                }
                .await;
                if result.is_err() {
                    self.roll_back_or_close(&mut conn).await;
                }
                result
            })
            .await?;
            out.deleted += n;
            out.indexed += moved.saturating_sub(jobs.len() as u64);
            out.handed.extend(jobs);
            out.spares.extend(spares);
            out.disinherited.extend(disinherited);
        }
        Ok(out)
    }

    /// How many of these jobs exist.
    pub(crate) async fn count_existing(&self, ids: &[JobId]) -> Result<u64> {
        let mut total = 0;
        for part in ids.chunks(FENCE_CHUNK) {
            let list = inline_list(part.iter().map(|id| id.0));
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
    /// `run_at` is not after `now`), with its error. `(id, attempt)` fences
    /// the write.
    pub(crate) async fn retry_later(
        &self,
        (id, attempt): (JobId, u32),
        run_at: DateTime<Utc>,
        error: &str,
        now: DateTime<Utc>,
        refund_attempt: bool,
        slot: Option<&[u8]>,
    ) -> Result<bool> {
        let due = run_at <= now;
        retry_deadlocks(|| async {
            let mut tx = self.begin().await?;
            // A hand-back (refunded) is no failed attempt: not in the history.
            let history = if refund_attempt { String::new() } else { format!("{}, ", append_error()) };
            let sql = format!(
                "UPDATE queue_jobs SET {history}state = ?, run_at = ?, scheduled_at = ?, lease_expires_at = NULL, \
                 lease_owner = NULL, last_error = ?, attempts = attempts - ?, updated_at = ?, slot = 0 \
                 WHERE id = ? AND attempts = ? AND state = ?"
            );
            let mut q = self.q(&sql);
            if !refund_attempt {
                q = q.bind(history_time(now)).bind(error);
            }
            let res = q
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
                self.index_ready_by_id(&mut tx, &[id.0], ReadyOrder::Id)
                    .await?;
            }
            if let Some(key) = slot {
                self.release_slots(&mut tx, &[(key.to_vec(), 1)].into(), now)
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Marks a job dead with its error, only while still at `attempt`.
    pub(crate) async fn mark_dead(
        &self,
        id: JobId,
        attempt: u32,
        error: &str,
        now: DateTime<Utc>,
        slot: Option<&[u8]>,
    ) -> Result<bool> {
        // A dead job releases its unique key, and its slot.
        let sql = format!(
            "UPDATE queue_jobs SET {}, state = ?, dead_at = ?, lease_expires_at = NULL, lease_owner = NULL, \
             unique_key = NULL, last_error = ?, updated_at = ?, slot = 0 \
             WHERE id = ? AND attempts = ? AND state = ?",
            append_error()
        );
        let update = || {
            self.q(&sql)
                .bind(history_time(now))
                .bind(error)
                .bind(JobState::Dead.as_u8())
                .bind(At(now))
                .bind(error)
                .bind(At(now))
                .bind(id.0)
                .bind(attempt)
                .bind(JobState::Running.as_u8())
        };
        let n = retry_deadlocks(|| async {
            let Some(key) = slot else {
                return Ok(update().execute(&self.pool).await?.rows_affected());
            };
            let mut tx = self.begin().await?;
            let n = update().execute(&mut *tx).await?.rows_affected();
            if n > 0 {
                self.release_slots(&mut tx, &[(key.to_vec(), 1)].into(), now)
                    .await?;
            }
            tx.commit().await?;
            Ok(n)
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
        for part in jobs.chunks(FENCE_CHUNK) {
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
}
