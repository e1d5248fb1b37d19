//! THE retry policy: how an attempt ended → what is written for its job.
//! The executor asks it for every attempt it ran, and the rescuer for every
//! attempt whose worker was lost; nothing else decides retry or dead.

use std::time::Duration;

use chrono::{DateTime, Utc};
use queue_core::{Backoff, JobId, TaskError};

/// How an attempt ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The handler returned `Ok`.
    Succeeded,
    /// The handler failed: an error, a panic, its deadline, an undecodable
    /// payload (`text` is what `last_error` stores).
    Failed { error: TaskError, text: String },
    /// The worker running it was lost: its lease expired.
    LeaseLost,
    /// Never ran to an end, through no fault of its own (a shutdown, a task
    /// this program does not declare): offered again after `after`, the
    /// attempt not spent.
    HandedBack { after: Duration, reason: String },
}

/// What to write for the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Delete it.
    Complete,
    /// Run it again after `after`; `refund` gives the attempt back.
    Retry {
        after: Duration,
        error: String,
        refund: bool,
    },
    /// Keep it as dead.
    Dead { error: String },
}

/// The policy: `attempt` of at most `max_attempts` ended as `ended`.
/// Permanent errors (including undecodable payloads) and a failure of the
/// last attempt are dead; other failures wait `backoff`'s delay for the
/// attempt; a lost worker's job runs again at once while attempts remain.
pub(crate) fn decide(
    ended: Ended,
    attempt: u32,
    max_attempts: u32,
    backoff: &Backoff,
    rng: &mut fastrand::Rng,
) -> Decision {
    let spent = attempt >= max_attempts;
    match ended {
        Ended::Succeeded => Decision::Complete,
        Ended::Failed { error, text } => {
            if error.is_permanent() || spent {
                Decision::Dead { error: text }
            } else {
                Decision::Retry {
                    after: backoff.delay(attempt, rng),
                    error: text,
                    refund: false,
                }
            }
        }
        Ended::LeaseLost => {
            let error = format!("lease expired: the worker running attempt {attempt} was lost");
            if spent {
                Decision::Dead {
                    error: format!("{error}; no attempts left"),
                }
            } else {
                Decision::Retry {
                    after: Duration::ZERO,
                    error,
                    refund: false,
                }
            }
        }
        Ended::HandedBack { after, reason } => Decision::Retry {
            after,
            error: reason,
            refund: true,
        },
    }
}

/// An outcome for the completer to write: a job's attempt and its decision.
#[derive(Debug)]
pub(super) enum Ack {
    Complete {
        id: JobId,
        attempt: u32,
    },
    Retry {
        id: JobId,
        attempt: u32,
        run_at: DateTime<Utc>,
        error: String,
        refund: bool,
    },
    Dead {
        id: JobId,
        attempt: u32,
        error: String,
    },
    /// The runtime is stopping: write what is queued and end.
    Stop,
    /// Successes were queued in `Shared::pending_done` (where the next
    /// claim may take them): write them after the linger if none did.
    Pending,
}

impl Ack {
    /// The write for `decision` on attempt `attempt` of job `id`, at `now`.
    pub(super) fn new(id: JobId, attempt: u32, decision: Decision, now: DateTime<Utc>) -> Ack {
        match decision {
            Decision::Complete => Ack::Complete { id, attempt },
            Decision::Retry {
                after,
                error,
                refund,
            } => Ack::Retry {
                id,
                attempt,
                run_at: crate::clock::add(now, after),
                error,
                refund,
            },
            Decision::Dead { error } => Ack::Dead { id, attempt, error },
        }
    }

