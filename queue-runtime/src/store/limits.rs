//! Cluster-wide flow control: concurrency semaphores, blocked jobs and
//! rate windows, all inside the claim's and the outcomes' own transactions.
//!
//! - Concurrency is settled *before* a job enters the claim index: every
//!   way into it ([`Store::index_ready_by_id`], and the enqueue's insert)
//!   takes a slot of the job's key for it ([`Store::acquire_slots`]), or,
//!   when the key's limit is full, blocks the job (state `blocked`, a
//!   `queue_blocked` row) outside the index. So the claim path is the
//!   unlimited one, no limited job is ever walked past or claimed twice,
//!   and none blocks the rows behind it.
//! - Every end of a slot-holding job (success, retry, death, rescue,
//!   cancel) calls [`Store::release_slots`] in its own transaction: the
//!   slot goes to the first blocked job of its key (to ready, holding it),
//!   or back to the semaphore.
//! - Rates are counted at claim: for rows marked `limited` the claim reads
//!   the jobs' rate keys, locks their `queue_rates` rows and decides per
//!   job ([`decide`]): run (counting a start) or defer to the first window
//!   with room (state `scheduled` with a reserved start; a slot it held
//!   goes to the next blocked job).
//!
//! Keys are bytes (the stored form: task, U+001F, key). They are inlined
//! into statements as hex literals (`X'…'`), which cannot break out of the
//! literal.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeZone, Utc};
use queue_core::{JobId, JobState, Rate};
use sqlx::{AssertSqlSafe, Row};

use super::claim::ClaimedJob;
use super::{Store, inline_list, sql_time};
use crate::error::Result;

/// A task's limits as this runtime's registry declares them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TaskLimits {
    pub concurrency: Option<u32>,
    pub rate: Option<Rate>,
}

/// The limits of every task this runtime knows, by name.
pub(crate) type LimitTable = BTreeMap<String, TaskLimits>;

/// A claimed job with a rate limit to check (read in the claim transaction).
#[derive(Debug, Clone)]
pub(crate) struct LimitedJob {
    pub id: u64,
    pub task: String,
    pub rate_key: Option<Vec<u8>>,
    /// The concurrency key whose slot it holds, if any.
    pub slot: Option<Vec<u8>>,
    /// The rate window it holds a reserved start in.
    pub rate_window: Option<DateTime<Utc>>,
}

/// A job that needs a concurrency slot to become ready.
#[derive(Debug, Clone)]
pub(crate) struct Wanting {
    pub id: u64,
    pub key: Vec<u8>,
    pub priority: u8,
    /// The task's limit as the caller knows it (the enqueuer does), else
    /// the one stored with the semaphore.
    pub limit: Option<u32>,
}

/// A semaphore as stored: slots held, and the limit (0 when no process
/// that knows the task's limit has written it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Semaphore {
    pub running: u32,
    pub lim: u32,
}

/// A rate window as the claim found it: the latest window with starts
/// (counted or reserved), and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub start: DateTime<Utc>,
    pub starts: u32,
}

/// What the claim does with a rate-limited job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Runs now.
    Run,
    /// Its rate window is spent: waits, scheduled, for the start it reserved
    /// in the window beginning at this time.
    Defer(DateTime<Utc>),
}

/// The start of the fixed window of `window_ms` that holds `now` (windows
/// are aligned to the Unix epoch).
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

/// Decides, in claim order, whether each rate-limited job starts now,
/// updating the windows it finds (in memory; the claim writes them back).
///
/// A job with a start reserved in the current window runs without counting
/// again; otherwise the current window must have room and no earlier
/// deferred jobs waiting (then the start is counted), else the job
/// reserves a start in the first window with room (FIFO) and is deferred
/// to it. A reservation for a window already past counts as none. A job of
/// a task this runtime does not know the rate of runs.
pub(crate) fn decide(
    jobs: &[LimitedJob],
    limits: &LimitTable,
    windows: &mut BTreeMap<Vec<u8>, Window>,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    jobs.iter()
        .map(|job| {
            let limit = limits.get(&job.task).copied().unwrap_or_default();
            let (Some(key), Some(rate)) = (&job.rate_key, limit.rate) else {
                return Decision::Run;
            };
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
                Decision::Run
            } else if w.start == current && w.starts < rate.count {
                w.starts += 1;
                Decision::Run
            } else {
                // Reserve in the latest window with room, or the next.
                if w.starts >= rate.count {
                    w.start = add_ms(w.start, ms);
                    w.starts = 0;
                }
                w.starts += 1;
                Decision::Defer(w.start)
            }
        })
        .collect()
}

/// Which of `wanting` (in order) get a slot, given the semaphores: a job
/// gets one while its key has room; a key with no known limit (0) grants
/// every slot asked (counted, never refused). Updates `semaphores`.
pub(crate) fn grant(
    wanting: &[Wanting],
    semaphores: &mut BTreeMap<Vec<u8>, Semaphore>,
) -> Vec<bool> {
    wanting
        .iter()
        .map(|w| {
            let s = semaphores.entry(w.key.clone()).or_insert(Semaphore {
                running: 0,
                lim: w.limit.unwrap_or(0),
            });
            if s.lim > 0 && s.running >= s.lim {
                false
            } else {
                s.running += 1;
                true
            }
        })
        .collect()
}

/// The statement that locks and reads the first blocked jobs of each key
/// of `freed` (as many as it freed; up to 100 for a sweep's 0), with their
/// queue and whether they have a rate limit, for a release that holds the
/// keys' semaphore locks: one branch per key, each reading `queue_blocked`
/// in primary-key order (plan-checked in the tests), `FOR UPDATE`. A
/// release that hands its slot on without the semaphore's lock
/// (`Store::complete_slotted`'s fast path) locks the jobs it hands on too
/// ([`pick_blocked_after_sql`], `SKIP LOCKED`), so two releases never pick
/// the same job.
pub(crate) fn pick_blocked_sql(freed: &BTreeMap<Vec<u8>, u32>) -> String {
    pick_blocked_after_sql(freed, &BTreeMap::new(), false)
}

