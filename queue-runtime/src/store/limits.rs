//! Cluster-wide flow control: concurrency semaphores, blocked jobs and
//! rate windows, all inside the claim's and the outcomes' own transactions.
//!
//! - A claim takes rows from the claim index as always. For the rows marked
//!   `limited` it reads the jobs' keys, locks their `queue_semaphores` and
//!   `queue_rates` rows, and decides per job ([`decide`]): run (taking a
//!   slot and counting a start), block (state `blocked`, a `queue_blocked`
//!   row), or defer to the rate window that has room (state `scheduled`
//!   with a reserved start). So a limited job never stays in the claim
//!   index to be walked past, and never blocks the rows behind it.
//! - Every end of a slot-holding job (success, retry, death, rescue,
//!   cancel) calls [`Store::release_slots`] in its own transaction: the
//!   slot goes to the first blocked job of its key (back to ready, holding
//!   it), or back to the semaphore.
//!
//! Keys are bytes (the stored form: task, U+001F, key). They are inlined
//! into statements as hex literals (`X'…'`), which cannot break out of the
//! literal.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use queue_core::{JobState, Rate};
use sqlx::{AssertSqlSafe, Row};

use super::{ReadyOrder, Store, inline_list, sql_time};
use crate::error::Result;

/// A task's limits as this runtime's registry declares them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TaskLimits {
    pub concurrency: Option<u32>,
    pub rate: Option<Rate>,
}

/// The limits of every task this runtime knows, by name.
pub(crate) type LimitTable = BTreeMap<String, TaskLimits>;

/// A claimed job with a limit to check (read in the claim transaction).
#[derive(Debug, Clone)]
pub(crate) struct LimitedJob {
    pub id: u64,
    pub task: String,
    pub concurrency_key: Option<Vec<u8>>,
    pub rate_key: Option<Vec<u8>>,
    /// Holds a slot already (handed over by a release).
    pub slot: bool,
    /// The rate window it holds a reserved start in.
    pub rate_window: Option<DateTime<Utc>>,
}

/// A semaphore as the claim found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Semaphore {
    pub running: u32,
    /// 0 when no runtime that knows the task has claimed under it yet.
    pub lim: u32,
}

/// A rate window as the claim found it: the latest window with starts
/// (counted or reserved), and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub start: DateTime<Utc>,
    pub starts: u32,
}

/// What the claim does with a limited job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Runs now.
    Run,
    /// Its concurrency limit is full: waits in `queue_blocked`.
    Block,
    /// Its rate window is spent: waits, scheduled, for the start it reserved
    /// in the window beginning at this time.
    Defer(DateTime<Utc>),
}

/// The start of the fixed window of `per` that holds `now` (windows are
/// aligned to the Unix epoch).
pub(crate) fn window_start(now: DateTime<Utc>, window_ms: u64) -> DateTime<Utc> {
    let ms = now.timestamp_millis();
    let w = i64::try_from(window_ms.max(1)).unwrap_or(i64::MAX);
    let start = ms - ms.rem_euclid(w);
    Utc.timestamp_millis_opt(start).single().unwrap_or(now)
}

