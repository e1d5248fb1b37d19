//! Takes back jobs whose lease expired (any runtime's), and repairs the
//! claim index now and then.

use super::outcome::{self, Decision, Ended};
use super::*;
use crate::store::{ExpiredLease, Rescue};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a runtime looks for ready jobs missing from the claim index.
pub(super) const HEAL_INTERVAL: Duration = Duration::from_secs(3600);
/// How often a runtime refreshes its row in `queue_runtimes`.
pub(super) const REGISTRY_BEAT: Duration = Duration::from_secs(10);
/// A registry row without a heartbeat for this long is a runtime that
/// died: deleted by the hourly pass.
const REGISTRY_STALE: Duration = Duration::from_secs(600);
/// Per-minute counts are kept this long (a day, and an hour of margin).
const COUNTS_KEPT: Duration = Duration::from_secs(25 * 3600);

/// How often a runtime with limited tasks looks for blocked jobs whose
/// semaphore has room nobody handed them (a raised limit).
const UNBLOCK_INTERVAL: Duration = Duration::from_secs(30);

pub(super) async fn rescuer(shared: Arc<Shared>) {
    let interval = (shared.lease / 3).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut last_ok: Option<DateTime<Utc>> = None;
    let mut last_full = Instant::now();
    let mut last_heal: Option<Instant> = None;
    let mut last_unblock: Option<Instant> = None;
    let mut last_beat = Instant::now();
    loop {
        if last_beat.elapsed() >= REGISTRY_BEAT {
            // The runtime's own row: one upsert every 10 s (it comes back
            // if a long outage let another runtime prune it).
            last_beat = Instant::now();
            shared
                .beat_registry("refreshing the runtime registry")
                .await;
        }
        let now = shared.client.now();
        // Look at leases that expired since the last pass (with a margin);
        // the whole index now and then, and at start.
        // (A 10-s margin covers clocks of other processes a little behind.)
        let since = match last_ok {
            Some(t) if last_full.elapsed() < Duration::from_secs(600) => {
                Some(crate::clock::sub(t, Duration::from_secs(10)))
            }
            _ => {
                last_full = Instant::now();
                None
            }
        };
        // One cheap non-locking look first; the locking pass only when it
        // finds an expired lease.
        let store = shared.client.store();
        let sent = Instant::now();
        let pass = match store.any_expired(now, since).await {
            Ok(false) => Ok(Vec::new()),
            Ok(true) => {
                store
                    .rescue_expired(now, since, &|lease| rescue(lease, now))
                    .await
            }
            Err(e) => Err(e),
        };
        shared.outage.track("lease rescue", sent, &pass);
        if pass.is_ok() && last_heal.is_none_or(|t| t.elapsed() >= HEAL_INTERVAL) {
            // At start and hourly: ready jobs that have no row in the claim
            // index (written by SQL from outside, or by an earlier
            // version's bulk enqueue on a server whose
            // auto_increment_increment is not 1) are put back in it. A
            // full scan of both tables (~3.6 s at 1,000,000 ready jobs).
            let sent = Instant::now();
            let healed = store.heal_claim_index(now).await;
            shared.outage.track("claim index repair", sent, &healed);
            // A failure is logged by `track`; the next try is in an hour
            // too (a statement that hit its time limit would hit it again).
            last_heal = Some(Instant::now());
            let sent = Instant::now();
            let pruned = store.prune_limits(now).await;
            shared
                .outage
                .track("pruning idle limit rows", sent, &pruned);
            let sent = Instant::now();
            let pruned = store
                .prune_operator_rows(
                    crate::clock::sub(now, REGISTRY_STALE),
                    crate::clock::sub(now, COUNTS_KEPT),
                )
                .await;
            shared
                .outage
                .track("pruning stale runtimes and old counts", sent, &pruned);
            if let Ok(n @ 1..) = healed {
                tracing::warn!(
                    jobs = n,
                    "put ready jobs missing from the claim index back in it"
                );
                shared.client.inner.ready_gen.send_modify(|g| *g += 1);
            }
        }
        if !shared.limits.is_empty() && last_unblock.is_none_or(|t| t.elapsed() >= UNBLOCK_INTERVAL)
        {
            last_unblock = Some(Instant::now());
            let sent = Instant::now();
            let unblocked = store.unblock_where_room(now).await;
            shared.outage.track("unblocking jobs", sent, &unblocked);
            if let Ok(n @ 1..) = unblocked {
                tracing::info!(jobs = n, "handed free slots to blocked jobs");
                shared.client.inner.ready_gen.send_modify(|g| *g += 1);
            }
        }
        if let Ok(rescued) = pass {
            last_ok = Some(now);
            let buried = rescued.iter().filter(|r| r.dead).count();
            let requeued = rescued.len() - buried;
            for r in &rescued {
                let event = if r.dead {
                    crate::store::operator::Event::Dead
                } else {
                    crate::store::operator::Event::Failed
                };
                shared.count(&r.queue, &r.task, event);
                crate::telemetry::rescued(&r.queue, &r.task, r.dead);
            }
            if !rescued.is_empty() {
                tracing::warn!(requeued, buried, "took back jobs whose lease expired");
                shared.client.inner.ready_gen.send_modify(|g| *g += 1);
            }
        }
        if shared.sleep_or_stop(interval).await {
            return;
        }
    }
}

/// The retry policy's answer for a job whose worker was lost.
fn rescue(lease: &ExpiredLease, now: DateTime<Utc>) -> Rescue {
    let decision = outcome::decide(
        Ended::LeaseLost,
        lease.attempt,
        lease.max_attempts,
        &queue_core::Backoff::default(),
        &mut fastrand::Rng::new(),
    );
    match decision {
        Decision::Retry { after, error, .. } => Rescue::Retry {
            run_at: crate::clock::add(now, after),
            error,
        },
        Decision::Dead { error } => Rescue::Dead { error },
        // A lost worker's attempt never succeeded.
        Decision::Complete => Rescue::Retry {
            run_at: now,
            error: "lease expired".into(),
        },
    }
}