/// [`pick_blocked_sql`], each key with a cursor in `after` reading only
/// past it: the jobs of the cursor's priority after the last one this
/// runtime picked ([`BlockedCursors`]). The head of a busy key's range is
/// where the delete-marked records of the jobs picked before lie until
/// purge removes them, and a locking read from the head walks all of them
/// (measured here: ~0.7 ms per pick of a key with 30,000 blocked jobs being
/// drained, however few rows it returned). One range only: every range of
/// a multi-range read starts with such a walk when its own part of the key
/// is empty (a read for the empty priorities 0 and 1 walks the head of
/// priority 2's garbage twice).
pub(crate) fn pick_blocked_after_sql(
    freed: &BTreeMap<Vec<u8>, u32>,
    after: &BTreeMap<Vec<u8>, (u8, u64)>,
    fast: bool,
) -> String {
    // Many keys that each freed one slot (a limit of 1 per customer, say):
    // one statement reads the first blocked job of each, through its
    // semaphore's row, without a branch (and its optimisation) per key,
    // and locks only the jobs it returns. It reads from the head of each
    // key, cursor or not: the head of a key that frees one slot at a time
    // holds few delete-marked records, while a branch per key cost ~0.1 ms
    // each (13 ms for the pick of a 130-key release, 1,000 keys, measured
    // in the bench's `limits`; the one statement made that run ~1.7x as fast). A key whose first job another
    // release has locked returns nothing here; its slot is then released
    // under the semaphore's lock (`fast` false: one branch per key, which
    // skips to the next job).
    let ones: Vec<&Vec<u8>> = freed
        .iter()
        .filter(|(_, f)| **f == 1)
        .map(|(k, _)| k)
        .collect();
    let together = fast && ones.len() >= ONE_STATEMENT_KEYS;
    // The fast path never waits: a job another release has locked is
    // skipped (that release hands it on, or rolls back and its retry does).
    // Under the semaphores' lock the pick waits for such a job instead:
    // skipping it there could free the slot while the job stays blocked
    // (its holder rolled back), stranding it until the safety sweep.
    let skip = if fast { " SKIP LOCKED" } else { "" };
    let mut picks: Vec<String> = freed
        .iter()
        .filter(|(k, _)| !(together && ones.contains(k)))
        .map(|(k, f)| {
            let n = if *f == 0 { 100 } else { *f };
            let past = after.get(k).map_or(String::new(), |(p, id)| {
                format!(" AND b.priority = {p} AND b.job_id > {id}")
            });
            format!(
                "(SELECT 1, b.concurrency_key, b.priority, b.job_id, {PICKED_JOB} \
                 FROM queue_blocked b JOIN queue_jobs j ON j.id = b.job_id \
                 WHERE b.concurrency_key = {}{past} ORDER BY b.priority, b.job_id LIMIT {n} \
                 FOR UPDATE{skip})",
                hex(k)
            )
        })
        .collect();
    if together {
        picks.push(format!(
            "(SELECT 1, t.k, j.priority, j.id, {PICKED_JOB} FROM \
             (SELECT s.concurrency_key AS k, (SELECT b.job_id FROM queue_blocked b \
             WHERE b.concurrency_key = s.concurrency_key ORDER BY b.priority, b.job_id LIMIT 1) AS first \
             FROM queue_semaphores s WHERE s.concurrency_key IN ({})) t \
             JOIN queue_jobs j ON j.id = t.first FOR UPDATE SKIP LOCKED)",
            hex_list(ones)
        ));
    }
    picks.join(" UNION ALL ")
}

/// What a pick reads of each blocked job after its tag, key, priority and
/// id: whether the releasing runtime may take it (its queue, no rate
/// limit) and, for one it takes, what a claim would read back
/// ([`read_release_rows`]), so that a hand-over needs no read of its own.
const PICKED_JOB: &str = "j.queue, j.rate_key IS NULL, j.task, j.payload, j.attempts, \
     j.max_attempts, j.deadline_ms, j.run_at";

/// Keys that each freed one slot, at least, for [`pick_blocked_after_sql`]
/// to read them in one statement.
const ONE_STATEMENT_KEYS: usize = 4;

/// Per concurrency key, the last blocked job this runtime handed a slot to
/// (its priority and id): its fast releases read past it instead of
/// walking the delete-marked records at the head of the key's range (see
/// [`pick_blocked_after_sql`]).
///
/// A job can wait *behind* a cursor: a job of a higher priority, a
/// scheduled or retried job (an older id) blocked later, or a job another
/// release locked and then rolled back. So a cursor lives [`CURSOR_LIFE`]
/// at most; the next release of its key reads from the head again and
/// starts a new one. A release that finds fewer blocked jobs past the
/// cursor than it freed slots goes on under the semaphore's lock, reading
/// from the head. So a job behind a cursor waits a second longer at most,
/// and priorities within one key hold to within that second. At most
/// [`CURSOR_KEYS`] keys are remembered (all are forgotten beyond).
#[derive(Debug, Default)]
pub(crate) struct BlockedCursors {
    keys: std::sync::Mutex<std::collections::HashMap<Vec<u8>, BlockedCursor>>,
}

#[derive(Debug)]
struct BlockedCursor {
    last: (u8, u64),
    born: std::time::Instant,
}

/// How long a cursor over a key's blocked jobs is used before a release
/// reads from the head of the key's range again.
pub(crate) const CURSOR_LIFE: std::time::Duration = std::time::Duration::from_secs(1);
/// Keys with a cursor at most.
pub(crate) const CURSOR_KEYS: usize = 10_000;

impl BlockedCursors {
    /// The cursors to read past, for those of `keys` that have a live one.
    pub(crate) fn after<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a Vec<u8>>,
    ) -> BTreeMap<Vec<u8>, (u8, u64)> {
        let mut map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = BTreeMap::new();
        for k in keys {
            match map.get(k) {
                Some(c) if c.born.elapsed() < CURSOR_LIFE => {
                    out.insert(k.clone(), c.last);
                }
                Some(_) => {
                    map.remove(k);
                }
                None => {}
            }
        }
        out
    }

    /// Moves the cursors past the jobs just picked `(key, priority, id)`.
    pub(crate) fn advance(&self, picked: &[(Vec<u8>, u8, u64)]) {
        let mut map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() + picked.len() > CURSOR_KEYS {
            map.clear();
        }
        for (k, p, id) in picked {
            let c = map.entry(k.clone()).or_insert_with(|| BlockedCursor {
                last: (*p, *id),
                born: std::time::Instant::now(),
            });
            c.last = c.last.max((*p, *id));
        }
    }
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

