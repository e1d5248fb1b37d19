//! Spares: jobs of a concurrency key that this runtime holds without a
//! slot, each waiting for a slot of its key that one of the runtime's own
//! jobs passes on when it succeeds.
//!
//! Without them a slot's next job starts only once its predecessor's
//! release has committed (the slot cycle: ~2 ms of transaction plus the
//! trip through the runtime, which bound a task limit of 50 to ~0.56 × the
//! unlimited throughput). With a spare at hand, the slot passes to it the
//! moment its holder ends, in this process, and from it to the next spare
//! when it ends, and so on: a chain of jobs that ran in the slot one after
//! the other. One release records a chain at a time: it deletes the jobs
//! that ended and records the slot as the one running now (its *heir*,
//! `slot = 1`, [`crate::store::Store::complete_slotted`]), and asks for as
//! many new spares as jobs ended. So the slot never waits for the database,
//! and a release covers every job its slot ran meanwhile.
//!
//! What holds the limit: a spare runs only in a slot that the job before it
//! in this runtime gave up by ending, so the jobs running at once never
//! outnumber the slots the database counts. Until its slot is recorded an
//! heir is *unsettled*: its outcome waits (a success joins the next
//! release of its chain; a failure is written once the slot is recorded, and
//! frees it as usual), so that no write frees a slot the database has not
//! given it. An heir whose slot cannot be recorded (the chain's first job
//! had lost its lease meanwhile) is *disinherited*, with the chain after
//! it: they hold no slot and their outcomes free none.
//!
//! A spare is a claimed job (running, leased, its attempt counted, like a
//! prefetched one). Spares of a key with no holder left in this runtime,
//! and every spare when the runtime stops, are handed back (their attempt
//! refunded), through the funnel that gives them a slot or blocks them. A
//! spare of a runtime that died comes back with its lease, holding no slot.
//! Only keys this runtime holds two slots of or more get spares: a key
//! limited to one slot per customer hands its slot on in the release
//! already, and picking spares for many such keys costs a statement branch
//! per key.

use super::executor::{self, handed_back};
use super::*;
use crate::store::{ClaimedJob, SlottedSuccess};
use std::collections::VecDeque;

/// The spares this runtime holds, and how many of its jobs hold a slot,
/// per concurrency key.
#[derive(Debug, Default)]
pub(crate) struct Spares {
    inner: Mutex<Inner>,
    /// Slots passed to a spare so far.
    passed: std::sync::atomic::AtomicU64,
    /// Heirs disinherited so far.
    disinherited: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Set when the runtime stops: spares arriving then are handed back.
    closed: bool,
    keys: HashMap<Vec<u8>, Key>,
}

#[derive(Debug, Default)]
struct Key {
    /// Jobs of this runtime holding a slot of the key (recorded or not).
    holders: usize,
    /// Spares, with the index of their queue among the served ones.
    jobs: VecDeque<(ClaimedJob, usize)>,
}

impl Spares {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A job holding a slot of `key` joined the runtime (`1`) or left it
    /// (`-1`). Returns the spares of a key left without holders, to hand back.
    pub(super) fn holder(&self, key: &[u8], delta: isize) -> Vec<ClaimedJob> {
        let mut inner = self.inner();
        let k = inner.keys.entry(key.to_vec()).or_default();
        k.holders = k.holders.saturating_add_signed(delta);
        if k.holders > 0 {
            return Vec::new();
        }
        let orphans = k.jobs.drain(..).map(|(job, _)| job).collect();
        inner.keys.remove(key);
        orphans
    }

    /// Slots passed to a spare and heirs disinherited so far, and spares
    /// held now.
    pub(super) fn counts(&self) -> (u64, u64, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let held = self.inner().keys.values().map(|k| k.jobs.len()).sum();
        (
            self.passed.load(Relaxed),
            self.disinherited.load(Relaxed),
            held,
        )
    }

    /// How many jobs of this runtime hold a slot of `key`.
    fn holders(&self, key: &[u8]) -> usize {
        self.inner().keys.get(key).map_or(0, |k| k.holders)
    }
}

/// Holds spares that a release handed this runtime (registered in flight,
/// so heartbeats cover them); hands back at once those of a key with no
/// holder here, and all once the runtime stops.
pub(super) fn hold(shared: &Arc<Shared>, jobs: Vec<ClaimedJob>) {
    let mut back = Vec::new();
    {
        let mut map = shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let mut inner = shared.spares.inner();
        for job in jobs {
            let Some(queue) = shared.queues.iter().position(|q| *q == job.queue) else {
                tracing::error!(job.id = %job.id, "a spare is of a queue this runtime does not serve; left to its lease");
                continue;
            };
            let Some(key) = job.slot.clone() else {
                tracing::error!(job.id = %job.id, "a spare without a concurrency key; left to its lease");
                continue;
            };
            if !executor::register(shared, &mut map, &job, None) {
                continue;
            }
            let closed = inner.closed || shared.stopping();
            match inner.keys.get_mut(&key) {
                Some(k) if k.holders > 0 && !closed => k.jobs.push_back((job, queue)),
                _ => back.push(job),
            }
        }
    }
    hand_back(
        shared,
        back,
        "a spare arriving while the runtime stops, or for a key with no slot in it",
    );
}

