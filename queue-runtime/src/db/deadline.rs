//! The deadline side of [`Db`](super::Db) and
//! [`DbTransaction`](super::DbTransaction): which deadline limits a
//! statement, the error of a statement refused after it, and waiting on the
//! pool or a connection no longer than it allows.

use std::io;
use std::time::Duration;

use queue_core::{Deadline, DeadlineExceeded};
use sqlx::MySql;
use sqlx::mysql::MySqlPool;
use sqlx::pool::PoolConnection;

/// How long a background `ROLLBACK` of a dropped transaction, or the
/// watchdog's `KILL QUERY`, may take before the connection is given up.
pub(super) const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The earlier of `own` and [`Deadline::current`].
pub(super) fn effective(own: Option<Deadline>) -> Option<Deadline> {
    match (own, Deadline::current()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The error of a statement refused because its deadline had passed:
/// `sqlx::Error::Io` of kind `TimedOut`, reading "deadline exceeded", with
/// [`DeadlineExceeded`] in its source chain (so that a `TaskError` made from
/// it has kind `Deadline`).
pub(super) fn deadline_exceeded() -> sqlx::Error {
    sqlx::Error::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        NotSent(DeadlineExceeded),
    ))
}

/// Inside the `io::Error` of [`deadline_exceeded`]: `io::Error::source`
/// skips the error it wraps and returns that error's source, so the wrapped
/// error must have `DeadlineExceeded` as its source.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
struct NotSent(#[source] DeadlineExceeded);

/// Runs `fut` unless `deadline` passes first. The outer error is the
/// deadline error, returned when `fut` was dropped unfinished (so whatever
/// it was doing on a connection was abandoned mid-flight); the inner result
/// is `fut`'s.
pub(super) async fn bounded<T>(
    deadline: Option<Deadline>,
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<Result<T, sqlx::Error>, sqlx::Error> {
    match deadline {
        Some(d) => d
            .run(fut)
            .await
            .map_err(|DeadlineExceeded| deadline_exceeded()),
        None => Ok(fut.await),
    }
}

/// The deadline error if `deadline` has passed.
pub(super) fn refuse_if_passed(deadline: Option<Deadline>) -> Result<(), sqlx::Error> {
    if deadline.is_some_and(|d| d.is_exceeded()) {
        return Err(deadline_exceeded());
    }
    Ok(())
}

/// A connection of `pool`, unless `deadline` passes first (or has passed:
/// then nothing is asked of the pool).
pub(super) async fn acquire(
    pool: &MySqlPool,
    deadline: Option<Deadline>,
) -> Result<PoolConnection<MySql>, sqlx::Error> {
    refuse_if_passed(deadline)?;
    bounded(deadline, pool.acquire()).await?
}

#[cfg(test)]
mod tests {
    use queue_core::{TaskError, TaskErrorKind};

    use super::*;

    #[test]
    fn refusal_is_a_deadline_error() {
        let e = deadline_exceeded();
        assert!(matches!(&e, sqlx::Error::Io(io) if io.kind() == io::ErrorKind::TimedOut));
        assert!(e.to_string().ends_with("deadline exceeded"), "{e}");
        let te = TaskError::from(e);
        assert_eq!(te.kind(), TaskErrorKind::Deadline);
        assert!(te.find::<DeadlineExceeded>().is_some());
        assert!(te.find::<sqlx::Error>().is_some());
        assert!(te.to_string().starts_with("deadline exceeded"), "{te}");
    }

    #[tokio::test(start_paused = true)]
    async fn effective_deadline_is_the_earlier() {
        let near = Deadline::after(Duration::from_secs(1));
        let far = Deadline::after(Duration::from_secs(10));
        assert_eq!(effective(None), None);
        assert_eq!(effective(Some(far)), Some(far));
        Deadline::scope(Some(near), async {
            assert_eq!(effective(Some(far)), Some(near));
            assert_eq!(effective(None), Some(near));
        })
        .await;
        Deadline::scope(Some(far), async {
            assert_eq!(effective(Some(near)), Some(near));
        })
        .await;
    }
}
