//! The claim loop: claims as many jobs as there are free slots (and
//! prefetch), looks behind its cursors, and starts each job it claimed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::{Id, JoinError, JoinSet};

use super::Shared;
use super::cursors::Cursors;
use super::outage::Failures;
use crate::clock::add;
use crate::error::{Error, Result, is_connection_error};
use crate::store::{ClaimTicket, Claimed};

/// Claims in flight at once while a queue has a backlog (one otherwise).
/// A claim's time is mostly round trips and its commit's log flush, during
/// which fast jobs finish and their slots idle; a second claim in flight
/// fills them meanwhile. Each claim skips the rows the other holds locked.
const MAX_CLAIMS_IN_FLIGHT: usize = 2;
/// How often the producer looks behind its cursors for the last
/// `PROBE_LAG`, and how often behind the whole range.
const PROBE_EVERY: Duration = Duration::from_millis(250);
const FULL_PROBE_EVERY: Duration = Duration::from_secs(30);
/// Probe requests and finds queued between the producer and the prober.
const PROBE_QUEUE: usize = 16;

/// The prefetch a runtime starts with: its own fixed one, or (adaptive)
/// as many as its concurrency, until its pace is known.
fn start_prefetch(shared: &Shared) -> usize {
    if shared.adaptive_prefetch {
        shared.concurrency.min(shared.prefetch)
    } else {
        shared.prefetch
    }
}

/// Successes carried by one claim at most (the acker's statements' size).
const ACKS_PER_CLAIM: usize = 500;

/// A claim's `now` and lease end, as it wrote them into the jobs it
/// leased: with this runtime's owner id they name those jobs exactly (each
/// claim of a runtime has its own `now`), so a claim whose reply was lost
/// can be undone (see `Store::release_lost_claim`).
#[derive(Debug, Clone, Copy)]
struct ClaimStamp {
    at: DateTime<Utc>,
    lease_until: DateTime<Utc>,
}

/// A claim that came back.
struct ClaimDone {
    /// The index of its queue in `Shared::queues`.
    queue: usize,
    /// The successes it carried.
    acks: Vec<(queue_core::JobId, u32)>,
    ticket: ClaimTicket,
    result: Result<Claimed>,
    sent: Instant,
    stamp: ClaimStamp,
}

/// A claim in flight: how many jobs it may bring back, of which queue.
struct Reserved {
    claim: Id,
    jobs: usize,
    queue: usize,
}

/// A probe to run: a queue's index and the `(priority, low, high]` ranges
/// behind its cursors.
struct ProbeRequest {
    queue: usize,
    ranges: Vec<(u8, u64, u64)>,
    lane: Option<crate::store::Lane>,
}

/// What a probe found: a queue's index and `(priority, seq)` keys.
struct ProbeFinds {
    queue: usize,
    keys: Vec<(u8, u64)>,
}

/// What a settled claim took: rows of the claim index (not jobs: rows whose
/// job was cancelled are taken and dropped, and the rows behind them still
/// wait), and how many it asked for.
struct Took {
    rows: usize,
    wanted: usize,
}

pub(super) async fn producer(shared: Arc<Shared>) {
    let (probe_tx, probe_rx) = mpsc::channel(PROBE_QUEUE);
    let (found_tx, found_rx) = mpsc::channel(PROBE_QUEUE);
    let prober = tokio::spawn(prober(shared.clone(), probe_rx, found_tx));
    Producer::new(shared, probe_tx, found_rx).run().await;
    prober.abort();
}

