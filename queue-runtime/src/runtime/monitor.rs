//! Watches claim latency and InnoDB's history list length for purge lag.

use super::*;
use std::sync::Arc;
use std::time::Duration;

/// Watches for purge lag: every 10 s, logs the claim latency and InnoDB's
/// history list length (at debug level), and warns once per episode when the
/// claim p99 has doubled (and exceeds 5 ms) while the history list grew by
/// more than 10,000 since the best window seen — the sign of a long-open
/// read view stalling purge (docs/architecture.md).
pub(super) async fn monitor(shared: Arc<Shared>) {
    let period = Duration::from_secs(10);
    // (claim p99, history list length) of the fastest window seen.
    let mut baseline: Option<(Duration, u64)> = None;
    let mut warned = false;
    loop {
        if shared.sleep_or_stop(period).await {
            return;
        }
        let Some((p50, p99)) = shared.client.inner.metrics.claim_latency() else {
            continue;
        };
        let Some(hll) = shared.client.history_list_length().await else {
            continue;
        };
        crate::telemetry::history_list_length(hll);
        tracing::debug!(claim_p50 = ?p50, claim_p99 = ?p99, history_list_length = hll, "claim health");
        let (base_p99, base_hll) = *baseline.get_or_insert((p99, hll));
        if purge_lag_suspected(p99, hll, base_p99, base_hll) {
            if !warned {
                tracing::warn!(
                    claim_p99 = ?p99,
                    baseline_p99 = ?base_p99,
                    history_list_length = hll,
                    baseline_history_list_length = base_hll,
                    "claims slowed while InnoDB's history list grew: a long-open transaction may be stalling purge"
                );
                warned = true;
            }
        } else {
            warned = false;
            if p99 < base_p99 {
                baseline = Some((p99, hll));
            }
        }
    }
}

/// How far InnoDB's history list may grow beyond its baseline before the
/// monitor suspects purge lag (with slowed claims); the dashboard
/// (`web` feature) warns when the list is longer than this.
pub(crate) const PURGE_LAG_HISTORY: u64 = 10_000;

/// The monitor's rule: claim p99 at least doubled (and above 5 ms) while
/// the history list grew by more than [`PURGE_LAG_HISTORY`] since the
/// baseline.
pub(super) fn purge_lag_suspected(
    p99: Duration,
    hll: u64,
    base_p99: Duration,
    base_hll: u64,
) -> bool {
    p99 >= base_p99 * 2
        && p99 > Duration::from_millis(5)
        && hll > base_hll.saturating_add(PURGE_LAG_HISTORY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_lag_needs_both_slow_claims_and_a_growing_history() {
        let ms = Duration::from_millis;
        assert!(purge_lag_suspected(ms(12), 40_000, ms(3), 500));
        assert!(
            !purge_lag_suspected(ms(12), 5_000, ms(3), 500),
            "history did not grow"
        );
        assert!(
            !purge_lag_suspected(ms(4), 40_000, ms(1), 500),
            "still fast"
        );
        assert!(
            !purge_lag_suspected(ms(8), 40_000, ms(6), 500),
            "not doubled"
        );
    }
}
