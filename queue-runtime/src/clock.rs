//! Where the runtime reads the time.
//!
//! Every time the runtime writes to the database (run times, leases, cron
//! ticks) comes from a [`Clock`] and is passed to SQL as a parameter; no
//! statement calls `NOW()`. Tests use a [`ManualClock`] to move time forward
//! instead of sleeping.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
    /// A receiver that changes whenever the clock is moved by hand; `None`
    /// for clocks that only move on their own.
    fn watch(&self) -> Option<watch::Receiver<DateTime<Utc>>> {
        None
    }
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until it is set or advanced: for tests.
#[derive(Clone, Debug)]
pub struct ManualClock {
    inner: Arc<Mutex<DateTime<Utc>>>,
    tx: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        let (tx, _) = watch::channel(start);
        Self {
            inner: Arc::new(Mutex::new(start)),
            tx: Arc::new(tx),
        }
    }

    /// Sets the time.
    pub fn set(&self, t: DateTime<Utc>) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = t;
        self.tx.send_replace(t);
    }

    /// Moves the time forward by `d` (saturating at the latest time the
    /// database can store).
    pub fn advance(&self, d: std::time::Duration) {
        self.set(add(self.now(), d));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watch(&self) -> Option<watch::Receiver<DateTime<Utc>>> {
        Some(self.tx.subscribe())
    }
}

/// Adds a std duration to a time, saturating at the latest time a
/// `DATETIME(6)` column stores ([`crate::time::latest`]) rather than at
/// chrono's own maximum (year 262142), which no statement could write.
pub(crate) fn add(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    let latest = crate::time::latest();
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .map_or(latest, |t| t.min(latest))
}

/// Subtracts a std duration from a time, saturating.
pub(crate) fn sub(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Waits until a hand-moved clock changes; forever for a clock that moves
/// on its own (`None`).
pub(crate) async fn moved(rx: &mut Option<watch::Receiver<DateTime<Utc>>>) {
    match rx.as_mut() {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn add_saturates_at_the_latest_datetime() {
        let now = Utc::now();
        assert_eq!(
            add(now, Duration::from_secs(1)),
            now + chrono::Duration::seconds(1)
        );
        let latest = crate::time::latest();
        assert_eq!(add(now, Duration::MAX), latest);
        assert_eq!(add(now, Duration::from_secs(20_000 * 365 * 86_400)), latest);
    }
}