/// The claim loop's state.
struct Producer {
    shared: Arc<Shared>,
    cursors: Vec<Cursors>,
    ready_rx: watch::Receiver<u64>,
    probe_tx: mpsc::Sender<ProbeRequest>,
    found_rx: mpsc::Receiver<ProbeFinds>,
    claims: JoinSet<ClaimDone>,
    /// Jobs each claim in flight may bring back, and its queue: counted
    /// against the window and the queue's limit.
    reserved: Vec<Reserved>,
    /// Claims that failed on a connection error: their COMMIT may have
    /// reached the server with the reply lost, leaving jobs leased to this
    /// runtime that nothing runs. Released once no claim is in flight.
    lost: Vec<ClaimStamp>,
    /// The last claim's `now`: each claim's is later.
    last_claim_at: Option<DateTime<Utc>>,
    failures: Failures,
    /// The queue the next claim is for (round robin).
    next: usize,
    last_probe: Instant,
    last_full_probe: Instant,
    /// Look behind the whole range next time (at start: rows committed out
    /// of order by a previous run).
    full_probe_due: bool,
    /// Idle polling: after work, look again after `min_poll`, doubling to
    /// the poll interval while nothing comes.
    min_poll: Duration,
    idle_wait: Duration,
    idle: bool,
    /// Consecutive claims (or idle looks) that found nothing: once every
    /// queue has had one, the loop waits.
    empty: usize,
    /// The last claim came back full: the queue has more.
    backlog: bool,
    /// Claim once this many jobs fit the window (half of it).
    refill_at: usize,
    /// Prefetch now: `Shared::prefetch`, or (adaptive) about the jobs this
    /// runtime finishes in `PREFETCH_HORIZON` at its recent pace.
    prefetch: usize,
    /// The pace: jobs finished per second (smoothed), and the last sample.
    pace: u64,
    pace_sample: (Instant, u64),
    /// Per queue: paused cluster-wide (`queue_paused`), as last read.
    paused: Vec<bool>,
    /// When the paused queues were last read (`None`: read next round).
    paused_read: Option<Instant>,
    /// Changes when this process pauses or resumes a queue.
    paused_rx: watch::Receiver<u64>,
}

impl Producer {
    fn new(
        shared: Arc<Shared>,
        probe_tx: mpsc::Sender<ProbeRequest>,
        found_rx: mpsc::Receiver<ProbeFinds>,
    ) -> Producer {
        let min_poll = (shared.poll_interval / 25).max(Duration::from_millis(5));
        Producer {
            cursors: shared.queues.iter().map(|q| Cursors::new(q)).collect(),
            ready_rx: shared.client.inner.ready_gen.subscribe(),
            paused: vec![false; shared.queues.len()],
            paused_read: None,
            paused_rx: shared.client.inner.paused_gen.subscribe(),
            probe_tx,
            found_rx,
            claims: JoinSet::new(),
            reserved: Vec::new(),
            lost: Vec::new(),
            last_claim_at: None,
            failures: Failures::default(),
            next: 0,
            last_probe: Instant::now(),
            last_full_probe: Instant::now(),
            full_probe_due: true,
            min_poll,
            idle_wait: min_poll,
            idle: false,
            empty: 0,
            backlog: false,
            refill_at: (shared.semaphore.available_permits() + start_prefetch(&shared))
                .div_ceil(2)
                .max(1),
            prefetch: start_prefetch(&shared),
            pace: 0,
            pace_sample: (Instant::now(), 0),
            shared,
        }
    }

    async fn run(mut self) {
        while !self.shared.stopping() {
            while let Ok(found) = self.found_rx.try_recv() {
                self.cursors[found.queue].add_stragglers(found.keys);
            }
            self.send_probes();
            self.read_paused().await;
            let mut ok = self.settle_finished();
            if ok && !self.lost.is_empty() && self.claims.is_empty() {
                ok = self.release_lost().await;
            }
            if !ok {
                if self.shared.sleep_or_stop(self.failures.next_wait()).await {
                    break;
                }
                continue;
            }
            if !self.shared.galera_synced() {
                // A Galera node that is not Synced (see `runtime::galera`):
                // claim nothing; the watcher's next read may clear it.
                if self
                    .shared
                    .sleep_or_stop(super::galera::GALERA_EVERY / 4)
                    .await
                {
                    break;
                }
                continue;
            }
            if let Some(free) = self.claim_window() {
                if self.idle_look_finds_nothing().await {
                    continue;
                }
                self.start_claim(free);
                continue;
            }
            self.wait().await;
        }
        // Claims in flight finish: their jobs are started or handed back
        // like any other claimed at shutdown.
        while let Some(done) = self.claims.join_next_with_id().await {
            self.settle(done);
        }
        if !self.lost.is_empty() {
            // One try; what it cannot release waits for its lease.
            self.release_lost().await;
        }
    }