fn add_ms(t: DateTime<Utc>, ms: u64) -> DateTime<Utc> {
    t.checked_add_signed(chrono::Duration::milliseconds(
        i64::try_from(ms).unwrap_or(i64::MAX),
    ))
    .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Decides, in claim order, what happens to each limited job, updating the
/// semaphores and windows it finds (in memory; the claim writes them back).
///
/// - Rate first: a job with a start reserved in the current window runs
///   without counting again; otherwise the current window must have room
///   and no earlier-deferred jobs waiting (then the start is counted), else
///   the job reserves a start in the first window with room (FIFO) and is
///   deferred to it. A reservation for a window already past counts as none.
/// - Then concurrency: a job holding a slot runs; otherwise its key's
///   semaphore must have room (the limit is this runtime's, or the one
///   stored by the last claimer that knew the task; with neither, the slot
///   is counted but never refused). A job blocked here has its start not
///   counted, so a limit never spends another's budget.
pub(crate) fn decide(
    jobs: &[LimitedJob],
    limits: &LimitTable,
    semaphores: &mut BTreeMap<Vec<u8>, Semaphore>,
    windows: &mut BTreeMap<Vec<u8>, Window>,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    jobs.iter()
        .map(|job| {
            let limit = limits.get(&job.task).copied().unwrap_or_default();
            // Rate: None = runs as far as the rate goes (and whether a start
            // must be counted), Some(t) = deferred to window t.
            let mut count_start = None;
            if let (Some(key), Some(rate)) = (&job.rate_key, limit.rate) {
                let ms = rate.window_ms();
                let current = window_start(now, ms);
                let w = windows.entry(key.clone()).or_insert(Window {
                    start: current,
                    starts: 0,
                });
                if w.start < current {
                    *w = Window {
                        start: current,
                        starts: 0,
                    };
                }
                if job.rate_window == Some(current) {
                    // Its reserved start is this window's.
                } else if w.start == current && w.starts < rate.count {
                    count_start = Some(key.clone());
                } else {
                    // Reserve in the latest window with room, or the next.
                    if w.starts >= rate.count {
                        w.start = add_ms(w.start, ms);
                        w.starts = 0;
                    }
                    w.starts += 1;
                    return Decision::Defer(w.start);
                }
            }
            if let Some(key) = job.concurrency_key.as_ref().filter(|_| !job.slot) {
                let s = semaphores
                    .entry(key.clone())
                    .or_insert(Semaphore { running: 0, lim: 0 });
                let lim = limit.concurrency.unwrap_or(s.lim);
                if lim > 0 && s.running >= lim {
                    return Decision::Block;
                }
                s.running += 1;
            }
            if let Some(key) = count_start
                && let Some(w) = windows.get_mut(&key)
            {
                w.starts += 1;
            }
            Decision::Run
        })
        .collect()
}

/// A key as a SQL hex literal.
pub(crate) fn hex(key: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(key.len() * 2 + 3);
    s.push_str("X'");
    for b in key {
        let _ = write!(s, "{b:02X}");
    }
    s.push('\'');
    s
}

fn hex_list<'a>(keys: impl IntoIterator<Item = &'a Vec<u8>>) -> String {
    keys.into_iter()
        .map(|k| hex(k))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the limited part of a claim decided, to be written by the claim's
/// last round trip.
#[derive(Debug, Default)]
pub(crate) struct LimitedPlan {
    /// Limited jobs that run (they are updated with the unlimited ones).
    pub run: Vec<u64>,
    /// Statements to run before the claim's UPDATE to running.
    pub statements: Vec<String>,
}

impl Store {
    /// Reads the limited jobs among `ids` (locking them, so that nothing
    /// else moves them before the claim commits), locks their semaphores
    /// and windows, decides, and returns what the claim writes.
    pub(crate) async fn plan_limited(
        &self,
        conn: &mut sqlx::MySqlConnection,
        ids: &[u64],
        limits: &LimitTable,
        now: DateTime<Utc>,
    ) -> Result<LimitedPlan> {
        let ready = JobState::Ready.as_u8();
        let sql = format!(
            "SELECT id, task, concurrency_key, rate_key, slot, rate_window FROM queue_jobs \
             WHERE id IN ({}) AND state = {ready} ORDER BY FIELD(id, {}) FOR UPDATE",
            inline_list(ids),
            inline_list(ids)
        );
        let rows = sqlx::raw_sql(AssertSqlSafe(self.limited(&sql)))
            .fetch_all(&mut *conn)
            .await?;
        let jobs: Vec<LimitedJob> = rows
            .iter()
            .map(|r| {
                Ok(LimitedJob {
                    id: r.try_get(0)?,
                    task: r.try_get(1)?,
                    concurrency_key: r.try_get(2)?,
                    rate_key: r.try_get(3)?,
                    slot: r.try_get::<u8, _>(4)? == 1,
                    rate_window: r
                        .try_get::<Option<chrono::NaiveDateTime>, _>(5)?
                        .map(|t| t.and_utc()),
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        if jobs.is_empty() {
            return Ok(LimitedPlan::default());
        }

        // Lock (creating where missing) the semaphores and windows, in key
        // order, and read them.
        let mut sem_keys: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
        let mut rate_keys: BTreeMap<Vec<u8>, Rate> = BTreeMap::new();
        for job in &jobs {
            let limit = limits.get(&job.task).copied().unwrap_or_default();
            if let Some(k) = job.concurrency_key.as_ref().filter(|_| !job.slot) {
                sem_keys.insert(k.clone(), limit.concurrency.unwrap_or(0));
            }
            if let (Some(k), Some(rate)) = (&job.rate_key, limit.rate) {
                rate_keys.insert(k.clone(), rate);
            }
        }
        let at = sql_time(now);
        let mut lock = Vec::new();
        if !sem_keys.is_empty() {
            let values: Vec<String> = sem_keys
                .iter()
                .map(|(k, lim)| format!("({}, 0, {lim}, '{at}')", hex(k)))
                .collect();
            lock.push(format!(
                "INSERT INTO queue_semaphores (concurrency_key, running, lim, updated_at) VALUES {} \
                 ON DUPLICATE KEY UPDATE lim = IF(VALUES(lim) > 0, VALUES(lim), lim)",
                values.join(", ")
            ));
            lock.push(format!(
                "SELECT 0, concurrency_key, running, lim, NULL FROM queue_semaphores \
                 WHERE concurrency_key IN ({})",
                hex_list(sem_keys.keys())
            ));
        }
        if !rate_keys.is_empty() {
            let values: Vec<String> = rate_keys
                .iter()
                .map(|(k, r)| {
                    format!(
                        "({}, '{}', 0, {}, {}, '{at}')",
                        hex(k),
                        sql_time(window_start(now, r.window_ms())),
                        r.count,
                        r.window_ms()
                    )
                })
                .collect();
            lock.push(format!(
                "INSERT INTO queue_rates (rate_key, window_start, starts, lim, window_ms, updated_at) \
                 VALUES {} ON DUPLICATE KEY UPDATE lim = VALUES(lim), window_ms = VALUES(window_ms)",
                values.join(", ")
            ));
            lock.push(format!(
                "SELECT 1, rate_key, starts, lim, window_start FROM queue_rates WHERE rate_key IN ({})",
                hex_list(rate_keys.keys())
            ));
        }
        let mut semaphores = BTreeMap::new();
        let mut windows = BTreeMap::new();
        if !lock.is_empty() {
            let text = lock
                .iter()
                .map(|s| self.limited(s))
                .collect::<Vec<_>>()
                .join("; ");
            for r in sqlx::raw_sql(AssertSqlSafe(text))
                .fetch_all(&mut *conn)
                .await?
            {
                let kind: i64 = r.try_get(0)?;
                let key: Vec<u8> = r.try_get(1)?;
                if kind == 0 {
                    semaphores.insert(
                        key,
                        Semaphore {
                            running: r.try_get(2)?,
                            lim: r.try_get(3)?,
                        },
                    );
                } else {
                    let start: chrono::NaiveDateTime = r.try_get(4)?;
                    windows.insert(
                        key,
                        Window {
                            start: start.and_utc(),
                            starts: r.try_get(2)?,
                        },
                    );
                }
            }
        }
        let before_sem = semaphores.clone();
        let before_win = windows.clone();
        let decisions = decide(&jobs, limits, &mut semaphores, &mut windows, now);

        let mut plan = LimitedPlan::default();
        let mut blocked = Vec::new();
        let mut deferred: Vec<(u64, DateTime<Utc>)> = Vec::new();
        for (job, d) in jobs.iter().zip(&decisions) {
            match d {
                Decision::Run => plan.run.push(job.id),
                Decision::Block => blocked.push(job.id),
                Decision::Defer(t) => deferred.push((job.id, *t)),
            }
        }
        if !blocked.is_empty() {
            let list = inline_list(&blocked);
            plan.statements.push(format!(
                "UPDATE queue_jobs SET state = {}, updated_at = '{at}' WHERE id IN ({list})",
                JobState::Blocked.as_u8()
            ));
            plan.statements.push(format!(
                "INSERT INTO queue_blocked (concurrency_key, priority, job_id) \
                 SELECT concurrency_key, priority, id FROM queue_jobs WHERE id IN ({list})"
            ));
        }
        if !deferred.is_empty() {
            let cases: String = deferred
                .iter()
                .map(|(id, t)| format!(" WHEN {id} THEN '{}'", sql_time(*t)))
                .collect();
            let list = inline_list(deferred.iter().map(|d| d.0));
            plan.statements.push(format!(
                "UPDATE queue_jobs SET state = {}, run_at = CASE id{cases} END, \
                 scheduled_at = CASE id{cases} END, rate_window = CASE id{cases} END, \
                 updated_at = '{at}' WHERE id IN ({list})",
                JobState::Scheduled.as_u8()
            ));
        }
        let changed_sem: Vec<(&Vec<u8>, &Semaphore)> = semaphores
            .iter()
            .filter(|(k, s)| before_sem.get(*k) != Some(*s))
            .collect();
        if !changed_sem.is_empty() {
            let cases: String = changed_sem
                .iter()
                .map(|(k, s)| format!(" WHEN {} THEN {}", hex(k), s.running))
                .collect();
            plan.statements.push(format!(
                "UPDATE queue_semaphores SET running = CASE concurrency_key{cases} END, \
                 updated_at = '{at}' WHERE concurrency_key IN ({})",
                hex_list(changed_sem.iter().map(|c| c.0))
            ));
        }
        let changed_win: Vec<(&Vec<u8>, &Window)> = windows
            .iter()
            .filter(|(k, w)| before_win.get(*k) != Some(*w))
            .collect();
        if !changed_win.is_empty() {
            let starts: String = changed_win
                .iter()
                .map(|(k, w)| format!(" WHEN {} THEN {}", hex(k), w.starts))
                .collect();
            let times: String = changed_win
                .iter()
                .map(|(k, w)| format!(" WHEN {} THEN '{}'", hex(k), sql_time(w.start)))
                .collect();
            plan.statements.push(format!(
                "UPDATE queue_rates SET starts = CASE rate_key{starts} END, \
                 window_start = CASE rate_key{times} END, updated_at = '{at}' \
                 WHERE rate_key IN ({})",
                hex_list(changed_win.iter().map(|c| c.0))
            ));
        }
        Ok(plan)
    }

    /// Frees `freed[key]` slots of each key (0 is allowed: then only hands
    /// over room the semaphore already has) and gives each free slot to the
    /// first blocked job of its key, which goes back to ready holding it.
    /// Runs inside the caller's transaction; returns how many jobs it
    /// unblocked.
    pub(crate) async fn release_slots(
        &self,
        conn: &mut sqlx::MySqlConnection,
        freed: &BTreeMap<Vec<u8>, u32>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        if freed.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "SELECT concurrency_key, running, lim FROM queue_semaphores \
             WHERE concurrency_key IN ({}) ORDER BY concurrency_key FOR UPDATE",
            hex_list(freed.keys())
        );
        let rows = sqlx::raw_sql(AssertSqlSafe(self.limited(&sql)))
            .fetch_all(&mut *conn)
            .await?;
        let mut running: BTreeMap<Vec<u8>, (u32, u32)> = BTreeMap::new();
        for r in &rows {
            let key: Vec<u8> = r.try_get(0)?;
            let n: u32 = r.try_get(1)?;
            let lim: u32 = r.try_get(2)?;
            let f = freed.get(&key).copied().unwrap_or(0);
            running.insert(key, (n.saturating_sub(f), lim));
        }
        // The first blocked jobs of each key with room.
        let picks: Vec<String> = running
            .iter()
            .filter(|(_, (n, lim))| lim > n)
            .map(|(k, (n, lim))| {
                self.limited(&format!(
                    "SELECT concurrency_key, priority, job_id FROM queue_blocked \
                     WHERE concurrency_key = {} ORDER BY priority, job_id LIMIT {} FOR UPDATE",
                    hex(k),
                    lim - n
                ))
            })
            .collect();
        let mut moved: Vec<(Vec<u8>, u8, u64)> = Vec::new();
        if !picks.is_empty() {
            for r in sqlx::raw_sql(AssertSqlSafe(picks.join("; ")))
                .fetch_all(&mut *conn)
                .await?
            {
                moved.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
            }
        }
        let at = sql_time(now);
        let mut writes = Vec::new();
        if !moved.is_empty() {
            let tuples: Vec<String> = moved
                .iter()
                .map(|(k, p, id)| format!("({}, {p}, {id})", hex(k)))
                .collect();
            writes.push(format!(
                "DELETE FROM queue_blocked WHERE (concurrency_key, priority, job_id) IN ({})",
                tuples.join(", ")
            ));
            let list = inline_list(moved.iter().map(|m| m.2));
            writes.push(format!(
                "UPDATE queue_jobs SET state = {}, slot = 1, run_at = '{at}', updated_at = '{at}' \
                 WHERE id IN ({list}) AND state = {}",
                JobState::Ready.as_u8(),
                JobState::Blocked.as_u8()
            ));
            for (k, ..) in &moved {
                if let Some(e) = running.get_mut(k) {
                    e.0 += 1;
                }
            }
        }
        let cases: String = running
            .iter()
            .map(|(k, (n, _))| format!(" WHEN {} THEN {n}", hex(k)))
            .collect();
        if !running.is_empty() {
            writes.push(format!(
                "UPDATE queue_semaphores SET running = CASE concurrency_key{cases} END, \
                 updated_at = '{at}' WHERE concurrency_key IN ({})",
                hex_list(running.keys())
            ));
        }
        if !writes.is_empty() {
            let text = writes
                .iter()
                .map(|s| self.limited(s))
                .collect::<Vec<_>>()
                .join("; ");
            sqlx::raw_sql(AssertSqlSafe(text))
                .execute(&mut *conn)
                .await?;
        }
        if !moved.is_empty() {
            let ids: Vec<u64> = moved.iter().map(|m| m.2).collect();
            self.index_ready_by_id(conn, &ids, ReadyOrder::Id).await?;
        }
        Ok(moved.len() as u64)
    }

    /// Hands free slots to blocked jobs wherever a semaphore has room and
    /// blocked jobs wait (a limit was raised, or the last claimer did not
    /// know the task's limit): the rescuer's safety net. Returns how many
    /// jobs it unblocked.
    pub(crate) async fn unblock_where_room(&self, now: DateTime<Utc>) -> Result<u64> {
        let keys: Vec<Vec<u8>> = sqlx::raw_sql(AssertSqlSafe(self.limited(
            "SELECT s.concurrency_key FROM queue_semaphores s WHERE s.running < s.lim \
             AND EXISTS (SELECT 1 FROM queue_blocked b WHERE b.concurrency_key = s.concurrency_key) \
             LIMIT 100",
        )))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Ok(0);
        }
        let freed: BTreeMap<Vec<u8>, u32> = keys.into_iter().map(|k| (k, 0)).collect();
        super::retry_deadlocks(|| async {
            let mut tx = self.begin().await?;
            let n = self.release_slots(&mut tx, &freed, now).await?;
            tx.commit().await?;
            Ok(n)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + ms).unwrap()
    }

    fn job(id: u64, c: Option<&str>, r: Option<&str>) -> LimitedJob {
        LimitedJob {
            id,
            task: "t".into(),
            concurrency_key: c.map(|k| k.as_bytes().to_vec()),
            rate_key: r.map(|k| k.as_bytes().to_vec()),
            slot: false,
            rate_window: None,
        }
    }

    fn table(concurrency: Option<u32>, rate: Option<Rate>) -> LimitTable {
        [("t".to_owned(), TaskLimits { concurrency, rate })].into()
    }

    #[test]
    fn concurrency_runs_up_to_the_limit_then_blocks_per_key() {
        let jobs = [
            job(1, Some("a"), None),
            job(2, Some("a"), None),
            job(3, Some("b"), None),
            job(4, Some("a"), None),
        ];
        let mut sems = BTreeMap::from([(b"a".to_vec(), Semaphore { running: 1, lim: 2 })]);
        let d = decide(
            &jobs,
            &table(Some(2), None),
            &mut sems,
            &mut BTreeMap::new(),
            t(0),
        );
        assert_eq!(
            d,
            [
                Decision::Run,
                Decision::Block,
                Decision::Run,
                Decision::Block
            ]
        );
        assert_eq!(sems[&b"a".to_vec()].running, 2);
        assert_eq!(sems[&b"b".to_vec()].running, 1);
    }

    #[test]
    fn a_job_holding_a_slot_runs_without_taking_another() {
        let mut j = job(1, Some("a"), None);
        j.slot = true;
        let mut sems = BTreeMap::from([(b"a".to_vec(), Semaphore { running: 1, lim: 1 })]);
        let d = decide(
            &[j],
            &table(Some(1), None),
            &mut sems,
            &mut BTreeMap::new(),
            t(0),
        );
        assert_eq!(d, [Decision::Run]);
        assert_eq!(sems[&b"a".to_vec()].running, 1);
    }

    #[test]
    fn rates_count_starts_and_defer_the_rest_window_by_window() {
        let rate = Rate::new(2, Duration::from_secs(1)).unwrap();
        let jobs: Vec<_> = (1..=7).map(|i| job(i, None, Some("r"))).collect();
        let mut wins = BTreeMap::new();
        let now = t(1_500);
        let d = decide(
            &jobs,
            &table(None, Some(rate)),
            &mut BTreeMap::new(),
            &mut wins,
            now,
        );
        assert_eq!(
            d,
            [
                Decision::Run,
                Decision::Run,
                Decision::Defer(t(2_000)),
                Decision::Defer(t(2_000)),
                Decision::Defer(t(3_000)),
                Decision::Defer(t(3_000)),
                Decision::Defer(t(4_000)),
            ]
        );
        assert_eq!(
            wins[&b"r".to_vec()],
            Window {
                start: t(4_000),
                starts: 1
            }
        );
        // A deferred job in its window runs without counting; a newcomer
        // queues behind the reservations.
        let mut back = job(3, None, Some("r"));
        back.rate_window = Some(t(2_000));
        let d = decide(
            &[back, job(8, None, Some("r"))],
            &table(None, Some(rate)),
            &mut BTreeMap::new(),
            &mut wins,
            t(2_100),
        );
        assert_eq!(d, [Decision::Run, Decision::Defer(t(4_000))]);
    }

    #[test]
    fn a_stale_reservation_counts_again_and_a_new_window_resets() {
        let rate = Rate::new(1, Duration::from_secs(1)).unwrap();
        let mut late = job(1, None, Some("r"));
        late.rate_window = Some(t(0));
        let mut wins = BTreeMap::from([(
            b"r".to_vec(),
            Window {
                start: t(0),
                starts: 1,
            },
        )]);
        let d = decide(
            &[late, job(2, None, Some("r"))],
            &table(None, Some(rate)),
            &mut BTreeMap::new(),
            &mut wins,
            t(5_200),
        );
        assert_eq!(d, [Decision::Run, Decision::Defer(t(6_000))]);
    }

    #[test]
    fn a_blocked_job_does_not_spend_a_start() {
        let rate = Rate::new(1, Duration::from_secs(1)).unwrap();
        let mut sems = BTreeMap::from([(b"c".to_vec(), Semaphore { running: 1, lim: 1 })]);
        let mut wins = BTreeMap::new();
        let d = decide(
            &[job(1, Some("c"), Some("r"))],
            &table(Some(1), Some(rate)),
            &mut sems,
            &mut wins,
            t(0),
        );
        assert_eq!(d, [Decision::Block]);
        assert_eq!(wins[&b"r".to_vec()].starts, 0);
    }

    #[test]
    fn unknown_limits_count_but_never_refuse() {
        let mut j = job(1, Some("a"), None);
        j.task = "other".into();
        let mut sems = BTreeMap::new();
        let d = decide(
            &[j],
            &table(Some(1), None),
            &mut sems,
            &mut BTreeMap::new(),
            t(0),
        );
        assert_eq!(d, [Decision::Run]);
        assert_eq!(sems[&b"a".to_vec()].running, 1);
    }

    #[test]
    fn windows_align_to_the_epoch_and_keys_are_hex() {
        assert_eq!(window_start(t(1_234), 1_000), t(1_000));
        assert_eq!(
            window_start(t(59_999), 60_000).timestamp_millis() % 60_000,
            0
        );
        assert_eq!(hex(b"a'\x1f"), "X'61271F'");
    }
}
