//! The claim loop: claims as many jobs as there are free slots (and
//! prefetch), looks behind its cursors, and starts each job it claimed.

use super::*;
use crate::clock::add;
use crate::error::{Error, Result, is_connection_error};
use crate::store::{ClaimTicket, Claimed, Cursors};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Claims in flight at once while a queue has a backlog (one otherwise).
/// A claim's time is mostly round trips and its commit's log flush, during
/// which fast jobs finish and their slots idle; a second claim in flight
/// fills them meanwhile. Each claim skips the rows the other holds locked.
pub(super) const MAX_CLAIMS_IN_FLIGHT: usize = 2;

/// A finished claim: the queue's index, its ticket, its result, and when it
/// was sent.
pub(super) type ClaimDone = (usize, ClaimTicket, Result<Claimed>, Instant, LostClaim);

/// A claim's `now` and lease end, as it wrote them to the jobs it leased:
/// with this runtime's owner id, they name those jobs exactly (each claim
/// of a runtime has its own `now`), so a claim whose reply was lost can be
/// undone (see `Store::release_lost_claim`).
pub(crate) type LostClaim = (DateTime<Utc>, DateTime<Utc>);

pub(super) async fn producer(shared: Arc<Shared>) {
    let client = &shared.client;
    let mut cursors: Vec<Cursors> = shared.queues.iter().map(|q| Cursors::new(q)).collect();
    let mut ready_rx = client.inner.ready_gen.subscribe();
    let (probe_tx, probe_rx) = mpsc::channel::<ProbeRequest>(16);
    let (found_tx, mut found_rx) = mpsc::channel::<ProbeFinds>(16);
    let prober = tokio::spawn(prober(shared.clone(), probe_rx, found_tx));
    let mut claims: JoinSet<ClaimDone> = JoinSet::new();
    // Claims that failed on a connection error: their COMMIT may have
    // reached the server with the reply lost, leaving jobs leased to this
    // runtime that nothing runs. Released once no claim is in flight.
    let mut lost: Vec<LostClaim> = Vec::new();
    // The last claim's `now`: each claim's is later, so that it names the
    // claim's jobs.
    let mut last_claim_at: Option<DateTime<Utc>> = None;
    // Jobs each claim in flight may bring back: counted against the window.
    let mut reserved: Vec<(tokio::task::Id, usize)> = Vec::new();
    let mut failures = 0u32;
    let mut next = 0usize;
    let mut last_probe = Instant::now();
    let mut last_full_probe = Instant::now();
    // Look behind the cursors at start: rows committed out of order by a
    // previous run are found by the first full probe.
    let mut full_due = true;
    // Idle polling: after work, look again after `min_poll`, doubling to
    // `poll_interval` while nothing comes.
    let min_poll = (shared.poll_interval / 25).max(Duration::from_millis(5));
    let mut idle_wait = min_poll;
    let mut idle = false;
    // Consecutive claims (or idle looks) that found nothing: once every
    // queue has had one, the runtime waits.
    let mut empty = 0usize;
    // The last claim came back full: the queue has more.
    let mut backlog = false;
    let refill_at = (shared.semaphore.available_permits() + shared.prefetch)
        .div_ceil(2)
        .max(1);
    // What a claim that came back tells the loop.
    macro_rules! note {
        ($picked:expr, $want:expr) => {{
            // Rows taken, not jobs: rows whose job was cancelled are taken
            // and dropped, and the rows behind them still wait.
            let picked: usize = $picked;
            backlog = picked == $want;
            if picked == 0 {
                empty += 1;
            } else {
                empty = 0;
                idle = false;
                idle_wait = min_poll;
                failures = 0;
            }
        }};
    }
    loop {
        if shared.stopping() {
            break;
        }
        while let Ok((qi, found)) = found_rx.try_recv() {
            cursors[qi].add_stragglers(found);
        }
        if last_probe.elapsed() >= Duration::from_millis(250) || full_due {
            let full = full_due || last_full_probe.elapsed() >= Duration::from_secs(30);
            for (qi, c) in cursors.iter_mut().enumerate() {
                let ranges = c.probe_ranges(full);
                if !ranges.is_empty() {
                    let _ = probe_tx.try_send((qi, ranges));
                }
            }
            last_probe = Instant::now();
            if full {
                last_full_probe = last_probe;
                full_due = false;
            }
        }
        let mut errored = false;
        while let Some(done) = claims.try_join_next_with_id() {
            match settle_claim(&shared, &mut cursors, &mut reserved, &mut lost, done) {
                Some((picked, want)) => note!(picked, want),
                None => errored = true,
            }
        }
        if !errored && !lost.is_empty() && claims.is_empty() {
            // Every claim that succeeded has started its jobs: what is
            // still leased under a lost claim's `now` ran nowhere.
            let sent = Instant::now();
            let released = release_lost(&shared, &lost).await;
            shared.outage.track("claim recovery", sent, &released);
            match released {
                Ok(()) => lost.clear(),
                Err(_) => errored = true,
            }
        }
        if errored {
            failures += 1;
            if shared.sleep_or_stop(Outage::backoff(failures)).await {
                break;
            }
            continue;
        }
        let slots = shared.semaphore.available_permits();
        let waiting = prefetched(&shared);
        let reserving: usize = reserved.iter().map(|r| r.1).sum();
        let free = (slots + shared.prefetch).saturating_sub(waiting + reserving);
        // Claim when a slot is idle with nothing prefetched or being claimed
        // for it, or when half the window (free slots + prefetch) is free:
        // with fast jobs one slot frees at a time, and claiming for each
        // alone would make many claims of one or two jobs.
        let idle_slot = slots > 0 && waiting + reserving == 0;
        let lanes = if backlog { MAX_CLAIMS_IN_FLIGHT } else { 1 };
        let stragglers = cursors.iter().any(Cursors::has_stragglers);
        let want_claim = free > 0 && (free >= refill_at || idle_slot) && claims.len() < lanes;
        if want_claim && (empty < cursors.len() || stragglers) {
            let qi = next % cursors.len();
            next = next.wrapping_add(1);
            if idle && !cursors[qi].has_stragglers() {
                // Idle: one cheap statement instead of a claim transaction.
                let sent = Instant::now();
                let has_ready = client.store().has_ready(&cursors[qi]).await;
                shared.outage.track("claim", sent, &has_ready);
                match has_ready {
                    Ok(false) => {
                        empty += 1;
                        continue;
                    }
                    Ok(true) => {}
                    Err(_) => {
                        failures += 1;
                        if shared.sleep_or_stop(Outage::backoff(failures)).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let ticket = cursors[qi].ticket(free);
            let shared2 = shared.clone();
            let mut now = crate::time::clamp(client.now());
            if let Some(last) = last_claim_at
                && now <= last
            {
                now = last + chrono::TimeDelta::microseconds(1);
            }
            last_claim_at = Some(now);
            let task = claims.spawn(async move {
                let sent = Instant::now();
                let lease_until = crate::time::clamp(add(now, shared2.lease));
                let r = shared2
                    .client
                    .store()
                    .claim_ticket(&ticket, &shared2.owner, lease_until, now)
                    .await;
                (qi, ticket, r, sent, (now, lease_until))
            });
            reserved.push((task.id(), free));
            continue;
        }
        let mut stop = shared.stop.clone();
        if claims.is_empty() && empty >= cursors.len() && !stragglers {
            // Nothing to claim: wait for a local enqueue, a probe's find, or
            // the idle wait, which starts short after work (jobs enqueued by
            // other processes in a trickle are found within a few ms) and
            // doubles up to the poll interval while nothing comes. Probes
            // due meanwhile are sent next round.
            idle = true;
            backlog = false;
            tokio::select! {
                _ = ready_rx.changed() => idle = false,
                _ = tokio::time::sleep(idle_wait) => {}
                _ = stop.wait_for(|s| *s) => {}
                Some((qi, found)) = found_rx.recv() => cursors[qi].add_stragglers(found),
            }
            idle_wait = (idle_wait * 2).min(shared.poll_interval);
            empty = 0;
            continue;
        }
        // Wait for a claim to come back or a slot to free (or stop).
        let done = tokio::select! {
            Some(done) = claims.join_next_with_id(), if !claims.is_empty() => Some(done),
            _ = shared.slot_freed.notified() => None,
            _ = stop.wait_for(|s| *s) => None,
        };
        if let Some(done) = done {
            match settle_claim(&shared, &mut cursors, &mut reserved, &mut lost, done) {
                Some((picked, want)) => note!(picked, want),
                None => {
                    failures += 1;
                    if shared.sleep_or_stop(Outage::backoff(failures)).await {
                        break;
                    }
                }
            }
        }
    }
    // Claims in flight finish: their jobs are started or handed back like
    // any other claimed at shutdown.
    while let Some(done) = claims.join_next_with_id().await {
        settle_claim(&shared, &mut cursors, &mut reserved, &mut lost, done);
    }
    if !lost.is_empty() {
        // One try; what it cannot release waits for its lease.
        let _ = release_lost(&shared, &lost).await;
    }
    prober.abort();
}

/// Hands back, without spending an attempt, the jobs that claims whose
/// reply was lost leased to this runtime.
pub(super) async fn release_lost(shared: &Shared, lost: &[LostClaim]) -> Result<()> {
    let store = shared.client.store();
    let mut released = 0;
    for &(claimed_at, lease_until) in lost {
        released += store
            .release_lost_claim(&shared.owner, claimed_at, lease_until, shared.client.now())
            .await?;
    }
    if released > 0 {
        tracing::warn!(
            jobs = released,
            "handed back jobs that a claim leased while its reply was lost"
        );
        shared.client.inner.ready_gen.send_modify(|g| *g += 1);
    }
    Ok(())
}

/// Records a finished claim and starts its jobs: `(rows taken, wanted)`, or
/// `None` if it failed.
pub(super) fn settle_claim(
    shared: &Arc<Shared>,
    cursors: &mut [Cursors],
    reserved: &mut Vec<(tokio::task::Id, usize)>,
    lost: &mut Vec<LostClaim>,
    done: std::result::Result<(tokio::task::Id, ClaimDone), tokio::task::JoinError>,
) -> Option<(usize, usize)> {
    let id = match &done {
        Ok((id, _)) => *id,
        Err(e) => e.id(),
    };
    reserved.retain(|r| r.0 != id);
    let Ok((_, (qi, ticket, result, sent, claim))) = done else {
        // The claim's task panicked (it does not): its stragglers are found
        // again by the next probes.
        return None;
    };
    let want = ticket.limit;
    let settled = cursors[qi].settle(ticket, result);
    shared.outage.track("claim", sent, &settled);
    if let Err(Error::Database(e)) = &settled
        && is_connection_error(e)
    {
        lost.push(claim);
    }
    let (jobs, picked) = settled.ok()?;
    shared.client.inner.metrics.record_claim(sent.elapsed());
    tracing::trace!(queue = %shared.queues[qi], want, got = jobs.len(), "claimed");
    for job in jobs {
        super::executor::spawn_job(shared, job);
    }
    Some((picked, want))
}

/// Jobs claimed beyond the free slots that are waiting for one.
pub(super) fn prefetched(shared: &Shared) -> usize {
    shared.waiting.load(std::sync::atomic::Ordering::SeqCst)
}

/// A probe request: a queue's index and the `(priority, low, high]` ranges
/// behind its cursors.
pub(super) type ProbeRequest = (usize, Vec<(u8, u64, u64)>);
/// A probe's finds: a queue's index and `(priority, seq)` keys.
pub(super) type ProbeFinds = (usize, Vec<(u8, u64)>);

pub(super) async fn prober(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<ProbeRequest>,
    tx: mpsc::Sender<ProbeFinds>,
) {
    while let Some((qi, ranges)) = rx.recv().await {
        let queue = &shared.queues[qi];
        let sent = Instant::now();
        let probed = shared.client.store().probe(queue, &ranges).await;
        shared.outage.track("probe", sent, &probed);
        if let Ok(found) = probed
            && !found.is_empty()
        {
            tracing::debug!(queue = %queue, rows = found.len(), "found ready rows behind the claim cursor");
            if tx.send((qi, found)).await.is_err() {
                return;
            }
        }
    }
}