    pub(crate) fn id(&self) -> Option<(JobId, u32)> {
        match self {
            Ack::Complete { id, attempt }
            | Ack::Retry { id, attempt, .. }
            | Ack::Dead { id, attempt, .. } => Some((*id, *attempt)),
            Ack::Stop | Ack::Pending => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(error: TaskError) -> Ended {
        let text = error.to_string();
        Ended::Failed { error, text }
    }

    fn run(ended: Ended, attempt: u32, max: u32) -> Decision {
        let backoff = Backoff::Constant(Duration::from_secs(7));
        decide(
            ended,
            attempt,
            max,
            &backoff,
            &mut fastrand::Rng::with_seed(1),
        )
    }

    fn retry(after: u64, error: &str, refund: bool) -> Decision {
        Decision::Retry {
            after: Duration::from_secs(after),
            error: error.into(),
            refund,
        }
    }

    fn dead(error: &str) -> Decision {
        Decision::Dead {
            error: error.into(),
        }
    }

    #[test]
    fn the_whole_table() {
        let boom = || TaskError::msg("boom");
        // (how it ended, attempt, of at most, decision)
        let table: Vec<(Ended, u32, u32, Decision)> = vec![
            (Ended::Succeeded, 1, 3, Decision::Complete),
            (Ended::Succeeded, 3, 3, Decision::Complete),
            (failed(boom()), 1, 3, retry(7, "boom", false)),
            (failed(boom()), 2, 3, retry(7, "boom", false)),
            (failed(boom()), 3, 3, dead("boom")),
            (failed(boom()), 4, 3, dead("boom")),
            (failed(TaskError::permanent(boom())), 1, 3, dead("boom")),
            (
                failed(TaskError::decode(std::io::Error::other("bad"))),
                1,
                3,
                dead(&TaskError::decode(std::io::Error::other("bad")).to_string()),
            ),
            (
                failed(TaskError::panic("oops".into())),
                1,
                3,
                retry(7, &TaskError::panic("oops".into()).to_string(), false),
            ),
            (
                failed(TaskError::panic("oops".into())),
                3,
                3,
                dead(&TaskError::panic("oops".into()).to_string()),
            ),
            (
                failed(TaskError::deadline_exceeded()),
                1,
                3,
                retry(7, "deadline exceeded", false),
            ),
            (
                failed(TaskError::deadline_exceeded()),
                3,
                3,
                dead("deadline exceeded"),
            ),
            (
                Ended::LeaseLost,
                1,
                3,
                retry(
                    0,
                    "lease expired: the worker running attempt 1 was lost",
                    false,
                ),
            ),
            (
                Ended::LeaseLost,
                3,
                3,
                dead("lease expired: the worker running attempt 3 was lost; no attempts left"),
            ),
            (
                Ended::HandedBack {
                    after: Duration::ZERO,
                    reason: "handed back at shutdown".into(),
                },
                3,
                3,
                retry(0, "handed back at shutdown", true),
            ),
            (
                Ended::HandedBack {
                    after: Duration::from_secs(60),
                    reason: "unknown task".into(),
                },
                1,
                1,
                retry(60, "unknown task", true),
            ),
        ];
        for (i, (ended, attempt, max, want)) in table.into_iter().enumerate() {
            let text = format!("{ended:?}");
            assert_eq!(
                run(ended, attempt, max),
                want,
                "row {i}: {text} at {attempt}/{max}"
            );
        }
    }

    #[test]
    fn retries_wait_the_backoff_of_their_attempt() {
        let backoff = Backoff::Linear(Duration::from_secs(10));
        let mut rng = fastrand::Rng::with_seed(7);
        let after = |attempt, rng: &mut fastrand::Rng| match decide(
            failed(TaskError::msg("x")),
            attempt,
            5,
            &backoff,
            rng,
        ) {
            Decision::Retry { after, .. } => after,
            d => panic!("{d:?}"),
        };
        let (a1, a3) = (after(1, &mut rng), after(3, &mut rng));
        assert!(a3 > a1, "{a1:?} then {a3:?}");
    }

    #[test]
    fn an_ack_runs_again_after_its_delay() {
        let now = DateTime::<Utc>::UNIX_EPOCH;
        let ack = Ack::new(JobId(9), 2, retry(5, "x", true), now);
        match ack {
            Ack::Retry {
                id,
                attempt,
                run_at,
                refund,
                ..
            } => {
                assert_eq!((id, attempt, refund), (JobId(9), 2, true));
                assert_eq!(run_at, now + chrono::TimeDelta::seconds(5));
            }
            a => panic!("{a:?}"),
        }
    }
}