pub(crate) fn hex_list<'a>(keys: impl IntoIterator<Item = &'a Vec<u8>>) -> String {
    keys.into_iter()
        .map(|k| hex(k))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a release's reads returned.
#[derive(Debug, Default)]
pub(crate) struct ReleaseRows {
    /// Per key, the semaphore's `(running, lim)` (rows tagged 0).
    pub semaphores: BTreeMap<Vec<u8>, (u32, u32)>,
    /// Per key, the blocked jobs picked, in order, as `(priority, id,
    /// whether the releasing runtime can run it at once)` (rows tagged 1).
    pub waiting: BTreeMap<Vec<u8>, Vec<(u8, u64, bool)>>,
    /// The picked jobs the releasing runtime can run, as it will run them
    /// once a hand-over has counted their attempt.
    pub jobs: HashMap<u64, ClaimedJob>,
}

pub(crate) fn read_release_rows(
    rows: &[sqlx::mysql::MySqlRow],
    handoff: Option<&HandOff>,
) -> Result<ReleaseRows> {
    let mut out = ReleaseRows::default();
    for r in rows {
        let key: Vec<u8> = r.try_get(1)?;
        if r.try_get::<i64, _>(0)? == 0 {
            out.semaphores.insert(key, (r.try_get(2)?, r.try_get(3)?));
            continue;
        }
        let p: u8 = r.try_get(2)?;
        let id: u64 = r.try_get(3)?;
        let queue: String = r.try_get(4)?;
        let no_rate = r.try_get::<i64, _>(5)? != 0;
        let mut direct = no_rate && handoff.is_some_and(|h| h.queues.contains(&queue));
        if direct {
            match picked_job(r, id, queue, &key) {
                Ok(job) => {
                    out.jobs.insert(id, job);
                }
                Err(e) => {
                    // Through the claim index instead, whose claim reports it.
                    tracing::warn!(job.id = id, error = %e, "a blocked job cannot be read for a hand-over");
                    direct = false;
                }
            }
        }
        out.waiting.entry(key).or_default().push((p, id, direct));
    }
    Ok(out)
}

/// A picked job (its row's [`PICKED_JOB`] columns) as the releasing
/// runtime runs it after the hand-over: at its next attempt, holding its
/// key's slot.
fn picked_job(r: &sqlx::mysql::MySqlRow, id: u64, queue: String, key: &[u8]) -> Result<ClaimedJob> {
    Ok(ClaimedJob {
        id: JobId(id),
        task: r.try_get(6)?,
        queue,
        priority: r.try_get(2)?,
        payload: r.try_get(7)?,
        attempt: r.try_get::<u32, _>(8)?.saturating_add(1),
        max_attempts: r.try_get(9)?,
        deadline_ms: r.try_get(10)?,
        run_at: crate::time::stored(r, 11)?,
        slot: Some(key.to_vec()),
    })
}

/// The reads of a release: the semaphores of `freed`'s keys, locked, and
/// the first blocked jobs of each key.
pub(crate) fn release_reads(freed: &BTreeMap<Vec<u8>, u32>) -> Vec<String> {
    vec![
        format!(
            "SELECT 0, concurrency_key, running, lim FROM queue_semaphores \
             WHERE concurrency_key IN ({}) ORDER BY concurrency_key FOR UPDATE",
            hex_list(freed.keys())
        ),
        pick_blocked_sql(freed),
    ]
}

/// The statements that unblock `moved` jobs `(key, priority, id)`: out of
/// `queue_blocked`, and those not in `direct` (handed straight to a
/// runtime by [`hand_over`]) to ready, holding their slot, into the claim
/// index.
fn move_blocked(moved: &[(Vec<u8>, u8, u64)], direct: &[u64], at: &str) -> Vec<String> {
    let mut writes = Vec::new();
    if moved.is_empty() {
        return writes;
    }
    // By primary-key prefix (key, priority), then ids.
    let mut groups: BTreeMap<(&Vec<u8>, u8), Vec<u64>> = BTreeMap::new();
    for (k, p, id) in moved {
        groups.entry((k, *p)).or_default().push(*id);
    }
    let conds: Vec<String> = groups
        .iter()
        .map(|((k, p), ids)| {
            format!(
                "(concurrency_key = {} AND priority = {p} AND job_id IN ({}))",
                hex(k),
                inline_list(ids)
            )
        })
        .collect();
    writes.push(format!(
        "DELETE FROM queue_blocked WHERE {}",
        conds.join(" OR ")
    ));
    let list = inline_list(moved.iter().map(|m| m.2).filter(|id| !direct.contains(id)));
    if !list.is_empty() {
        writes.push(format!(
            "UPDATE queue_jobs SET state = {}, slot = 1, run_at = '{at}', updated_at = '{at}' \
             WHERE id IN ({list}) AND state = {}",
            JobState::Ready.as_u8(),
            JobState::Blocked.as_u8()
        ));
        writes.push(format!(
            "INSERT INTO queue_ready (queue, priority, job_id, limited) \
             SELECT queue, priority, id, {} FROM queue_jobs WHERE id IN ({list}) ORDER BY id",
            super::LIMITED
        ));
    }
    writes
}

/// The statement that makes the `direct` jobs running under `h`'s lease,
/// as a claim would, and the one that reads them back. The read is needed
/// only if the first did not change them all (it locked them when it
/// picked them, so it does): the jobs as the pick read them are what is
/// handed over ([`Handed`]). Those in `spares` are handed without a slot
/// (`slot = 0`): the runtime holds them for a slot of their key that one of
/// its own jobs will pass on when it ends ([`Store::complete_slotted`]).
fn hand_over(direct: &[u64], spares: &[u64], h: &HandOff, at: &str) -> Option<(String, String)> {
    if direct.is_empty() {
        return None;
    }
    let list = inline_list(direct);
    let owner = &h.owner;
    debug_assert!(
        owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    );
    let slot = if spares.is_empty() {
        "1".to_owned()
    } else {
        format!("IF(id IN ({}), 0, 1)", inline_list(spares))
    };
    Some((
        format!(
            "UPDATE queue_jobs SET state = {running}, slot = {slot}, attempts = attempts + 1, \
             lease_expires_at = '{lease}', lease_owner = '{owner}', updated_at = '{at}', \
             rate_window = NULL WHERE id IN ({list}) AND state = {blocked}",
            running = JobState::Running.as_u8(),
            blocked = JobState::Blocked.as_u8(),
            lease = sql_time(h.lease_until),
        ),
        format!(
            "SELECT id, task, queue, priority, payload, attempts, max_attempts, deadline_ms, run_at, \
             concurrency_key FROM queue_jobs WHERE id IN ({list}) \
             AND state = {running} AND lease_owner = '{owner}' AND updated_at = '{at}' ORDER BY priority, id",
            running = JobState::Running.as_u8(),
        ),
    ))
}

/// Jobs a release hands to the releasing runtime: its writes' last
/// statement makes them running ([`hand_over`]).
#[derive(Debug, Default)]
pub(crate) struct Handed {
    /// As the pick read them, at their next attempt.
    pub jobs: Vec<ClaimedJob>,
    /// Reads them back: for a hand-over that did not change them all.
    pub read_back: Option<String>,
}

impl Handed {
    /// The jobs `direct` (in order), their hand-over's statements appended
    /// to `writes`.
    fn new(
        direct: &[u64],
        spares: &[u64],
        jobs: &HashMap<u64, ClaimedJob>,
        handoff: Option<&HandOff>,
        at: &str,
        writes: &mut Vec<String>,
    ) -> Handed {
        let Some((update, read_back)) = handoff.and_then(|h| hand_over(direct, spares, h, at))
        else {
            return Handed::default();
        };
        writes.push(update);
        Handed {
            jobs: direct
                .iter()
                .filter_map(|id| jobs.get(id).cloned())
                .collect(),
            read_back: Some(read_back),
        }
    }
}

/// The fast path of a release that freed `freed` slots (per key), from its
/// first round trip's rows: the semaphores read without a lock and the
/// first blocked jobs, locked (as many as `freed` and `want` ask for).
/// Every freed slot that a picked job takes leaves its semaphore's count as
/// it is, so those hand-overs need no semaphore lock. The picked jobs past
/// those, up to `want[key]`, become the releasing runtime's spares (they
/// must be runnable by it; the rest stay blocked). Returns the jobs moved
/// `(key, priority, id)`, those of them the releasing runtime runs at once
/// and holds as spares (`room` at most, the slots' next jobs first), and
/// what is left for the locked release: per key, the slots no picked job
/// took (0 for a key whose semaphore has room beyond them, or none).
pub(crate) fn fast_release(
    semaphores: &BTreeMap<Vec<u8>, (u32, u32)>,
    waiting: &BTreeMap<Vec<u8>, Vec<(u8, u64, bool)>>,
    freed: &BTreeMap<Vec<u8>, u32>,
    want: &BTreeMap<Vec<u8>, u32>,
    room: usize,
) -> FastRelease {
    let mut out = FastRelease::default();
    let picked = |k: &Vec<u8>| waiting.get(k).map_or(&[][..], |w| &w[..]);
    for (k, &f) in freed {
        let picked = picked(k);
        let taken = picked.len().min(f as usize);
        for &(p, id, d) in &picked[..taken] {
            out.moved.push((k.clone(), p, id));
            if d && out.direct.len() < room {
                out.direct.push(id);
            }
        }
        let left = f - taken as u32;
        let spare = semaphores.get(k).is_none_or(|&(n, lim)| n < lim);
        if left > 0 || spare {
            out.rest.insert(k.clone(), left);
        }
    }
    for (k, &w) in want {
        let skip = freed.get(k).copied().unwrap_or(0) as usize;
        let runnable = picked(k).iter().skip(skip).filter(|(_, _, d)| *d);
        for &(p, id, _) in runnable.take(w as usize) {
            if out.direct.len() >= room {
                break;
            }
            out.moved.push((k.clone(), p, id));
            out.direct.push(id);
            out.spares.push(id);
        }
    }
    out
}

/// What [`fast_release`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FastRelease {
    pub moved: Vec<(Vec<u8>, u8, u64)>,
    pub direct: Vec<u64>,
    /// Of `direct`, the spares (handed without a slot).
    pub spares: Vec<u64>,
    pub rest: BTreeMap<Vec<u8>, u32>,
}

