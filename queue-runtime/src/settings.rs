//! The runtime's settings as `RuntimeBuilder` stores them, and the rules
//! `RuntimeBuilder::start` checks them against.
//!
//! The builder's methods store what they are given, unchanged, and never
//! fail; `start` checks everything at once and names every rule broken in
//! one [`Error::InvalidArgument`]. A value that works but is merely odd
//! (a heartbeat leaving little margin) starts with a warning.
//!
//! The bounds also keep every duration the runtime adds to a time well
//! inside what `Instant`, chrono and a `DATETIME(6)` column can hold.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::error::{Error, Result};

/// Most jobs in flight at once in one runtime. A claim brings back up to
/// `concurrency + prefetch` jobs in one statement.
pub(crate) const MAX_CONCURRENCY: usize = 10_000;
/// Most jobs claimed beyond the free slots.
pub(crate) const MAX_PREFETCH: usize = 10_000;

/// Unset, prefetch adapts between 1 and this many times `concurrency`:
/// about as many jobs as the runtime finishes in [`PREFETCH_HORIZON`], so
/// fast jobs are claimed in big batches and slow ones are not held back
/// from other runtimes. 16 rather than 4: no-op jobs at concurrency 10
/// drained ~1.7 × as fast (the cap bound the batch: 25 ms of them is
/// ~400), and prefetched jobs wait for a slot in priority order, so a
/// priority-0 job claimed behind a batch starts before it.
pub(crate) const ADAPTIVE_PREFETCH: usize = 16;

/// How long, at the runtime's recent pace, its prefetched jobs should last.
pub(crate) const PREFETCH_HORIZON: Duration = Duration::from_millis(25);
/// Shortest poll interval: shorter is a busy loop on the database.
pub(crate) const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Longest poll interval: jobs enqueued by other processes may wait this
/// long to be noticed by an idle runtime.
pub(crate) const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);
/// Shortest lease: a shorter one expires during an ordinary slow statement.
pub(crate) const MIN_LEASE: Duration = Duration::from_secs(1);
/// Longest lease: the jobs of a lost worker wait this long to be taken back.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(3600);
/// Shortest heartbeat: shorter is a busy loop on the database.
pub(crate) const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
/// The heartbeat when none is set, unless a third of the lease is shorter.
pub(crate) const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// What the builder was given.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) concurrency: usize,
    pub(crate) queues: Option<Vec<String>>,
    pub(crate) poll_interval: Duration,
    pub(crate) lease: Duration,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) prefetch: Option<usize>,
    /// Per-queue limits on jobs in flight, as given.
    pub(crate) queue_limits: Vec<(String, usize)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            concurrency: 10,
            queues: None,
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(15),
            heartbeat: None,
            prefetch: None,
            queue_limits: Vec::new(),
        }
    }
}

/// Settings that follow every rule, with the defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Checked {
    pub(crate) concurrency: usize,
    pub(crate) queues: Vec<String>,
    pub(crate) poll_interval: Duration,
    pub(crate) lease: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) prefetch: usize,
    /// `prefetch` is the most the runtime may prefetch, adapting below it
    /// (unset by the user); else it is fixed.
    pub(crate) adaptive_prefetch: bool,
    /// Per served queue (same order as `queues`): its limit on jobs in
    /// flight in this runtime, if it has one.
    pub(crate) queue_limits: Vec<Option<usize>>,
    /// Odd but workable values, to log at start.
    pub(crate) warnings: Vec<String>,
}

impl Settings {
    /// Checks every rule; `default_queues` gives the queues when none were
    /// set (the program's tasks' queues).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming every rule broken, `; `-separated.
    pub(crate) fn check(self, default_queues: impl FnOnce() -> Vec<String>) -> Result<Checked> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();

        if self.concurrency == 0 {
            errors.push("concurrency must be at least 1 (got 0)".to_owned());
        } else if self.concurrency > MAX_CONCURRENCY {
            errors.push(format!(
                "concurrency must be at most {MAX_CONCURRENCY} (got {})",
                self.concurrency
            ));
        }
        // Unset, it adapts up to `ADAPTIVE_PREFETCH × concurrency` (within
        // the limit), following `concurrency`, whose own rule covers it.
        let prefetch = self.prefetch.unwrap_or(
            self.concurrency
                .saturating_mul(ADAPTIVE_PREFETCH)
                .min(MAX_PREFETCH),
        );
        if self.prefetch.is_some() && prefetch > MAX_PREFETCH {
            errors.push(format!(
                "prefetch must be at most {MAX_PREFETCH} (got {prefetch})"
            ));
        }

