//! Writes outcomes: successes in batches (lingering for more), retries
//! and deaths one by one.

use super::*;
use crate::store::SlottedSuccess;
use queue_core::JobId;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the acker waits for more outcomes to write with the first one.
pub(super) const ACK_LINGER: Duration = Duration::from_millis(2);
/// The same when the first outcome is of a job holding a concurrency slot:
/// none. The slot is idle until its outcome is written, and what else has
/// arrived goes with it anyway (with a batch cut across the lanes of
/// [`SLOTTED_IN_FLIGHT`], a linger of 0.3 ms cost a task limit of 50 about
/// 10 % of its throughput in the bench's `limits`, 1 ms about 25 %).
const ACK_LINGER_SLOTTED: Duration = Duration::ZERO;
/// Outcomes taken from the queue per write at most (the store cuts the
/// DELETE into statements of `FENCE_CHUNK` jobs).
const ACK_BATCH: usize = 1000;
/// Transactions recording successes of slot holders in flight at once: a
/// freed slot's next job waits for its predecessor's transaction, so while
/// one commits the next batch is already on its way (each locks only the
/// blocked jobs it hands on, skipping the others' locked ones; none locks
/// the semaphore of a key whose freed slots all went to blocked jobs).
const SLOTTED_IN_FLIGHT: usize = 4;
/// The fewest successes of slot holders a batch is cut into parts of, to
/// use more of the lanes of [`SLOTTED_IN_FLIGHT`].
const SLOTTED_PART_MIN: usize = 8;

/// How long per-minute counts wait, at most, for an acknowledgement to
/// carry them before they are written alone.
const TALLY_EVERY: Duration = Duration::from_secs(1);

/// Writes the per-minute counts in a statement of their own: when they
/// have waited [`TALLY_EVERY`] (or at once with `now`). Counts that cannot
/// be written are kept for the next try.
async fn flush_tally(shared: &Arc<Shared>, now: bool) {
    let tally = {
        let mut t = shared.tally();
        if t.is_empty() || (!now && t.age() < TALLY_EVERY) {
            return;
        }
        std::mem::take(&mut *t)
    };
    let sent = std::time::Instant::now();
    let written = shared.client.store().add_throughput(&tally).await;
    shared
        .outage
        .track("writing per-minute counts", sent, &written);
    if written.is_err() {
        shared.tally().merge(tally);
    }
}

/// Writes outcomes. Successes are batched: whatever has arrived since the
/// last write goes in one DELETE.
pub(super) async fn acker(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Ack>) {
    let mut stop = false;
    let mut slotted_writes = tokio::task::JoinSet::new();
    while !stop {
        // Counts waiting to be written get a write of their own within
        // TALLY_EVERY when no acknowledgement comes to carry them.
        let counting = !shared.tally().is_empty();
        let first = tokio::select! {
            a = rx.recv() => a,
            _ = tokio::time::sleep(TALLY_EVERY), if counting => {
                flush_tally(&shared, true).await;
                continue;
            }
        };
        let Some(first) = first else { break };
        let slotted = match &first {
            Ack::Complete { id, attempt } => shared.slot_of(*id, *attempt).is_some(),
            _ => false,
        };
        let mut batch = Vec::new();
        stash(&shared, first, &mut batch);
        let linger = tokio::time::sleep(if slotted {
            ACK_LINGER_SLOTTED
        } else {
            ACK_LINGER
        });
        tokio::pin!(linger);
        while batch.len() + shared.pending_successes() < ACK_BATCH {
            match rx.try_recv() {
                Ok(a) => stash(&shared, a, &mut batch),
                Err(_) => {
                    tokio::select! {
                        a = rx.recv() => match a {
                            Some(a) => stash(&shared, a, &mut batch),
                            None => break,
                        },
                        _ = &mut linger => break,
                    }
                }
            }
            if matches!(batch.last(), Some(Ack::Stop)) {
                break;
            }
        }
        if batch.iter().any(|a| matches!(a, Ack::Stop)) {
            stop = true;
            // Flush what else is queued.
            while let Ok(a) = rx.try_recv() {
                stash(&shared, a, &mut batch);
            }
        }
        let (mut slotted, rest) = split_slotted(&shared, batch);
        if !slotted.is_empty() {
            while slotted_writes.len() >= SLOTTED_IN_FLIGHT {
                slotted_writes.join_next().await;
            }
            // A big batch goes out as several transactions side by side, on
            // the free lanes: the jobs handed the freed slots come back from
            // each as it commits, so the slot holders do not move as one
            // cohort that waits for one transaction at a time.
            let lanes = SLOTTED_IN_FLIGHT - slotted_writes.len();
            let parts = lanes.min(slotted.len().div_ceil(SLOTTED_PART_MIN)).max(1);
            let size = slotted.len().div_ceil(parts);
            while !slotted.is_empty() {
                let part: Slotted = slotted.drain(..size.min(slotted.len())).collect();
                let s = shared.clone();
                slotted_writes.spawn(async move { write_slotted(&s, part).await });
            }
        }
        write_acks(&shared, rest).await;
        // Reap the finished ones.
        while slotted_writes.try_join_next().is_some() {}
    }
    // Outcomes of heirs settled by the last writes come back on the channel.
    loop {
        while slotted_writes.join_next().await.is_some() {}
        let mut rest = Vec::new();
        while let Ok(a) = rx.try_recv() {
            stash(&shared, a, &mut rest);
        }
        if rest.is_empty() && shared.pending_successes() == 0 {
            break;
        }
        write_acks(&shared, rest).await;
    }
    // The last per-minute counts, whatever their age.
    flush_tally(&shared, true).await;
}