/// Passes the slot of `(id, attempt)`, a job that just succeeded holding a
/// slot (recorded or, for an heir, not yet), to a spare of its key: the
/// spare starts now, as the job's heir (recorded on the job's entry for its
/// chain's release). Nothing when no spare is at hand or the runtime stops.
pub(super) fn pass_slot(shared: &Arc<Shared>, id: JobId, attempt: u32) {
    if shared.stopping() {
        return;
    }
    let mut back = Vec::new();
    let heir = {
        let mut map = shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let Some(key) = map
            .get(&id)
            .filter(|f| f.attempt == attempt && f.heir.is_none())
            .and_then(|f| f.slot.clone())
        else {
            return;
        };
        let mut inner = shared.spares.inner();
        let Some(k) = inner.keys.get_mut(&key) else {
            return;
        };
        let mut heir = None;
        while let Some((job, queue)) = k.jobs.pop_front() {
            // A spare of a queue paused since is handed back, not started.
            if shared.paused[queue].load(std::sync::atomic::Ordering::SeqCst) {
                back.push(job);
                continue;
            }
            heir = Some((job, queue));
            break;
        }
        if let Some((job, _)) = &heir {
            k.holders += 1;
            shared
                .spares
                .passed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(f) = map.get_mut(&job.id) {
                f.slot = Some(key.clone());
                f.unsettled = true;
            }
            if let Some(f) = map.get_mut(&id) {
                f.heir = Some((job.id, job.attempt));
            }
        }
        heir
    };
    hand_back(shared, back, "a spare of a paused queue");
    if let Some((job, queue)) = heir {
        executor::start_job(shared, job, queue);
    }
}

/// Settles heirs after their chains' release committed: their slot
/// recorded, or not (`disinherited`: they hold none, nor does any job that
/// took the slot from them since). An outcome that waited for this goes
/// to the acker now; an heir that succeeded without passing its slot on
/// passes it first, if a spare is at hand now.
pub(super) fn settle(shared: &Arc<Shared>, heirs: &[(JobId, u32)], disinherited: &[JobId]) {
    let mut resend = Vec::new();
    let mut back = Vec::new();
    {
        let mut map = shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for (id, attempt) in heirs {
            let Some(f) = map.get_mut(id).filter(|f| f.attempt == *attempt) else {
                continue;
            };
            if !disinherited.contains(id) {
                f.unsettled = false;
                resend.extend(f.deferred.take());
                continue;
            }
            // Disinherited, with the chain that ran in the slot after it.
            tracing::warn!(
                job.id = %id,
                "a slot's holder had lost its lease before its release: the job it passed the slot to runs on without one"
            );
            shared
                .spares
                .disinherited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut next = Some(*id);
            while let Some(j) = next.take() {
                let Some(f) = map.get_mut(&j) else { break };
                f.unsettled = false;
                if let Some(key) = f.slot.take() {
                    back.extend(shared.spares.holder(&key, -1));
                }
                resend.extend(f.deferred.take());
                next = f.heir.map(|(h, _)| h);
            }
        }
    }
    hand_back(
        shared,
        back,
        "a spare whose key has no slot in this runtime",
    );
    for ack in resend {
        if let Ack::Complete { id, attempt } = &ack {
            pass_slot(shared, *id, *attempt);
        }
        if shared.ack_tx.send(ack).is_err() {
            tracing::debug!("an heir's outcome after the acker stopped: left to its lease");
        }
    }
}

/// The release of the success of `(id, attempt)`, a job holding a recorded
/// slot: with the chain of spares that ran in the slot after it and
/// succeeded (their outcomes waited for it), and the heir that holds the
/// slot now (running, or ended otherwise). None for a job without a slot.
pub(super) fn fold(shared: &Shared, id: JobId, attempt: u32) -> Option<SlottedSuccess> {
    let mut map = shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
    let f = map.get(&id).filter(|f| f.attempt == attempt)?;
    let key = f.slot.clone()?;
    let mut heir = f.heir;
    let mut also = Vec::new();
    while let Some((h, a)) = heir {
        let Some(e) = map.get_mut(&h).filter(|e| e.attempt == a) else {
            break;
        };
        if !matches!(e.deferred, Some(Ack::Complete { .. })) {
            break;
        }
        e.deferred = None;
        also.push((h, a));
        heir = e.heir;
    }
    // One new spare per job ended, for a key this runtime holds two
    // slots of or more.
    let spares = if shared.spares.holders(&key) >= 2 {
        u32::try_from(also.len() + 1).unwrap_or(u32::MAX)
    } else {
        0
    };
    Some(SlottedSuccess {
        id,
        attempt,
        key,
        also,
        heir,
        spares,
    })
}

/// Keeps an outcome of an unsettled heir until [`settle`]; returns the
/// others.
pub(super) fn defer_unsettled(shared: &Shared, ack: Ack) -> Option<Ack> {
    let Some((id, attempt)) = ack.id() else {
        return Some(ack);
    };
    let mut map = shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
    match map.get_mut(&id) {
        Some(f) if f.attempt == attempt && f.unsettled => {
            f.deferred = Some(ack);
            None
        }
        _ => Some(ack),
    }
}

/// Stops taking spares and hands back those held.
pub(super) fn close(shared: &Arc<Shared>) {
    let all: Vec<ClaimedJob> = {
        let mut inner = shared.spares.inner();
        inner.closed = true;
        inner
            .keys
            .values_mut()
            .flat_map(|k| k.jobs.drain(..).map(|(job, _)| job))
            .collect()
    };
    hand_back(shared, all, "handed back at shutdown before it started");
}

/// Hands spares back without running them: their attempt refunded, into
/// the funnel that gives them a slot or blocks them.
pub(super) fn hand_back(shared: &Shared, jobs: Vec<ClaimedJob>, why: &str) {
    for job in jobs {
        tracing::debug!(job.id = %job.id, "{why}: handed back");
        let ack = handed_back(&job, Duration::ZERO, why.to_owned(), shared.client.now());
        executor::report(shared, &job, ack);
    }
}
