//! A hand-moved clock that fires the cron ticks it passes.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::runtime::inline::Inline;
use crate::{Client, Error, ManualClock, Result};

/// The most cron ticks one move of a [`TestClock`] fires.
const MAX_TICKS: usize = 10_000;

/// A cron tick that a [`TestClock`] fired.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CronTick {
    /// The recurring task's name.
    pub task: String,
    /// The tick's time.
    pub tick: DateTime<Utc>,
}

/// A [`ManualClock`] for a test, with a client that reads it, that fires
/// the ticks of the program's recurring tasks (`#[task(cron = …)]`) as it
/// is moved, as a running runtime's scheduler would: every tick passed,
/// once, each enqueuing its job. Run the jobs with
/// [`drain`](super::drain).
///
/// ```rust,no_run
/// use chrono::{TimeZone, Utc};
/// use queue_runtime::{task, testing, TaskContext, TaskError};
/// use std::time::Duration;
///
/// #[task(cron = "0 0 3 * * *")] // 03:00 every day
/// async fn nightly_report(ctx: TaskContext) -> Result<(), TaskError> { Ok(()) }
///
/// # async fn demo(client: &queue_runtime::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let start = Utc.with_ymd_and_hms(2025, 1, 31, 12, 0, 0).unwrap();
/// let clock = testing::TestClock::new(client, start).await?;
/// let ticks = clock.advance(Duration::from_secs(24 * 3600)).await?; // to Feb 1st, 12:00
/// assert_eq!(ticks.len(), 1);
/// assert_eq!(ticks[0].tick, Utc.with_ymd_and_hms(2025, 2, 1, 3, 0, 0).unwrap());
/// let drained = testing::drain(clock.client()).await?;
/// assert_eq!(drained.succeeded(), 1);
/// # Ok(()) }
/// # fn main() {}
/// ```
#[derive(Debug)]
pub struct TestClock {
    clock: ManualClock,
    client: Client,
    inline: Inline,
}

impl TestClock {
    /// A clock showing `start`, and a client on `client`'s pool that reads
    /// it. Registers the program's recurring tasks as a runtime starting at
    /// `start` does (their first tick is the next one after it).
    ///
    /// # Errors
    /// The database's error; [`Error::DuplicateTask`] if two tasks share a
    /// name.
    pub async fn new(client: &Client, start: DateTime<Utc>) -> Result<TestClock> {
        let clock = ManualClock::new(start);
        let client = client.with_clock(clock.clone());
        let inline = Inline::new(&client)?;
        inline.fire_cron().await?;
        Ok(TestClock {
            clock,
            client,
            inline,
        })
    }

    /// The client that reads this clock: enqueue, drain and inspect
    /// through it.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The time the clock shows.
    pub fn now(&self) -> DateTime<Utc> {
        self.client.now()
    }

    /// Moves the clock forward by `d`, firing every cron tick passed, in
    /// order; returns them.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the move would fire more than 10,000
    /// ticks (the clock is not moved then: move it in smaller steps);
    /// the database's error.
    pub async fn advance(&self, d: Duration) -> Result<Vec<CronTick>> {
        self.set(crate::clock::add(self.now(), d)).await
    }

    /// Sets the clock to `t`, firing every cron tick passed, in order;
    /// returns them.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `t` is earlier than the clock's time
    /// (time does not go back for a runtime either), or if the move would
    /// fire more than 10,000 ticks (the clock is not moved then); the
    /// database's error.
    pub async fn set(&self, t: DateTime<Utc>) -> Result<Vec<CronTick>> {
        let now = self.now();
        if t < now {
            return Err(Error::InvalidArgument(format!(
                "TestClock::set({t}): the clock shows {now}, and does not go back"
            )));
        }
        let steps = self.steps(now, t)?;
        let mut fired = Vec::new();
        for step in steps.into_iter().chain([t]) {
            self.clock.set(step);
            fired.extend(
                self.inline
                    .fire_cron()
                    .await?
                    .into_iter()
                    .map(|f| CronTick {
                        task: f.task.to_owned(),
                        tick: f.tick,
                    }),
            );
        }
        Ok(fired)
    }

    /// The tick times in `(from, to)`, in order, at most [`MAX_TICKS`].
    fn steps(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<DateTime<Utc>>> {
        let mut steps = Vec::new();
        let mut at = from;
        while let Some(next) = self.inline.cron_ticks_after(at).into_iter().min() {
            if next >= to {
                break;
            }
            if steps.len() == MAX_TICKS {
                return Err(Error::InvalidArgument(format!(
                    "moving the test clock from {from} to {to} would fire more than \
                     {MAX_TICKS} cron ticks; move it in smaller steps"
                )));
            }
            steps.push(next);
            at = next;
        }
        Ok(steps)
    }
}