/// Successes of jobs holding a concurrency slot.
type Slotted = Vec<SlottedSuccess>;

/// Takes the successes of slot holders out of `batch`.
fn split_slotted(shared: &Shared, batch: Vec<Ack>) -> (Slotted, Vec<Ack>) {
    let mut slotted = Vec::new();
    let mut rest = Vec::new();
    for a in batch {
        match a {
            Ack::Complete { id, attempt } => match super::spares::fold(shared, id, attempt) {
                Some(s) => slotted.push(s),
                None => rest.push(a),
            },
            other => rest.push(other),
        }
    }
    (slotted, rest)
}

/// Records successes of jobs holding concurrency slots, releasing the
/// slots (or recording them as their heirs'), and starts the jobs handed
/// the freed slots; the spares handed with them are held.
async fn write_slotted(shared: &Arc<Shared>, slotted: Slotted) {
    let client = &shared.client;
    let store = client.store();
    let t0 = std::time::Instant::now();
    let batch_len = slotted.len();
    let done = shared
        .outage
        .until_ok("recording successes", || {
            let now = client.now();
            let handoff = shared.handoff(now, slotted.len());
            let slotted = &slotted;
            async move { store.complete_slotted(slotted, now, handoff.as_ref()).await }
        })
        .await
        .0;
    tracing::trace!(
        batch = batch_len,
        deleted = done.deleted,
        handed = done.handed.len(),
        spares = done.spares.len(),
        indexed = done.indexed,
        took = ?t0.elapsed(),
        "recorded successes holding slots"
    );
    if done.indexed > 0 {
        // Jobs made ready in the claim index: wake the producers. (Jobs
        // handed straight to this runtime start below; waking its own
        // producer for them would only make it claim from an empty index.)
        client.inner.ready_gen.send_modify(|g| *g += 1);
    }
    // Jobs handed the freed slots start here at once; then the heirs are
    // settled and the spares held, before the finished jobs leave (a key
    // whose holders all left hands its spares back).
    let (spares, holders): (Vec<_>, Vec<_>) = done
        .handed
        .into_iter()
        .partition(|j| done.spares.contains(&j.id.0));
    for job in holders {
        match shared.queues.iter().position(|q| *q == job.queue) {
            Some(i) => super::executor::spawn_job(shared, job, i),
            None => {
                tracing::error!(job.id = %job.id, "a job handed a slot is of a queue this runtime does not serve; left to its lease")
            }
        }
    }
    let heirs: Vec<(JobId, u32)> = slotted.iter().filter_map(|s| s.heir).collect();
    super::spares::settle(shared, &heirs, &done.disinherited);
    super::spares::hold(shared, spares);
    for s in &slotted {
        shared.finished(s.id, s.attempt);
        for (id, attempt) in &s.also {
            shared.finished(*id, *attempt);
        }
    }
}

