//! Wake-ups of other processes' idle runtimes: an enqueue that made jobs
//! ready ends the parked statements of the sleepers it read with its commit
//! (`store/wake.rs`), each registration once, off the caller's path.
//!
//! `KILL QUERY` of a connection of the same database user needs no
//! privilege; of another user's, CONNECTION ADMIN (MariaDB ≥ 10.5, MySQL 8)
//! or SUPER. Refused once (error 1095), a client logs it once and from then
//! on kills only its own user's sleepers: the others find its jobs by
//! polling, as they would without wake-ups.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::client::Client;
use crate::store::wake::Sleeper;

/// Registrations remembered as killed, at most (then forgotten at once).
const REMEMBERED: usize = 4096;

/// A client's side of cross-process wake-ups.
#[derive(Debug, Default)]
pub(crate) struct Wakeups {
    /// The registration (`gen`) last killed, per connection id.
    killed: Mutex<HashMap<u64, u64>>,
    /// A kill of another user's sleeper was refused.
    refused: AtomicBool,
    /// Kills sent, and kills refused (for tests and the bench).
    sent: AtomicU64,
    refusals: AtomicU64,
}

/// Counts of a client's wake-ups. Not public API.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WakeupCounts {
    /// `KILL QUERY` statements sent.
    pub sent: u64,
    /// Of those, refused for want of privilege.
    pub refused: u64,
}

impl Wakeups {
    /// The sleepers to kill now: each registration once; another user's
    /// only while no kill was refused.
    fn pick(&self, sleepers: &[Sleeper]) -> Vec<u64> {
        let refused = self.refused.load(Ordering::Relaxed);
        let mut killed = self.killed.lock().unwrap_or_else(|p| p.into_inner());
        if killed.len() > REMEMBERED {
            killed.clear();
        }
        let mut out = Vec::new();
        for s in sleepers {
            if refused && !s.same_user {
                continue;
            }
            if killed.insert(s.conn_id, s.generation) != Some(s.generation) {
                out.push(s.conn_id);
            }
        }
        out
    }

    pub(crate) fn counts(&self) -> WakeupCounts {
        WakeupCounts {
            sent: self.sent.load(Ordering::Relaxed),
            refused: self.refusals.load(Ordering::Relaxed),
        }
    }
}

impl Client {
    /// Ends the sleeps of `sleepers` (read after a commit that made jobs
    /// ready), in a task of its own: the enqueue does not wait for it.
    pub(crate) fn wake_sleepers(&self, sleepers: &[Sleeper]) {
        if sleepers.is_empty() {
            return;
        }
        let ids = self.inner.wakeups.pick(sleepers);
        if ids.is_empty() {
            return;
        }
        let client = self.clone();
        tokio::spawn(async move {
            for id in ids {
                let w = &client.inner.wakeups;
                w.sent.fetch_add(1, Ordering::Relaxed);
                match client.store().kill_query(id).await {
                    Ok(()) => {}
                    Err(e) if e.db_code() == Some(1095) => {
                        w.refusals.fetch_add(1, Ordering::Relaxed);
                        if !w.refused.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                "cannot wake runtimes that connect as another database user \
                                 (KILL QUERY needs CONNECTION ADMIN or SUPER): they find this \
                                 process's jobs by polling"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, conn_id = id, "waking a sleeping runtime failed")
                    }
                }
            }
        });
    }

    /// Counts of this client's wake-ups of other processes' runtimes. Not
    /// public API.
    #[doc(hidden)]
    pub fn wakeup_counts(&self) -> WakeupCounts {
        self.inner.wakeups.counts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(conn_id: u64, generation: u64, same_user: bool) -> Sleeper {
        Sleeper {
            conn_id,
            generation,
            same_user,
        }
    }

    #[test]
    fn each_registration_is_killed_once() {
        let w = Wakeups::default();
        assert_eq!(w.pick(&[s(1, 1, true), s(2, 1, false)]), [1, 2]);
        assert!(w.pick(&[s(1, 1, true), s(2, 1, false)]).is_empty());
        assert_eq!(w.pick(&[s(1, 2, true)]), [1]);
        w.refused.store(true, Ordering::Relaxed);
        assert!(w.pick(&[s(3, 1, false)]).is_empty());
        assert_eq!(w.pick(&[s(4, 1, true)]), [4]);
    }
}
