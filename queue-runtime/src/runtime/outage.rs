//! Database outages: logged once when they begin and once when they end.

use crate::error::{Error, Result, is_connection_error};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Logs a database outage once, and its end once.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    state: Mutex<OutageState>,
}

#[derive(Debug, Default)]
pub(super) struct OutageState {
    /// When the current outage was noticed.
    since: Option<Instant>,
    /// When the last outage ended.
    ended: Option<Instant>,
}

impl Outage {
    /// Records a failure of a statement of `what` sent at `sent`; logs only
    /// the first of an outage. A connection failure of a statement sent
    /// before the last outage ended belongs to that outage (its pool
    /// acquire waited through it and gave up after the server was back):
    /// it does not start a new one.
    pub(crate) fn failed(&self, what: &str, e: &Error, sent: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.since.is_some() {
            return;
        }
        if !matches!(e, Error::Database(db) if is_connection_error(db)) {
            tracing::warn!(error = %e, during = what, "database statement failed; retrying");
        } else if state.ended.is_some_and(|end| sent < end) {
            tracing::debug!(error = %e, during = what, "a statement sent during the last outage failed after it ended");
        } else {
            tracing::error!(error = %e, during = what, "database unavailable; the runtime keeps retrying");
            state.since = Some(Instant::now());
        }
    }

    /// Records the success of a statement sent at `sent`; logs the end of
    /// an outage. Only a statement sent after the outage was noticed ends
    /// it: while a server shuts down, statements already in flight on other
    /// connections may still complete after the first one failed, and they
    /// say nothing about whether the server is back.
    pub(crate) fn ok(&self, sent: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = state.since
            && sent > t
        {
            state.since = None;
            state.ended = Some(Instant::now());
            tracing::warn!(after = ?t.elapsed(), "database reachable again; the runtime resumed");
        }
    }

    /// Records the result of a statement of `what` sent at `sent`.
    pub(crate) fn track<T>(&self, what: &str, sent: Instant, result: &Result<T>) {
        match result {
            Ok(_) => self.ok(sent),
            Err(e) => self.failed(what, e, sent),
        }
    }

    #[cfg(test)]
    pub(crate) fn since(&self) -> Option<Instant> {
        self.state.lock().unwrap().since
    }

    pub(crate) fn backoff(failures: u32) -> Duration {
        let ms = 50u64.saturating_mul(1 << failures.min(7)).min(5_000);
        Duration::from_millis(ms + fastrand::u64(0..=ms / 4))
    }
}

/// Consecutive failures of one of the runtime's loops, and how long it
/// waits before its next try: 50 ms doubling to 5 s, with jitter.
#[derive(Debug, Default)]
pub(crate) struct Failures(u32);

impl Failures {
    /// Counts a failure; returns the wait before the next try.
    pub(crate) fn next_wait(&mut self) -> Duration {
        self.0 = self.0.saturating_add(1);
        Outage::backoff(self.0)
    }

    /// A statement succeeded: the next failure waits the least again.
    pub(crate) fn reset(&mut self) {
        self.0 = 0;
    }

    /// Whether the last statement failed.
    pub(crate) fn any(&self) -> bool {
        self.0 > 0
    }
}

impl Outage {
    /// Runs `statement` until it succeeds, recording each result and
    /// waiting [`Failures`]' backoff between tries: for writes that must
    /// not be dropped (outcomes). Returns the value, and whether a try
    /// failed first (its effect may have reached the server with the
    /// reply lost).
    pub(crate) async fn until_ok<T, F, Fut>(&self, what: &str, mut statement: F) -> (T, bool)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = crate::error::Result<T>>,
    {
        let mut failures = Failures::default();
        loop {
            let sent = Instant::now();
            let result = statement().await;
            self.track(what, sent, &result);
            match result {
                Ok(value) => return (value, failures.any()),
                Err(_) => tokio::time::sleep(failures.next_wait()).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn an_outage_ends_only_with_a_statement_sent_after_it_began() {
        let outage = Outage::default();
        let in_flight = Instant::now();
        let lost = Error::Database(sqlx::Error::PoolTimedOut);
        outage.failed("claim", &lost, Instant::now());
        let began = outage.since().expect("a connection error starts an outage");
        // A statement already in flight when the server went away completes:
        // the outage goes on.
        outage.ok(in_flight);
        assert_eq!(outage.since(), Some(began));
        // Further failures do not restart it.
        outage.failed("heartbeat", &lost, Instant::now());
        assert_eq!(outage.since(), Some(began));
        let waiting = Instant::now();
        outage.ok(Instant::now());
        assert_eq!(outage.since(), None, "a later statement ends it");
        // A statement sent during the outage (its acquire waited through it)
        // fails after the end: that is the old outage, not a new one.
        outage.failed("heartbeat", &lost, waiting);
        assert_eq!(outage.since(), None, "a late failure of the old outage");
        // A statement error that is not about the connection is no outage.
        outage.failed(
            "claim",
            &Error::Database(sqlx::Error::RowNotFound),
            Instant::now(),
        );
        assert_eq!(outage.since(), None);
        // A statement sent after the end fails: a new outage.
        outage.failed("claim", &lost, Instant::now());
        assert!(outage.since().is_some_and(|t| t > began), "a new outage");
    }
}