    /// Sends the probes that are due.
    fn send_probes(&mut self) {
        if self.last_probe.elapsed() < PROBE_EVERY && !self.full_probe_due {
            return;
        }
        let full = self.full_probe_due || self.last_full_probe.elapsed() >= FULL_PROBE_EVERY;
        for (queue, c) in self.cursors.iter_mut().enumerate() {
            let ranges = c.probe_ranges(full);
            if !ranges.is_empty() {
                let lane = c.lane();
                let _ = self.probe_tx.try_send(ProbeRequest {
                    queue,
                    ranges,
                    lane,
                });
            }
        }
        self.last_probe = Instant::now();
        if full {
            self.last_full_probe = self.last_probe;
            self.full_probe_due = false;
        }
    }

    /// Reads which queues are paused, once per poll interval (and at once
    /// after this process paused or resumed one). On failure the last
    /// reading stands.
    async fn read_paused(&mut self) {
        let due = self
            .paused_read
            .is_none_or(|t| t.elapsed() >= self.shared.poll_interval);
        if !due && !self.paused_rx.has_changed().unwrap_or(false) {
            return;
        }
        self.paused_rx.mark_unchanged();
        let sent = Instant::now();
        let read = self.shared.client.store().paused_queues().await;
        self.shared
            .outage
            .track("reading paused queues", sent, &read);
        self.paused_read = Some(Instant::now());
        if let Ok(paused) = read {
            for (i, queue) in self.shared.queues.iter().enumerate() {
                let now_paused = paused.contains(queue);
                if now_paused != self.paused[i] {
                    tracing::info!(queue = %queue, paused = now_paused, "queue paused state changed");
                    if !now_paused {
                        // Its jobs may have been waiting all along.
                        self.empty = 0;
                        self.idle = false;
                    }
                }
                self.paused[i] = now_paused;
                self.shared.paused[i].store(now_paused, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    /// How many more jobs of queue `queue` this runtime may claim under its
    /// limit (`usize::MAX` without one).
    fn queue_room(&self, queue: usize) -> usize {
        let Some(limit) = self.shared.queue_limits[queue] else {
            return usize::MAX;
        };
        let in_flight =
            self.shared.queue_in_flight[queue].load(std::sync::atomic::Ordering::SeqCst);
        let reserved: usize = self
            .reserved
            .iter()
            .filter(|r| r.queue == queue)
            .map(|r| r.jobs)
            .sum();
        limit.saturating_sub(in_flight + reserved)
    }

    /// Whether the next claim may take from `queue`: not paused, and with
    /// room under its limit.
    fn claimable(&self, queue: usize) -> bool {
        !self.paused[queue] && self.queue_room(queue) > 0
    }

    /// Queues the next claim may take from.
    fn active(&self) -> usize {
        (0..self.cursors.len())
            .filter(|q| self.claimable(*q))
            .count()
    }

    /// Whether a queue that is not paused is at its limit.
    fn any_queue_full(&self) -> bool {
        (0..self.cursors.len()).any(|q| !self.paused[q] && self.queue_room(q) == 0)
    }

    /// Whether a queue that is not paused has stragglers to claim.
    fn active_stragglers(&self) -> bool {
        (0..self.cursors.len()).any(|q| self.claimable(q) && self.cursors[q].has_stragglers())
    }

    /// The next queue to claim from, skipping paused ones and those at
    /// their limit (`next` moves to it); `None` if there is none.
    fn next_queue(&mut self) -> Option<usize> {
        let n = self.cursors.len();
        for _ in 0..n {
            let queue = self.next % n;
            if self.claimable(queue) {
                return Some(queue);
            }
            self.next = self.next.wrapping_add(1);
        }
        None
    }

    /// Settles the claims that came back; false if one failed.
    fn settle_finished(&mut self) -> bool {
        let mut ok = true;
        while let Some(done) = self.claims.try_join_next_with_id() {
            ok &= self.settle(done);
        }
        ok
    }

    /// How many jobs to claim now, if a claim should start: when a slot is
    /// idle with nothing prefetched or being claimed for it, or when half
    /// the window (free slots + prefetch) is free (with fast jobs one slot
    /// frees at a time, and claiming for each alone would make many claims
    /// of one or two jobs).
    fn claim_window(&mut self) -> Option<usize> {
        self.follow_pace();
        let shared = &self.shared;
        let slots = shared.semaphore.available_permits();
        let waiting = shared.waiting.load(std::sync::atomic::Ordering::SeqCst);
        let reserving: usize = self.reserved.iter().map(|r| r.jobs).sum();
        let free = (slots + self.prefetch).saturating_sub(waiting + reserving);
        let idle_slot = slots > 0 && waiting + reserving == 0;
        let lanes = if self.backlog {
            MAX_CLAIMS_IN_FLIGHT
        } else {
            1
        };
        let want = free > 0 && (free >= self.refill_at || idle_slot) && self.claims.len() < lanes;
        let active = self.active();
        (active > 0 && want && (self.empty < active || self.active_stragglers())).then_some(free)
    }

    /// Adaptive prefetch: every 50 ms, the pace of finished jobs (smoothed)
    /// sets the prefetch to about the jobs finished in `PREFETCH_HORIZON`,
    /// between 1 and `Shared::prefetch`: fast jobs are claimed in big
    /// batches (fewer statements per job), slow ones are not held back from
    /// other runtimes while they wait here for a slot.
    fn follow_pace(&mut self) {
        if !self.shared.adaptive_prefetch {
            return;
        }
        let (at, count) = self.pace_sample;
        let elapsed = at.elapsed();
        if elapsed < Duration::from_millis(50) {
            return;
        }
        let now = self
            .shared
            .finished_total
            .load(std::sync::atomic::Ordering::Relaxed);
        // Jobs per second, in whole numbers (the window is at least 50 ms).
        let ms = u64::try_from(elapsed.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let rate = now.saturating_sub(count).saturating_mul(1000) / ms;
        self.pace = if self.pace == 0 {
            rate
        } else {
            self.pace.saturating_add(rate) / 2
        };
        self.pace_sample = (Instant::now(), now);
        let horizon = u64::try_from(crate::settings::PREFETCH_HORIZON.as_millis()).unwrap_or(0);
        let want = self.pace.saturating_mul(horizon).div_ceil(1000);
        let want = usize::try_from(want).unwrap_or(usize::MAX);
        self.prefetch = want.clamp(1, self.shared.prefetch.max(1));
        self.refill_at = (self.shared.concurrency + self.prefetch).div_ceil(2).max(1);
    }

    /// While idle, asks with one cheap statement, instead of a claim
    /// transaction, whether the next queue has anything. True if it has
    /// nothing, or if the look failed (after the failure's wait).
    async fn idle_look_finds_nothing(&mut self) -> bool {
        let Some(queue) = self.next_queue() else {
            return true;
        };
        if !self.idle || self.cursors[queue].has_stragglers() {
            return false;
        }
        let sent = Instant::now();
        let has_ready = self
            .shared
            .client
            .store()
            .has_ready(&self.cursors[queue].peek())
            .await;
        self.shared.outage.track("claim", sent, &has_ready);
        match has_ready {
            Ok(true) => false,
            Ok(false) => {
                self.next = self.next.wrapping_add(1);
                self.empty += 1;
                true
            }
            Err(_) => {
                self.next = self.next.wrapping_add(1);
                let wait = self.failures.next_wait();
                self.shared.sleep_or_stop(wait).await;
                true
            }
        }
    }

    /// Starts a claim of up to `free` jobs from the next queue.
    fn start_claim(&mut self, free: usize) {
        let Some(queue) = self.next_queue() else {
            return;
        };
        self.next = self.next.wrapping_add(1);
        let free = free.min(self.queue_room(queue));
        let lane = self.shared.lane();
        // (A change is logged where the lanes are read, `runtime::galera`.)
        self.cursors[queue].set_lane(lane);
        let ticket = self.cursors[queue].ticket(free);
        let mut now = crate::time::clamp(self.shared.client.now());
        if let Some(last) = self.last_claim_at
            && now <= last
        {
            now = last + chrono::TimeDelta::microseconds(1);
        }
        self.last_claim_at = Some(now);
        let shared = self.shared.clone();
        // Successes waiting for the acker ride in this claim's transaction.
        let acks = shared.take_successes(ACKS_PER_CLAIM);
        let task = self.claims.spawn(async move {
            let sent = Instant::now();
            let stamp = ClaimStamp {
                at: now,
                lease_until: crate::time::clamp(add(now, shared.lease)),
            };
            let result = shared
                .client
                .store()
                .claim_ticket(
                    &ticket,
                    &shared.owner,
                    stamp.lease_until,
                    stamp.at,
                    &shared.limits,
                    &acks,
                )
                .await;
            ClaimDone {
                acks,
                queue,
                ticket,
                result,
                sent,
                stamp,
            }
        });
        self.reserved.push(Reserved {
            claim: task.id(),
            jobs: free,
            queue,
        });
    }

    /// Waits: for a local enqueue, a probe's find or the idle wait when
    /// there is nothing to claim; otherwise for a claim to come back or a
    /// slot to free (or stop).
    async fn wait(&mut self) {
        let mut stop = self.shared.stop.clone();
        let stragglers = self.active_stragglers();
        if self.claims.is_empty() && self.empty >= self.active() && !stragglers {
            // The idle wait starts short after work (jobs enqueued by other
            // processes in a trickle are found within a few ms) and doubles
            // up to the poll interval while nothing comes. Probes due
            // meanwhile are sent next round.
            self.idle = true;
            self.backlog = false;
            self.park();
            tokio::select! {
                _ = self.ready_rx.changed() => self.idle = false,
                // Another process enqueued for one of its queues.
                _ = self.shared.park_woken.notified() => self.idle = false,
                _ = self.paused_rx.changed() => self.paused_read = None,
                // A job of a queue at its limit ended: the queue has room.
                _ = self.shared.slot_freed.notified(), if self.any_queue_full() => {}
                _ = tokio::time::sleep(self.idle_wait) => {}
                _ = stop.wait_for(|s| *s) => {}
                Some(found) = self.found_rx.recv() => {
                    self.cursors[found.queue].add_stragglers(found.keys);
                }
            }
            self.idle_wait = (self.idle_wait * 2).min(self.shared.poll_interval);
            self.empty = 0;
            return;
        }
        let done = tokio::select! {
            Some(done) = self.claims.join_next_with_id(), if !self.claims.is_empty() => Some(done),
            _ = self.shared.slot_freed.notified() => None,
            _ = stop.wait_for(|s| *s) => None,
        };
        if let Some(done) = done
            && !self.settle(done)
        {
            let wait = self.failures.next_wait();
            self.shared.sleep_or_stop(wait).await;
        }
    }

    /// Records a claim that came back and starts its jobs; false if it
    /// failed.
    fn settle(&mut self, done: std::result::Result<(Id, ClaimDone), JoinError>) -> bool {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        self.reserved.retain(|r| r.claim != id);
        let Ok((_, done)) = done else {
            // The claim's task panicked (it does not): its stragglers are
            // found again by the next probes.
            return false;
        };
        let shared = &self.shared;
        let wanted = done.ticket.limit;
        if !done.acks.is_empty() {
            match &done.result {
                Ok(claimed) => {
                    let lost = done.acks.len() as u64 - claimed.acked.min(done.acks.len() as u64);
                    if lost > 0 {
                        let jobs: Vec<String> = done
                            .acks
                            .iter()
                            .take(20)
                            .map(|(id, attempt)| format!("{}/{attempt}", id.0))
                            .collect();
                        tracing::warn!(
                            lost,
                            carried = done.acks.len(),
                            ?jobs,
                            "some successes were not recorded: their lease had expired and another runtime took them"
                        );
                    }
                    for (id, attempt) in &done.acks {
                        shared.finished(*id, *attempt);
                    }
                }
                // Not written: back to the acker.
                Err(_) => {
                    for (id, attempt) in &done.acks {
                        let _ = shared.ack_tx.send(super::outcome::Ack::Complete {
                            id: *id,
                            attempt: *attempt,
                        });
                    }
                }
            }
        }
        let settled = self.cursors[done.queue].settle(done.ticket, done.result);
        shared.outage.track("claim", done.sent, &settled);
        let (jobs, rows) = match settled {
            Ok(settled) => settled,
            Err(e) => {
                if let Error::Database(e) = &e
                    && is_connection_error(e)
                {
                    self.lost.push(done.stamp);
                }
                return false;
            }
        };
        shared
            .client
            .inner
            .metrics
            .record_claim(done.sent.elapsed());
        crate::telemetry::claim(&shared.queues[done.queue], done.sent.elapsed());
        tracing::trace!(queue = %shared.queues[done.queue], wanted, got = jobs.len(), "claimed");
        for job in jobs {
            super::executor::spawn_job(shared, job, done.queue);
        }
        self.took(Took { rows, wanted });
        true
    }

    /// What a claim that came back tells the loop.
    fn took(&mut self, took: Took) {
        self.backlog = took.rows == took.wanted;
        if took.rows == 0 {
            self.empty += 1;
        } else {
            self.empty = 0;
            self.idle = false;
            self.idle_wait = self.min_poll;
            self.failures.reset();
            self.shared.park.send_if_modified(|w| w.take().is_some());
        }
    }

    /// Asks the parker to watch this runtime's queues that are not paused,
    /// after their cursors, while it waits idle (`runtime/parker.rs`).
    fn park(&self) {
        let looks = super::parker::looks(
            self.cursors
                .iter()
                .enumerate()
                .filter(|(q, _)| !self.paused[*q])
                .map(|(_, c)| {
                    let t = c.peek();
                    crate::store::wake::Look {
                        queue: t.queue,
                        last: t.last,
                    }
                }),
        );
        self.shared.park.send_if_modified(|w| {
            if *w == looks {
                false
            } else {
                *w = looks;
                true
            }
        });
    }

    /// Hands back, without spending an attempt, the jobs that claims whose
    /// reply was lost leased to this runtime: once no claim is in flight,
    /// every claim that succeeded has started its jobs, so what is still
    /// leased under a lost claim's stamp ran nowhere. False if it failed
    /// (tried again later).
    async fn release_lost(&mut self) -> bool {
        let shared = &self.shared;
        let store = shared.client.store();
        let sent = Instant::now();
        let mut released = 0;
        let mut result = Ok(());
        for stamp in &self.lost {
            match store
                .release_lost_claim(
                    &shared.owner,
                    stamp.at,
                    stamp.lease_until,
                    shared.client.now(),
                )
                .await
            {
                Ok(n) => released += n,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        shared.outage.track("claim recovery", sent, &result);
        if released > 0 {
            tracing::warn!(
                jobs = released,
                "handed back jobs that a claim leased while its reply was lost"
            );
            shared.client.inner.ready_gen.send_modify(|g| *g += 1);
        }
        if result.is_ok() {
            self.lost.clear();
        }
        result.is_ok()
    }
}

/// Runs the producer's probes: non-locking looks behind its cursors.
async fn prober(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<ProbeRequest>,
    tx: mpsc::Sender<ProbeFinds>,
) {
    while let Some(ProbeRequest {
        queue,
        ranges,
        lane,
    }) = rx.recv().await
    {
        let name = &shared.queues[queue];
        let sent = Instant::now();
        let probed = shared.client.store().probe(name, &ranges, lane).await;
        shared.outage.track("probe", sent, &probed);
        if let Ok(keys) = probed
            && !keys.is_empty()
        {
            tracing::debug!(queue = %name, rows = keys.len(), "found ready rows behind the claim cursor");
            if tx.send(ProbeFinds { queue, keys }).await.is_err() {
                return;
            }
        }
    }
}