impl FastRelease {
    /// Its writes: the moves and the hand-over (last), and the jobs handed.
    pub(crate) fn writes(
        &self,
        jobs: &HashMap<u64, ClaimedJob>,
        handoff: Option<&HandOff>,
        now: DateTime<Utc>,
    ) -> (Vec<String>, Handed) {
        let at = sql_time(now);
        let mut w = move_blocked(&self.moved, &self.direct, &at);
        let handed = Handed::new(&self.direct, &self.spares, jobs, handoff, &at, &mut w);
        (w, handed)
    }
}

/// A runtime that can take unblocked jobs straight from a release
/// ([`Store::release_slots_to`]).
#[derive(Debug, Clone)]
pub(crate) struct HandOff {
    /// Its owner id (`rt-<hex>`).
    pub owner: String,
    /// The lease it gives the jobs.
    pub lease_until: DateTime<Utc>,
    /// The queues it serves that may take jobs now (not paused, no queue
    /// limit of their own).
    pub queues: Vec<String>,
    /// How many jobs it can take (its free slots and prefetch).
    pub room: usize,
    /// Where its releases read each key's blocked jobs from.
    pub cursors: std::sync::Arc<BlockedCursors>,
}

/// What a release writes ([`Store::release_plan`]).
#[derive(Debug, Default)]
pub(crate) struct ReleasePlan {
    /// Jobs unblocked.
    pub moved: u64,
    /// The statements.
    pub writes: Vec<String>,
    /// The jobs handed to the releasing runtime by the last statement.
    pub handed: Handed,
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
    /// Reads the rate-limited jobs among `ids` (locking them, so that
    /// nothing else moves them before the claim commits), locks their rate
    /// windows, decides, and returns what the claim writes. Deferred jobs
    /// give the concurrency slots they held to the next blocked jobs, here,
    /// in the claim's transaction.
    pub(crate) async fn plan_limited(
        &self,
        conn: &mut sqlx::MySqlConnection,
        ids: &[u64],
        limits: &LimitTable,
        now: DateTime<Utc>,
    ) -> Result<LimitedPlan> {
        let ready = JobState::Ready.as_u8();
        let sql = format!(
            "SELECT id, task, rate_key, IF(slot = 1, concurrency_key, NULL), rate_window FROM queue_jobs \
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
                    rate_key: r.try_get(2)?,
                    slot: r.try_get(3)?,
                    rate_window: r
                        .try_get::<Option<chrono::NaiveDateTime>, _>(4)?
                        .map(|t| t.and_utc()),
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        if jobs.is_empty() {
            return Ok(LimitedPlan::default());
        }

        // Lock (creating where missing) the windows, in key order, and read them.
        let mut rate_keys: BTreeMap<Vec<u8>, Rate> = BTreeMap::new();
        for job in &jobs {
            let limit = limits.get(&job.task).copied().unwrap_or_default();
            if let (Some(k), Some(rate)) = (&job.rate_key, limit.rate) {
                rate_keys.insert(k.clone(), rate);
            }
        }
        let at = sql_time(now);
        let mut windows = BTreeMap::new();
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
            let lock = [
                format!(
                    "INSERT INTO queue_rates (rate_key, window_start, starts, lim, window_ms, updated_at) \
                     VALUES {} ON DUPLICATE KEY UPDATE lim = VALUES(lim), window_ms = VALUES(window_ms)",
                    values.join(", ")
                ),
                format!(
                    "SELECT rate_key, starts, window_start FROM queue_rates WHERE rate_key IN ({})",
                    hex_list(rate_keys.keys())
                ),
            ];
            let text = self.batch(&lock);
            for r in sqlx::raw_sql(AssertSqlSafe(text))
                .fetch_all(&mut *conn)
                .await?
            {
                let start: chrono::NaiveDateTime = r.try_get(2)?;
                windows.insert(
                    r.try_get::<Vec<u8>, _>(0)?,
                    Window {
                        start: start.and_utc(),
                        starts: r.try_get(1)?,
                    },
                );
            }
        }
        let before = windows.clone();
        let decisions = decide(&jobs, limits, &mut windows, now);

        let mut plan = LimitedPlan::default();
        let mut deferred: Vec<(u64, DateTime<Utc>)> = Vec::new();
        let mut freed: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
        for (job, d) in jobs.iter().zip(&decisions) {
            match d {
                Decision::Run => plan.run.push(job.id),
                Decision::Defer(t) => {
                    deferred.push((job.id, *t));
                    if let Some(key) = &job.slot {
                        *freed.entry(key.clone()).or_insert(0) += 1;
                    }
                }
            }
        }
        if !deferred.is_empty() {
            let cases: String = deferred
                .iter()
                .map(|(id, t)| format!(" WHEN {id} THEN '{}'", sql_time(*t)))
                .collect();
            let list = inline_list(deferred.iter().map(|d| d.0));
            // Written now, before the slots they held are handed over.
            let sql = format!(
                "UPDATE queue_jobs SET state = {}, slot = 0, run_at = CASE id{cases} END, \
                 scheduled_at = CASE id{cases} END, rate_window = CASE id{cases} END, \
                 updated_at = '{at}' WHERE id IN ({list})",
                JobState::Scheduled.as_u8()
            );
            sqlx::raw_sql(AssertSqlSafe(self.limited(&sql)))
                .execute(&mut *conn)
                .await?;
            self.release_slots(conn, &freed, now).await?;
        }
        let changed: Vec<(&Vec<u8>, &Window)> = windows
            .iter()
            .filter(|(k, w)| before.get(*k) != Some(*w))
            .collect();
        if !changed.is_empty() {
            let starts: String = changed
                .iter()
                .map(|(k, w)| format!(" WHEN {} THEN {}", hex(k), w.starts))
                .collect();
            let times: String = changed
                .iter()
                .map(|(k, w)| format!(" WHEN {} THEN '{}'", hex(k), sql_time(w.start)))
                .collect();
            plan.statements.push(format!(
                "UPDATE queue_rates SET starts = CASE rate_key{starts} END, \
                 window_start = CASE rate_key{times} END, updated_at = '{at}' \
                 WHERE rate_key IN ({})",
                hex_list(changed.iter().map(|c| c.0))
            ));
        }
        Ok(plan)
    }