        let queues = self.queues.unwrap_or_else(default_queues);
        if queues.is_empty() {
            errors.push(
                "queues must name at least one queue (got an empty list): the runtime would run nothing"
                    .to_owned(),
            );
        }
        let mut seen = BTreeSet::new();
        for q in &queues {
            if let Err(e) = queue_core::validate_queue_name(q) {
                errors.push(e.to_string());
            } else if !seen.insert(q.as_str()) {
                errors.push(format!("queue `{q}` is listed more than once in queues"));
            }
        }

        let poll = self.poll_interval;
        if poll < MIN_POLL_INTERVAL {
            errors.push(format!(
                "poll interval must be at least {MIN_POLL_INTERVAL:?} (got {poll:?})"
            ));
        } else if poll > MAX_POLL_INTERVAL {
            errors.push(format!(
                "poll interval must be at most {MAX_POLL_INTERVAL:?} (got {poll:?})"
            ));
        }

        let lease = self.lease;
        if lease < MIN_LEASE {
            errors.push(format!(
                "lease must be at least {MIN_LEASE:?} (got {lease:?})"
            ));
        } else if lease > MAX_LEASE {
            errors.push(format!(
                "lease must be at most {MAX_LEASE:?} (got {lease:?}): a lost worker's jobs wait that long to be taken back"
            ));
        }

        let heartbeat = self.heartbeat.unwrap_or(DEFAULT_HEARTBEAT.min(lease / 3));
        if heartbeat < MIN_HEARTBEAT {
            errors.push(format!(
                "heartbeat must be at least {MIN_HEARTBEAT:?} (got {heartbeat:?})"
            ));
        }
        if heartbeat >= lease {
            errors.push(format!(
                "heartbeat must be shorter than the lease (heartbeat {heartbeat:?}, lease {lease:?}): \
                 a lease not renewed before it expires is taken back while its job runs, and the job runs twice"
            ));
        } else if heartbeat > lease / 2 {
            warnings.push(format!(
                "heartbeat {heartbeat:?} is more than half the lease {lease:?}: one late beat lets a running job's \
                 lease expire and the job run twice; a third of the lease or less is safer"
            ));
        }

        let mut queue_limits = vec![None; queues.len()];
        let mut limited = BTreeSet::new();
        for (q, n) in &self.queue_limits {
            let Some(i) = queues.iter().position(|served| served == q) else {
                errors.push(format!(
                    "queue_concurrency names queue `{q}`, which this runtime does not serve \
                     (it serves {queues:?})"
                ));
                continue;
            };
            if !limited.insert(q.as_str()) {
                errors.push(format!("queue_concurrency is set twice for queue `{q}`"));
            } else if *n == 0 {
                errors.push(format!(
                    "queue_concurrency of queue `{q}` must be at least 1 (got 0): pause a queue with \
                     Client::pause_queue"
                ));
            } else if *n >= self.concurrency {
                warnings.push(format!(
                    "queue_concurrency of queue `{q}` ({n}) is not below the runtime's concurrency \
                     ({}): it limits nothing",
                    self.concurrency
                ));
            }
            queue_limits[i] = Some(*n);
        }

