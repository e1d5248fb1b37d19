//! Runs a test's jobs in the test, through the runtime's claim and outcome
//! path, until none is left.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;

use chrono::{DateTime, Utc};
use queue_core::JobId;

use super::TestClock;
use crate::runtime::inline::{Inline, InlineOutcome};
use crate::{Client, Error, Result};

/// How an attempt that [`drain`] ran ended, as the runtime recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler returned `Ok`: the job was deleted.
    Succeeded,
    /// The handler failed and the job has attempts left: it was scheduled
    /// again at `retry_at` (its backoff).
    Failed {
        /// The error's text, as stored in `last_error`.
        error: String,
        /// When the job runs again.
        retry_at: DateTime<Utc>,
    },
    /// The job is dead: a permanent error, its last attempt failed, or its
    /// payload does not decode.
    Dead {
        /// The error's text, as stored in `last_error`.
        error: String,
    },
    /// The job was handed back without spending its attempt: no task of
    /// its name is declared in this program.
    HandedBack {
        /// Why.
        reason: String,
        /// When it is offered again.
        retry_at: DateTime<Utc>,
    },
}

/// One attempt that [`drain`] ran.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attempt {
    /// The job.
    pub id: JobId,
    /// Its task's name.
    pub task: String,
    /// Its queue.
    pub queue: String,
    /// The attempt's number, from 1.
    pub attempt: u32,
    /// The most attempts the job may have.
    pub max_attempts: u32,
    /// How it ended.
    pub outcome: Outcome,
}

/// The attempts a [`drain`] ran, in the order it ran them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    attempts: Vec<Attempt>,
}

impl Drained {
    /// Every attempt, in order.
    pub fn attempts(&self) -> &[Attempt] {
        &self.attempts
    }

    /// The attempts of the task named `task` (`send_email::NAME`).
    pub fn of(&self, task: &str) -> Vec<&Attempt> {
        self.attempts.iter().filter(|a| a.task == task).collect()
    }

    /// How many attempts ran.
    pub fn len(&self) -> usize {
        self.attempts.len()
    }

    /// Whether none ran.
    pub fn is_empty(&self) -> bool {
        self.attempts.is_empty()
    }

    /// How many attempts succeeded.
    pub fn succeeded(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Succeeded))
    }

    /// How many attempts failed with attempts left (and were scheduled again).
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed { .. }))
    }

    /// How many attempts left their job dead.
    pub fn dead(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Dead { .. }))
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.attempts.iter().filter(|a| f(&a.outcome)).count()
    }
}

impl IntoIterator for Drained {
    type Item = Attempt;
    type IntoIter = std::vec::IntoIter<Attempt>;

    fn into_iter(self) -> Self::IntoIter {
        self.attempts.into_iter()
    }
}

impl fmt::Display for Drained {
    /// One line per attempt: `job 3 app::send (attempt 1/4): failed: smtp down; retry at …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.attempts {
            write!(
                f,
                "job {} {} (attempt {}/{}): ",
                a.id, a.task, a.attempt, a.max_attempts
            )?;
            match &a.outcome {
                Outcome::Succeeded => writeln!(f, "succeeded")?,
                Outcome::Failed { error, retry_at } => {
                    writeln!(f, "failed: {error}; retry at {retry_at}")?;
                }
                Outcome::Dead { error } => writeln!(f, "dead: {error}")?,
                Outcome::HandedBack { reason, .. } => writeln!(f, "handed back: {reason}")?,
            }
        }
        Ok(())
    }
}

