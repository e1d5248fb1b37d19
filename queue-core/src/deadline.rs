//! Deadlines: the instant a task must be finished by.
//!
//! The runtime runs each task inside [`Deadline::scope`], so code anywhere
//! inside the task can ask [`Deadline::current`] how much time is left, or
//! bound one of its own operations with [`Deadline::run`].
//!
//! Instants are [`tokio::time::Instant`]s, so tests that pause tokio's clock
//! (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`) control
//! deadlines as well.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static CURRENT: Option<Deadline>;
}

/// An instant by which some work must be finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Deadline {
    expires_at: Instant,
}

/// The error of work that did not finish before its [`Deadline`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deadline exceeded")]
pub struct DeadlineExceeded;

impl Deadline {
    /// The deadline `budget` from now (tokio's clock). A budget too large to
    /// represent gives a deadline about thirty years away.
    pub fn after(budget: Duration) -> Deadline {
        let now = Instant::now();
        let expires_at = now
            .checked_add(budget)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30));
        Deadline { expires_at }
    }

    /// The deadline at `instant`.
    pub fn at(instant: Instant) -> Deadline {
        Deadline {
            expires_at: instant,
        }
    }

    /// The instant the deadline expires.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// The time until the deadline; zero once it has passed.
    pub fn time_left(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed (it is exceeded at its very instant).
    pub fn is_exceeded(&self) -> bool {
        Instant::now() >= self.expires_at
    }

    /// `Ok(())` while time is left, [`DeadlineExceeded`] once it has passed.
    ///
    /// Handy with `?` between steps of a long computation.
    pub fn check(&self) -> Result<(), DeadlineExceeded> {
        if self.is_exceeded() {
            Err(DeadlineExceeded)
        } else {
            Ok(())
        }
    }

    /// Runs `fut` until it completes or the deadline passes, whichever comes
    /// first. If the deadline has already passed, fails at once without
    /// polling `fut`. When the deadline passes, `fut` is dropped.
    pub async fn run<F: Future>(&self, fut: F) -> Result<F::Output, DeadlineExceeded> {
        if self.is_exceeded() {
            return Err(DeadlineExceeded);
        }
        tokio::time::timeout_at(self.expires_at, fut)
            .await
            .map_err(|_| DeadlineExceeded)
    }

    /// The deadline of the enclosing [`Deadline::scope`], or `None` outside
    /// any scope or inside a scope without a deadline.
    pub fn current() -> Option<Deadline> {
        CURRENT.try_with(|d| *d).ok().flatten()
    }

    /// Runs `fut` with `deadline` as [`Deadline::current`].
    ///
    /// Scopes nest and the innermost wins, also when it is `None` (which
    /// means "no deadline" inside it). The scope only sets what `current`
    /// reports; it does not itself cut `fut` short (use [`Deadline::run`]).
    /// Tasks spawned from inside do not inherit it.
    pub async fn scope<F: Future>(deadline: Option<Deadline>, fut: F) -> F::Output {
        CURRENT.scope(deadline, fut).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn time_passes_with_tokio_clock() {
        let d = Deadline::after(10 * SEC);
        assert_eq!(d.expires_at(), Instant::now() + 10 * SEC);
        assert_eq!(d.time_left(), 10 * SEC);
        assert!(!d.is_exceeded());
        assert_eq!(d.check(), Ok(()));
        tokio::time::advance(4 * SEC).await;
        assert_eq!(d.time_left(), 6 * SEC);
        tokio::time::advance(6 * SEC).await;
        assert!(d.is_exceeded());
        assert_eq!(d.time_left(), Duration::ZERO);
        assert_eq!(d.check(), Err(DeadlineExceeded));
        tokio::time::advance(6 * SEC).await;
        assert_eq!(d.time_left(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn at_and_ordering() {
        let now = Instant::now();
        let a = Deadline::at(now + SEC);
        let b = Deadline::at(now + 2 * SEC);
        assert!(a < b);
        assert_eq!(a.expires_at(), now + SEC);
        assert!(Deadline::at(now).is_exceeded());
        let far = Deadline::after(Duration::MAX);
        assert!(far.time_left() > Duration::from_secs(86_400 * 365));
    }

    #[tokio::test(start_paused = true)]
    async fn run_finishes_in_time() {
        let d = Deadline::after(10 * SEC);
        let got = d
            .run(async {
                tokio::time::sleep(3 * SEC).await;
                7
            })
            .await;
        assert_eq!(got, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn run_times_out() {
        let start = Instant::now();
        let d = Deadline::after(5 * SEC);
        let got = d.run(tokio::time::sleep(60 * SEC)).await;
        assert_eq!(got, Err(DeadlineExceeded));
        assert_eq!(start.elapsed(), 5 * SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn run_does_not_poll_when_already_exceeded() {
        let d = Deadline::after(SEC);
        tokio::time::advance(2 * SEC).await;
        let mut polled = false;
        let got = d
            .run(async {
                polled = true;
            })
            .await;
        assert_eq!(got, Err(DeadlineExceeded));
        assert!(!polled);
        assert_eq!(DeadlineExceeded.to_string(), "deadline exceeded");
    }

    #[tokio::test(start_paused = true)]
    async fn scopes_nest() {
        assert_eq!(Deadline::current(), None);
        let outer = Deadline::after(10 * SEC);
        let inner = Deadline::after(SEC);
        Deadline::scope(Some(outer), async {
            assert_eq!(Deadline::current(), Some(outer));
            Deadline::scope(Some(inner), async {
                assert_eq!(Deadline::current(), Some(inner));
            })
            .await;
            Deadline::scope(None, async {
                assert_eq!(Deadline::current(), None);
            })
            .await;
            tokio::time::sleep(SEC).await;
            assert_eq!(Deadline::current(), Some(outer));
        })
        .await;
        assert_eq!(Deadline::current(), None);
        let got = Deadline::scope(Some(outer), async { 5 }).await;
        assert_eq!(got, 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scope_is_per_task() {
        let d = Deadline::after(SEC);
        Deadline::scope(Some(d), async {
            let spawned = tokio::spawn(async { Deadline::current() }).await.unwrap();
            assert_eq!(spawned, None);
            assert_eq!(Deadline::current(), Some(d));
        })
        .await;
    }
}