        if !errors.is_empty() {
            return Err(Error::InvalidArgument(errors.join("; ")));
        }
        Ok(Checked {
            adaptive_prefetch: self.prefetch.is_none(),
            concurrency: self.concurrency,
            queues,
            poll_interval: poll,
            lease,
            heartbeat,
            prefetch,
            queue_limits,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: Settings) -> std::result::Result<Checked, String> {
        s.check(|| vec!["default".to_owned()])
            .map_err(|e| e.to_string())
    }

    fn err(s: Settings) -> String {
        check(s).expect_err("invalid settings")
    }

    #[test]
    fn the_defaults_pass_without_warnings() {
        let c = check(Settings::default()).unwrap();
        assert_eq!(c.concurrency, 10);
        assert_eq!(c.prefetch, 10 * ADAPTIVE_PREFETCH);
        assert!(c.adaptive_prefetch);
        assert_eq!(c.queues, vec!["default".to_owned()]);
        assert_eq!(c.heartbeat, Duration::from_secs(5));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn the_default_heartbeat_is_a_third_of_a_short_lease() {
        let c = check(Settings {
            lease: Duration::from_secs(3),
            ..Settings::default()
        })
        .unwrap();
        assert_eq!(c.heartbeat, Duration::from_secs(1));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn each_rule_is_named() {
        let s = Settings::default;
        let ms = Duration::from_millis;
        let cases: Vec<(Settings, &str)> = vec![
            (
                Settings {
                    concurrency: 0,
                    ..s()
                },
                "concurrency must be at least 1",
            ),
            (
                Settings {
                    concurrency: usize::MAX,
                    ..s()
                },
                "concurrency must be at most 10000",
            ),
            (
                Settings {
                    prefetch: Some(usize::MAX),
                    ..s()
                },
                "prefetch must be at most 10000",
            ),
            (
                Settings {
                    queues: Some(vec![]),
                    ..s()
                },
                "queues must name at least one queue",
            ),
            (
                Settings {
                    queues: Some(vec!["a b".into()]),
                    ..s()
                },
                "invalid queue name `a b`",
            ),
            (
                Settings {
                    queues: Some(vec!["a".into(), "b".into(), "a".into()]),
                    ..s()
                },
                "queue `a` is listed more than once",
            ),
            (
                Settings {
                    poll_interval: Duration::ZERO,
                    ..s()
                },
                "poll interval must be at least 10ms",
            ),
            (
                Settings {
                    poll_interval: Duration::MAX,
                    ..s()
                },
                "poll interval must be at most 3600s",
            ),
            (
                Settings {
                    lease: Duration::ZERO,
                    ..s()
                },
                "lease must be at least 1s",
            ),
            (
                Settings {
                    lease: ms(999),
                    ..s()
                },
                "lease must be at least 1s",
            ),
            (
                Settings {
                    lease: Duration::MAX,
                    ..s()
                },
                "lease must be at most 3600s",
            ),
            (
                Settings {
                    heartbeat: Some(Duration::ZERO),
                    ..s()
                },
                "heartbeat must be at least 50ms",
            ),
            (
                Settings {
                    heartbeat: Some(Duration::from_secs(15)),
                    ..s()
                },
                "heartbeat must be shorter than the lease",
            ),
            (
                Settings {
                    heartbeat: Some(Duration::MAX),
                    ..s()
                },
                "heartbeat must be shorter than the lease",
            ),
        ];
        for (settings, rule) in cases {
            let text = err(settings.clone());
            assert!(
                text.contains(rule),
                "{settings:?}: expected `{rule}` in `{text}`"
            );
        }
    }

    #[test]
    fn every_broken_rule_is_named_at_once() {
        let text = err(Settings {
            concurrency: 0,
            queues: Some(vec![]),
            heartbeat: Some(Duration::from_secs(20)),
            ..Settings::default()
        });
        for rule in ["concurrency", "queues", "heartbeat"] {
            assert!(text.contains(rule), "{rule} in `{text}`");
        }
    }

    #[test]
    fn the_bounds_themselves_pass() {
        let c = check(Settings {
            concurrency: MAX_CONCURRENCY,
            prefetch: Some(MAX_PREFETCH),
            poll_interval: MIN_POLL_INTERVAL,
            lease: MAX_LEASE,
            heartbeat: Some(MIN_HEARTBEAT),
            ..Settings::default()
        })
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        check(Settings {
            concurrency: 1,
            prefetch: Some(0),
            poll_interval: MAX_POLL_INTERVAL,
            lease: MIN_LEASE,
            ..Settings::default()
        })
        .unwrap();
    }

    #[test]
    fn a_heartbeat_over_half_the_lease_warns() {
        let lease = Duration::from_secs(15);
        let just_below_half = lease / 2 - Duration::from_millis(1);
        let c = check(Settings {
            heartbeat: Some(just_below_half),
            ..Settings::default()
        })
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = check(Settings {
            heartbeat: Some(lease - Duration::from_millis(1)),
            ..Settings::default()
        })
        .unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].contains("more than half the lease"),
            "{:?}",
            c.warnings
        );
    }
}