/// Runs the jobs of `client`'s database in this test, one at a time, each
/// claimed, run and recorded by the runtime's own code (the claim
/// transaction, the executor with its deadline and panic handling, the
/// retry policy and the outcome writes), until none is ready; returns every
/// attempt's outcome.
///
/// By default it runs the ready jobs and the scheduled ones that are due
/// by `client`'s clock (as a runtime would now); jobs scheduled later
/// (delayed jobs, retries waiting for their backoff) stay. With
/// [`advancing`](Drain::advancing) it also moves a [`TestClock`] to each
/// scheduled job's time, so retries run through to success or death (and
/// the cron ticks passed fire). Await the builder:
///
/// ```rust,no_run
/// # use queue_runtime::{task, TaskContext, TaskError};
/// # #[task(retries = 2)]
/// # async fn flaky(ctx: TaskContext) -> Result<(), TaskError> {
/// #     if ctx.attempt() < 3 { Err("smtp timeout".into()) } else { Ok(()) }
/// # }
/// # async fn demo(client: &queue_runtime::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use queue_runtime::testing::{self, Outcome, TestClock};
///
/// let clock = TestClock::new(client, chrono::Utc::now()).await?;
/// flaky::enqueue(clock.client(), ()).await?;
/// let drained = testing::drain(clock.client()).advancing(&clock).await?;
/// assert_eq!(drained.failed(), 2);
/// assert_eq!(drained.attempts()[2].outcome, Outcome::Succeeded);
/// # Ok(()) }
/// # fn main() {}
/// ```
///
/// The runtime's own tasks keep running if one is started: drain in tests
/// that do not start one.
pub fn drain(client: &Client) -> Drain<'_> {
    Drain {
        client,
        clock: None,
        queues: None,
        limit: 10_000,
    }
}

/// The settings of a [`drain`]; await it to run it.
#[derive(Debug)]
#[must_use = "a drain runs only when awaited"]
pub struct Drain<'a> {
    client: &'a Client,
    clock: Option<&'a TestClock>,
    queues: Option<Vec<String>>,
    limit: usize,
}

impl<'a> Drain<'a> {
    /// Also runs the scheduled jobs: when nothing is ready, moves `clock`
    /// to the earliest scheduled job's time (firing the cron ticks passed)
    /// and goes on. The drain then reads time from `clock` (pass its
    /// [`client`](TestClock::client) to `drain` too).
    pub fn advancing(mut self, clock: &'a TestClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Runs only the jobs of these queues (default: every queue).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = Some(queues.into_iter().map(Into::into).collect());
        self
    }

    /// Stops with an error after `n` attempts (default 10,000): a task that
    /// enqueues itself, or a job of a task this program does not declare
    /// while advancing, would otherwise run forever.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n;
        self
    }

    /// Runs the drain.
    ///
    /// # Errors
    /// The database's error; [`Error::InvalidArgument`] once the limit of
    /// attempts is reached with jobs left, or for an invalid queue name;
    /// [`Error::DuplicateTask`] if two tasks share a name.
    pub async fn run(self) -> Result<Drained> {
        let client = self.clock.map_or(self.client, |c| c.client());
        let inline = Inline::new(client)?;
        let mut drained = Drained::default();
        loop {
            inline.dispatch_due().await?;
            let mut queues = client.store().queues_with_ready().await?;
            if let Some(only) = &self.queues {
                queues.retain(|q| only.contains(q));
            }
            let mut ran = false;
            for queue in &queues {
                if drained.attempts.len() >= self.limit {
                    return Err(Error::InvalidArgument(format!(
                        "drain ran {} attempts and jobs are still ready (the last ones:\n{}); \
                         a task that enqueues itself without end? raise .limit(n) if it is not",
                        self.limit,
                        Drained {
                            attempts: drained.attempts.split_off(drained.len().saturating_sub(5)),
                        }
                    )));
                }
                let Some(a) = inline.run_next(queue).await? else {
                    continue;
                };
                ran = true;
                drained.attempts.push(attempt(a));
            }
            if ran {
                continue;
            }
            let Some(clock) = self.clock else { break };
            match inline.next_scheduled().await? {
                Some(t) if t > clock.now() => {
                    clock.set(t).await?;
                }
                _ => break,
            }
        }
        Ok(drained)
    }
}

impl<'a> IntoFuture for Drain<'a> {
    type Output = Result<Drained>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Drained>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

fn attempt(a: crate::runtime::inline::InlineAttempt) -> Attempt {
    Attempt {
        id: a.id,
        task: a.task,
        queue: a.queue,
        attempt: a.attempt,
        max_attempts: a.max_attempts,
        outcome: match a.outcome {
            InlineOutcome::Succeeded => Outcome::Succeeded,
            InlineOutcome::Retry {
                error,
                run_at,
                refund: false,
            } => Outcome::Failed {
                error,
                retry_at: run_at,
            },
            InlineOutcome::Retry { error, run_at, .. } => Outcome::HandedBack {
                reason: error,
                retry_at: run_at,
            },
            InlineOutcome::Dead { error } => Outcome::Dead { error },
        },
    }
}