    /// Takes a concurrency slot for each of `wanting` (in order) whose key
    /// has room, and blocks the others (state `blocked`, a `queue_blocked`
    /// row), inside the caller's transaction. Returns the ids granted a
    /// slot: the caller puts them in the claim index.
    pub(crate) async fn acquire_slots(
        &self,
        conn: &mut sqlx::MySqlConnection,
        wanting: &[Wanting],
    ) -> Result<Vec<u64>> {
        if wanting.is_empty() {
            return Ok(Vec::new());
        }
        // The limit: the enqueuer's, or this program's declaration of the
        // task, or (0) the one stored by the last process that knew it.
        let declared = crate::registry::declared_limits();
        let wanting: Vec<Wanting> = wanting
            .iter()
            .map(|w| {
                let mut w = w.clone();
                if w.limit.is_none() {
                    w.limit = declared
                        .get(&super::admin::key_task(&w.key))
                        .and_then(|l| l.concurrency);
                }
                w
            })
            .collect();
        let wanting = &wanting[..];
        let mut keys: BTreeMap<&[u8], u32> = BTreeMap::new();
        for w in wanting {
            let e = keys.entry(&w.key).or_insert(0);
            *e = (*e).max(w.limit.unwrap_or(0));
        }
        let values: Vec<String> = keys
            .iter()
            .map(|(k, lim)| format!("({}, 0, {lim}, UTC_TIMESTAMP(6))", hex(k)))
            .collect();
        let list = keys.keys().map(|k| hex(k)).collect::<Vec<_>>().join(", ");
        let lock = [
            format!(
                "INSERT INTO queue_semaphores (concurrency_key, running, lim, updated_at) VALUES {} \
                 ON DUPLICATE KEY UPDATE lim = IF(VALUES(lim) > 0, VALUES(lim), lim)",
                values.join(", ")
            ),
            format!(
                "SELECT concurrency_key, running, lim FROM queue_semaphores WHERE concurrency_key IN ({list})"
            ),
        ];
        let text = self.batch(&lock);
        let mut semaphores = BTreeMap::new();
        for r in sqlx::raw_sql(AssertSqlSafe(text))
            .fetch_all(&mut *conn)
            .await?
        {
            semaphores.insert(
                r.try_get::<Vec<u8>, _>(0)?,
                Semaphore {
                    running: r.try_get(1)?,
                    lim: r.try_get(2)?,
                },
            );
        }
        let before = semaphores.clone();
        let granted = grant(wanting, &mut semaphores);
        let (yes, no): (Vec<_>, Vec<_>) = wanting.iter().zip(&granted).partition(|(_, g)| **g);
        let mut writes = Vec::new();
        let changed: Vec<(&Vec<u8>, &Semaphore)> = semaphores
            .iter()
            .filter(|(k, s)| before.get(*k) != Some(*s))
            .collect();
        if !changed.is_empty() {
            let cases: String = changed
                .iter()
                .map(|(k, s)| format!(" WHEN {} THEN {}", hex(k), s.running))
                .collect();
            writes.push(format!(
                "UPDATE queue_semaphores SET running = CASE concurrency_key{cases} END, \
                 updated_at = UTC_TIMESTAMP(6) WHERE concurrency_key IN ({})",
                hex_list(changed.iter().map(|c| c.0))
            ));
        }
        if !yes.is_empty() {
            writes.push(format!(
                "UPDATE queue_jobs SET slot = 1 WHERE id IN ({})",
                inline_list(yes.iter().map(|(w, _)| w.id))
            ));
        }
        if !no.is_empty() {
            writes.push(format!(
                "UPDATE queue_jobs SET state = {} WHERE id IN ({})",
                JobState::Blocked.as_u8(),
                inline_list(no.iter().map(|(w, _)| w.id))
            ));
            let rows: Vec<String> = no
                .iter()
                .map(|(w, _)| format!("({}, {}, {})", hex(&w.key), w.priority, w.id))
                .collect();
            writes.push(format!(
                "INSERT INTO queue_blocked (concurrency_key, priority, job_id) VALUES {}",
                rows.join(", ")
            ));
        }
        if !writes.is_empty() {
            let text = self.batch(&writes);
            sqlx::raw_sql(AssertSqlSafe(text))
                .execute(&mut *conn)
                .await?;
        }
        Ok(yes.iter().map(|(w, _)| w.id).collect())
    }