/// Writes one attempt's outcome, `slot` being the concurrency key whose
/// slot the job held: the one place where an `Ack` becomes SQL, for the
/// acker's retries and deaths and for the inline runner
/// (`queue_runtime::testing`). False if the write found the job no longer
/// at its attempt (its lease was lost).
pub(super) async fn write_outcome(
    store: &crate::store::Store,
    ack: &Ack,
    slot: Option<&[u8]>,
    now: chrono::DateTime<chrono::Utc>,
) -> crate::error::Result<bool> {
    match ack {
        Ack::Complete { id, attempt } => Ok(match slot {
            // The slot goes to the next blocked job of its key.
            Some(key) => {
                store
                    .complete_slotted(
                        &[SlottedSuccess {
                            id: *id,
                            attempt: *attempt,
                            key: key.to_vec(),
                            also: Vec::new(),
                            heir: None,
                            spares: 0,
                        }],
                        now,
                        None,
                    )
                    .await?
                    .deleted
            }
            None => store.complete(&[(*id, *attempt)]).await?,
        } > 0),
        Ack::Retry {
            id,
            attempt,
            run_at,
            error,
            refund,
        } => {
            store
                .retry_later((*id, *attempt), *run_at, error, now, *refund, slot)
                .await
        }
        Ack::Dead { id, attempt, error } => store.mark_dead(*id, *attempt, error, now, slot).await,
        Ack::Stop | Ack::Pending => Ok(true),
    }
}

/// Puts a success of a job without a concurrency slot where the next claim
/// can take it (`Shared::pending_done`: it rides in the claim's
/// transaction, see `Store::claim_ticket`); everything else in `batch`.
fn stash(shared: &Shared, a: Ack, batch: &mut Vec<Ack>) {
    // An unsettled heir's outcome waits for its slot to be recorded.
    let Some(a) = super::spares::defer_unsettled(shared, a) else {
        return;
    };
    match a {
        Ack::Complete { id, attempt } if shared.slot_of(id, attempt).is_none() => {
            shared.push_success(id, attempt);
        }
        Ack::Pending => {}
        other => batch.push(other),
    }
}

pub(super) async fn write_acks(shared: &Arc<Shared>, batch: Vec<Ack>) {
    let client = &shared.client;
    let store = client.store();
    // The successes no claim has taken meanwhile.
    let mut done = shared.take_successes(usize::MAX);
    let mut others = Vec::new();
    for a in batch {
        match a {
            Ack::Complete { id, attempt } => match super::spares::fold(shared, id, attempt) {
                Some(s) => write_slotted(shared, vec![s]).await,
                None => done.push((id, attempt)),
            },
            Ack::Stop | Ack::Pending => {}
            other => others.push(other),
        }
    }
    let mut tally_written = false;
    if !done.is_empty() {
        // The per-minute counts ride in the successes' transaction.
        let tally = std::mem::take(&mut *shared.tally());
        let (n, retried) = shared
            .outage
            .until_ok("recording successes", || {
                store.complete_tallied(&done, &tally)
            })
            .await;
        tally_written = true;
        let mut lost = done.len() - (n as usize).min(done.len());
        if lost > 0 && retried {
            // An earlier try may have deleted them with its reply lost:
            // only jobs still there, at another attempt, were taken by
            // another runtime.
            let ids: Vec<JobId> = done.iter().map(|d| d.0).collect();
            if let Ok(left) = store.count_existing(&ids).await {
                lost = left as usize;
            }
        }
        if lost > 0 {
            tracing::warn!(
                lost,
                "some successes were not recorded: their lease had expired and another runtime took them"
            );
        }
        for (id, attempt) in &done {
            shared.finished(*id, *attempt);
        }
    }
    for a in others {
        let id = a.id();
        let slot = id.and_then(|(id, attempt)| shared.slot_of(id, attempt));
        let (recorded, _) = shared
            .outage
            .until_ok("recording an outcome", || async {
                write_outcome(store, &a, slot.as_deref(), client.now()).await
            })
            .await;
        if !recorded {
            tracing::warn!(job.id = ?id, "outcome not recorded: the job's lease had expired and another runtime took it");
        }
        if matches!(a, Ack::Retry { .. }) || slot.is_some() {
            client.inner.scheduled_gen.send_modify(|g| *g += 1);
            client.inner.ready_gen.send_modify(|g| *g += 1);
        }
        if let Some((id, attempt)) = id {
            shared.finished(id, attempt);
        }
    }
    if !tally_written {
        // Counts of this batch's retries and deaths (or older ones) go now
        // in one statement if they waited long enough.
        flush_tally(shared, false).await;
    }
}
