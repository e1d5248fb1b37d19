//! Claim latency and start lag of this client's runtimes over the last minute.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Claim latencies of this client's runtimes over the last minute.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    claims: Mutex<VecDeque<(Instant, Duration)>>,
    start_lags: Mutex<VecDeque<(Instant, Duration)>>,
}

impl Metrics {
    pub(crate) fn record_claim(&self, d: Duration) {
        Self::record(&self.claims, d);
    }

    pub(crate) fn record_start_lag(&self, d: Duration) {
        Self::record(&self.start_lags, d);
    }

    /// (p50, p99) of the time from a job's run time to its start, over the
    /// last minute, in this process.
    pub(crate) fn start_lag(&self) -> Option<(Duration, Duration)> {
        Self::percentiles(&self.start_lags)
    }

    pub(crate) fn record(ring: &Mutex<VecDeque<(Instant, Duration)>>, d: Duration) {
        let mut c = ring.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        c.push_back((now, d));
        while c
            .front()
            .is_some_and(|f| now.duration_since(f.0) > Duration::from_secs(60))
            || c.len() > 100_000
        {
            c.pop_front();
        }
    }

    /// (p50, p99) of claim latency over the last minute.
    pub(crate) fn claim_latency(&self) -> Option<(Duration, Duration)> {
        Self::percentiles(&self.claims)
    }

    pub(crate) fn percentiles(
        ring: &Mutex<VecDeque<(Instant, Duration)>>,
    ) -> Option<(Duration, Duration)> {
        let c = ring.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_empty() {
            return None;
        }
        let mut v: Vec<Duration> = c.iter().map(|x| x.1).collect();
        v.sort();
        // Nearest rank: index ⌈q·n⌉ − 1.
        let at = |per_mille: usize| v[(v.len() * per_mille).div_ceil(1000).saturating_sub(1)];
        Some((at(500), at(990)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn percentiles_use_nearest_rank() {
        let m = Metrics::default();
        for i in 1..=100 {
            m.record_claim(Duration::from_millis(i));
        }
        assert_eq!(
            m.claim_latency(),
            Some((Duration::from_millis(50), Duration::from_millis(99)))
        );
    }
}