    /// Frees `freed[key]` slots of each key (0 is allowed: then only hands
    /// over room the semaphore already has) and gives each free slot to the
    /// first blocked job of its key, which goes to ready holding it and
    /// into the claim index. Runs inside the caller's transaction, in two
    /// round trips: the semaphores and the first blocked jobs of each key
    /// are locked and read together (as many as were freed, the room a
    /// full semaphore gets), then everything is written. Returns how many
    /// jobs it unblocked.
    pub(crate) async fn release_slots(
        &self,
        conn: &mut sqlx::MySqlConnection,
        freed: &BTreeMap<Vec<u8>, u32>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let (n, _) = self.release_slots_to(conn, freed, now, None).await?;
        Ok(n)
    }

    /// [`Store::release_slots`], handing the unblocked jobs that `handoff`
    /// can run (its queues, no rate limit) straight to it: they become
    /// running under its lease in this transaction, as a claim would make
    /// them, and are returned, so a freed slot starts its next job without
    /// a trip through the claim index.
    pub(crate) async fn release_slots_to(
        &self,
        conn: &mut sqlx::MySqlConnection,
        freed: &BTreeMap<Vec<u8>, u32>,
        now: DateTime<Utc>,
        handoff: Option<&HandOff>,
    ) -> Result<(u64, Vec<ClaimedJob>)> {
        if freed.is_empty() {
            return Ok((0, Vec::new()));
        }
        let rows = sqlx::raw_sql(AssertSqlSafe(self.batch(&release_reads(freed))))
            .fetch_all(&mut *conn)
            .await?;
        let plan = self.release_plan(&rows, freed, now, handoff)?;
        let moved = plan.moved;
        let handed = self
            .release_write(conn, plan.writes, plan.handed, None)
            .await?;
        Ok((moved, handed))
    }

    /// What a release writes, from the rows its reads returned.
    pub(crate) fn release_plan(
        &self,
        rows: &[sqlx::mysql::MySqlRow],
        freed: &BTreeMap<Vec<u8>, u32>,
        now: DateTime<Utc>,
        handoff: Option<&HandOff>,
    ) -> Result<ReleasePlan> {
        let ReleaseRows {
            semaphores,
            waiting,
            jobs,
        } = read_release_rows(rows, handoff)?;
        let mut running: BTreeMap<Vec<u8>, (u32, u32)> = semaphores
            .into_iter()
            .map(|(key, (n, lim))| {
                let f = freed.get(&key).copied().unwrap_or(0);
                (key, (n.saturating_sub(f), lim))
            })
            .collect();
        let mut moved: Vec<(Vec<u8>, u8, u64)> = Vec::new();
        let mut direct: Vec<u64> = Vec::new();
        for (k, (n, lim)) in &mut running {
            let room = lim.saturating_sub(*n) as usize;
            for &(p, id, d) in waiting.get(k).map_or(&[][..], |w| &w[..]).iter().take(room) {
                moved.push((k.clone(), p, id));
                if d && direct.len() < handoff.map_or(0, |h| h.room) {
                    direct.push(id);
                }
                *n += 1;
            }
        }
        let at = sql_time(now);
        let mut writes = move_blocked(&moved, &direct, &at);
        if !running.is_empty() {
            let cases: String = running
                .iter()
                .map(|(k, (n, _))| format!(" WHEN {} THEN {n}", hex(k)))
                .collect();
            writes.push(format!(
                "UPDATE queue_semaphores SET running = CASE concurrency_key{cases} END, \
                 updated_at = '{at}' WHERE concurrency_key IN ({})",
                hex_list(running.keys())
            ));
        }
        let handed = Handed::new(&direct, &[], &jobs, handoff, &at, &mut writes);
        Ok(ReleasePlan {
            moved: moved.len() as u64,
            writes,
            handed,
        })
    }

    /// Runs a release's writes, whose last statement hands `handed` over
    /// (then `tail`, such as `COMMIT`, in the same round trip); returns the
    /// jobs handed to the releasing runtime.
    pub(crate) async fn release_write(
        &self,
        conn: &mut sqlx::MySqlConnection,
        writes: Vec<String>,
        handed: Handed,
        tail: Option<&str>,
    ) -> Result<Vec<ClaimedJob>> {
        let last = writes.len().checked_sub(1);
        if writes.is_empty() && tail.is_none() {
            return Ok(Vec::new());
        }
        let (affected, _) = self.run_batch(conn, &writes, tail).await?;
        self.handed(conn, handed, last.and_then(|i| affected.get(i).copied()))
            .await
    }

    /// Runs statements, each with the runtime's statement limit, then
    /// `tail` as it is (such as the commit's statements), as one round trip:
    /// each statement's affected rows (the tail's last, by position), and
    /// the rows they returned.
    pub(crate) async fn run_batch(
        &self,
        conn: &mut sqlx::MySqlConnection,
        statements: &[String],
        tail: Option<&str>,
    ) -> Result<(Vec<u64>, Vec<sqlx::mysql::MySqlRow>)> {
        use futures_util::TryStreamExt;
        let mut affected = Vec::new();
        let mut rows = Vec::new();
        let text = match (self.batch(statements), tail) {
            (w, Some(t)) if w.is_empty() => t.to_owned(),
            (w, Some(t)) => format!("{w}; {t}"),
            (w, None) => w,
        };
        let mut results = sqlx::raw_sql(AssertSqlSafe(text)).fetch_many(conn);
        while let Some(item) = results.try_next().await? {
            match item {
                sqlx::Either::Left(done) => affected.push(done.rows_affected()),
                sqlx::Either::Right(row) => rows.push(row),
            }
        }
        Ok((affected, rows))
    }

    /// The jobs a hand-over that changed `changed` rows gave this runtime:
    /// as picked when it changed them all, else as read back.
    pub(crate) async fn handed(
        &self,
        conn: &mut sqlx::MySqlConnection,
        handed: Handed,
        changed: Option<u64>,
    ) -> Result<Vec<ClaimedJob>> {
        let Some(read_back) = handed.read_back else {
            return Ok(Vec::new());
        };
        if changed == Some(handed.jobs.len() as u64) {
            return Ok(handed.jobs);
        }
        tracing::warn!(
            handed = handed.jobs.len(),
            changed,
            "a hand-over did not change every job it picked: reading them back"
        );
        let mut jobs = Vec::new();
        for r in sqlx::raw_sql(self.sql(&read_back))
            .fetch_all(&mut *conn)
            .await?
        {
            match super::claim::decode_claimed(&r) {
                Ok(job) => jobs.push(job),
                Err(e) => {
                    tracing::error!(error = %e, "a job handed a freed slot cannot be decoded; left to its lease");
                }
            }
        }
        Ok(jobs)
    }

    /// Deletes semaphores nobody holds or waits for, unchanged for an hour,
    /// and rate windows more than two days old (a window is at most a day):
    /// keys come and go (a customer id per key), their rows should not stay.
    /// A pruned row is made again by the next job of its key. Returns how
    /// many rows it deleted.
    pub(crate) async fn prune_limits(&self, now: DateTime<Utc>) -> Result<u64> {
        let hour_ago = crate::clock::sub(now, std::time::Duration::from_secs(3600));
        let two_days_ago = crate::clock::sub(now, std::time::Duration::from_secs(2 * 86_400));
        let a = self
            .q(
                "DELETE FROM queue_semaphores WHERE running = 0 AND updated_at < ? \
                AND NOT EXISTS (SELECT 1 FROM queue_blocked b \
                WHERE b.concurrency_key = queue_semaphores.concurrency_key) LIMIT 10000",
            )
            .bind(crate::time::At(hour_ago))
            .execute(&self.pool)
            .await?
            .rows_affected();
        let b = self
            .q("DELETE FROM queue_rates WHERE window_start < ? LIMIT 10000")
            .bind(crate::time::At(two_days_ago))
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(a + b)
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

    fn job(id: u64, r: Option<&str>) -> LimitedJob {
        LimitedJob {
            id,
            task: "t".into(),
            rate_key: r.map(|k| k.as_bytes().to_vec()),
            slot: None,
            rate_window: None,
        }
    }

    fn table(rate: Option<Rate>) -> LimitTable {
        [(
            "t".to_owned(),
            TaskLimits {
                concurrency: None,
                rate,
            },
        )]
        .into()
    }

    fn want(id: u64, key: &str, limit: Option<u32>) -> Wanting {
        Wanting {
            id,
            key: key.as_bytes().to_vec(),
            priority: 2,
            limit,
        }
    }

    #[test]
    fn slots_are_granted_up_to_the_limit_per_key() {
        let mut sems = BTreeMap::from([(b"a".to_vec(), Semaphore { running: 1, lim: 2 })]);
        let g = grant(
            &[
                want(1, "a", Some(2)),
                want(2, "a", Some(2)),
                want(3, "b", Some(1)),
                want(4, "b", Some(1)),
            ],
            &mut sems,
        );
        assert_eq!(g, [true, false, true, false]);
        assert_eq!(sems[&b"a".to_vec()].running, 2);
        assert_eq!(sems[&b"b".to_vec()].running, 1);
    }

    #[test]
    fn an_unknown_limit_counts_but_never_refuses() {
        let mut sems = BTreeMap::new();
        let g = grant(&[want(1, "a", None), want(2, "a", None)], &mut sems);
        assert_eq!(g, [true, true]);
        assert_eq!(sems[&b"a".to_vec()], Semaphore { running: 2, lim: 0 });
    }

    #[test]
    fn rates_count_starts_and_defer_the_rest_window_by_window() {
        let rate = Rate::new(2, Duration::from_secs(1)).unwrap();
        let jobs: Vec<_> = (1..=7).map(|i| job(i, Some("r"))).collect();
        let mut wins = BTreeMap::new();
        let d = decide(&jobs, &table(Some(rate)), &mut wins, t(1_500));
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
        let mut back = job(3, Some("r"));
        back.rate_window = Some(t(2_000));
        let d = decide(
            &[back, job(8, Some("r"))],
            &table(Some(rate)),
            &mut wins,
            t(2_100),
        );
        assert_eq!(d, [Decision::Run, Decision::Defer(t(4_000))]);
    }

    #[test]
    fn a_stale_reservation_counts_again_and_a_new_window_resets() {
        let rate = Rate::new(1, Duration::from_secs(1)).unwrap();
        let mut late = job(1, Some("r"));
        late.rate_window = Some(t(0));
        let mut wins = BTreeMap::from([(
            b"r".to_vec(),
            Window {
                start: t(0),
                starts: 1,
            },
        )]);
        let d = decide(
            &[late, job(2, Some("r"))],
            &table(Some(rate)),
            &mut wins,
            t(5_200),
        );
        assert_eq!(d, [Decision::Run, Decision::Defer(t(6_000))]);
    }

    #[test]
    fn a_task_without_a_known_rate_runs() {
        let mut j = job(1, Some("r"));
        j.task = "other".into();
        let mut wins = BTreeMap::new();
        let rate = Rate::new(1, Duration::from_secs(1)).unwrap();
        assert_eq!(
            decide(&[j], &table(Some(rate)), &mut wins, t(0)),
            [Decision::Run]
        );
        assert!(wins.is_empty());
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

    #[test]
    fn a_fast_release_hands_each_freed_slot_to_a_picked_job_and_leaves_the_rest() {
        let k = |s: &str| s.as_bytes().to_vec();
        // a: full, 2 freed, 2 picked; b: 2 freed, 1 picked; c: 1 freed,
        // 1 picked but room beyond it (a raised limit); d: 1 freed, none.
        let semaphores: BTreeMap<Vec<u8>, (u32, u32)> = [
            (k("a"), (5, 5)),
            (k("b"), (3, 3)),
            (k("c"), (1, 4)),
            (k("d"), (1, 1)),
        ]
        .into();
        let waiting: BTreeMap<Vec<u8>, Vec<(u8, u64, bool)>> = [
            (k("a"), vec![(2, 10, true), (2, 11, false)]),
            (k("b"), vec![(1, 20, true)]),
            (k("c"), vec![(2, 30, true)]),
        ]
        .into();
        let freed: BTreeMap<Vec<u8>, u32> =
            [(k("a"), 2), (k("b"), 2), (k("c"), 1), (k("d"), 1)].into();
        let fast = fast_release(&semaphores, &waiting, &freed, &BTreeMap::new(), 2);
        assert_eq!(
            fast.moved,
            vec![
                (k("a"), 2, 10),
                (k("a"), 2, 11),
                (k("b"), 1, 20),
                (k("c"), 2, 30)
            ]
        );
        // Room for two jobs at once: the first two runnable ones.
        assert_eq!(fast.direct, vec![10, 20]);
        // b and d freed a slot nobody took; c has room beyond its one.
        assert_eq!(fast.rest, [(k("b"), 1), (k("c"), 0), (k("d"), 1)].into());
        // The hand-overs never write a semaphore: their counts stay.
        let h = HandOff {
            owner: "rt-1".into(),
            lease_until: t(0),
            queues: vec!["q".into()],
            room: 2,
            cursors: Default::default(),
        };
        let job = |id: u64| ClaimedJob {
            id: JobId(id),
            task: "t".into(),
            queue: "q".into(),
            priority: 2,
            payload: "null".into(),
            attempt: 1,
            max_attempts: 3,
            deadline_ms: None,
            run_at: t(0),
            slot: Some(k("a")),
        };
        let jobs: HashMap<u64, ClaimedJob> = [(10, job(10)), (20, job(20))].into();
        let (writes, handed) = fast.writes(&jobs, Some(&h), t(0));
        assert!(
            writes.iter().all(|w| !w.contains("queue_semaphores")),
            "{writes:?}"
        );
        // The hand-over is the last write; the jobs handed are the ones
        // picked, with no read of their own unless it changed fewer.
        let last = writes.last().unwrap();
        assert!(last.starts_with("UPDATE queue_jobs SET state = "), "{last}");
        assert!(last.contains("WHERE id IN (10, 20)"), "{last}");
        assert!(
            writes.iter().all(|w| !w.starts_with("SELECT")),
            "{writes:?}"
        );
        let ids: Vec<u64> = handed.jobs.iter().map(|j| j.id.0).collect();
        assert_eq!(ids, vec![10, 20]);
        assert!(
            handed
                .read_back
                .as_deref()
                .is_some_and(|r| r.starts_with("SELECT id, task")),
            "{:?}",
            handed.read_back
        );
        // Without a runtime to hand to, nothing is handed.
        let (_, none) = fast.writes(&jobs, None, t(0));
        assert!(none.jobs.is_empty() && none.read_back.is_none());
    }

    #[test]
    fn spares_come_after_the_freed_slots_next_jobs_within_room_and_without_a_slot() {
        let k = |s: &str| s.as_bytes().to_vec();
        let semaphores: BTreeMap<Vec<u8>, (u32, u32)> = [(k("a"), (4, 4))].into();
        // a: 1 freed, 2 spares wanted; 10 takes the slot, 11 cannot run
        // here (another queue, or a rate), 12 and 13 are spares.
        let waiting: BTreeMap<Vec<u8>, Vec<(u8, u64, bool)>> = [
            (
                k("a"),
                vec![(2, 10, true), (2, 11, false), (2, 12, true), (2, 13, true)],
            ),
            (k("b"), vec![(2, 20, true), (2, 21, true)]),
        ]
        .into();
        let freed: BTreeMap<Vec<u8>, u32> = [(k("a"), 1)].into();
        let want: BTreeMap<Vec<u8>, u32> = [(k("a"), 2), (k("b"), 2)].into();
        let fast = fast_release(&semaphores, &waiting, &freed, &want, 4);
        assert_eq!(
            fast.direct,
            vec![10, 12, 13, 20],
            "room for 4: the slot's next job first"
        );
        assert_eq!(fast.spares, vec![12, 13, 20]);
        assert!(fast.rest.is_empty(), "{:?}", fast.rest);
        let moved: Vec<u64> = fast.moved.iter().map(|m| m.2).collect();
        assert_eq!(moved, vec![10, 12, 13, 20], "11 stays blocked");
        let h = HandOff {
            owner: "rt-1".into(),
            lease_until: t(0),
            queues: vec!["q".into()],
            room: 4,
            cursors: Default::default(),
        };
        let (writes, _) = fast.writes(&HashMap::new(), Some(&h), t(0));
        let last = writes.last().unwrap();
        assert!(
            last.contains("slot = IF(id IN (12, 13, 20), 0, 1)"),
            "spares hold no slot: {last}"
        );
        assert!(
            writes.iter().all(|w| !w.contains("queue_ready")),
            "nothing goes to the claim index: {writes:?}"
        );
    }

    #[test]
    fn cursors_move_past_the_picked_jobs_and_expire() {
        let c = BlockedCursors::default();
        let k = b"k".to_vec();
        assert!(c.after([&k]).is_empty(), "no cursor: read from the head");
        c.advance(&[(k.clone(), 2, 7), (k.clone(), 2, 9), (k.clone(), 1, 50)]);
        assert_eq!(
            c.after([&k]).get(&k),
            Some(&(2, 9)),
            "the last in key order"
        );
        let sql = pick_blocked_after_sql(&[(k.clone(), 3)].into(), &c.after([&k]), true);
        assert!(
            sql.contains("AND b.priority = 2 AND b.job_id > 9 ORDER BY"),
            "{sql}"
        );
        c.keys.lock().unwrap().get_mut(&k).unwrap().born -= CURSOR_LIFE;
        assert!(
            c.after([&k]).is_empty(),
            "expired: read from the head again"
        );
    }

    #[test]
    fn many_single_slot_keys_are_picked_in_one_statement_only_on_the_fast_path() {
        let freed: BTreeMap<Vec<u8>, u32> = (0..5u8).map(|i| (vec![b'a' + i], 1)).collect();
        let fast = pick_blocked_after_sql(&freed, &BTreeMap::new(), true);
        assert_eq!(fast.matches("FOR UPDATE SKIP LOCKED").count(), 1, "{fast}");
        assert!(fast.contains("FROM queue_semaphores s"), "{fast}");
        // Under the semaphores' lock, a branch per key, each waiting for a
        // job another release holds rather than skipping it.
        let locked = pick_blocked_sql(&freed);
        assert_eq!(locked.matches("FOR UPDATE)").count(), 5, "{locked}");
        assert!(!locked.contains("SKIP LOCKED"), "{locked}");
        // Cursors of single-slot keys do not split them into branches; a
        // key that freed more slots keeps its branch past its cursor.
        let mut freed = freed;
        freed.insert(b"hot".to_vec(), 3);
        let after: BTreeMap<Vec<u8>, (u8, u64)> =
            freed.keys().map(|k| (k.clone(), (2, 40))).collect();
        let fast = pick_blocked_after_sql(&freed, &after, true);
        assert_eq!(fast.matches("FOR UPDATE SKIP LOCKED").count(), 2, "{fast}");
        assert_eq!(fast.matches("b.job_id > 40").count(), 1, "{fast}");
    }
}
