//! Coalesced single enqueues: concurrent `enqueue` calls of one client share
//! statements and commits, leader–follower style, with no linger.
//!
//! A call whose client has fewer than [`MAX_FLUSHES`] batches in flight
//! starts one at once with whatever is waiting (usually just itself: a lone
//! enqueue waits for nothing). Calls that arrive while that many are in
//! flight wait in a queue, and the first flush to finish takes them all (up
//! to [`MAX_BATCH`] jobs and [`BATCH_PAYLOAD_BYTES`] of payload) as its next
//! batch: one multi-row INSERT, one claim-index INSERT, one commit.
//!
//! Each caller gets its own id, and its own error: encoding, size and
//! argument errors are found before a job joins a batch; a batch the server
//! rejects (error reported by the server: nothing was committed) is run
//! again one job per transaction on the prepared path, so only the job at
//! fault fails. A batch lost to a connection error fails every caller in
//! it, each with a copy of the error, as a lone enqueue would.
//!
//! Jobs with a unique key or a concurrency key, and big payloads, take the
//! prepared path of `store/insert.rs` one by one, as before.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use queue_core::JobId;
use tokio::sync::oneshot;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::store::NewJob;
use crate::store::coalesced::{BATCH_PAYLOAD_BYTES, TimedJob, inlinable};

/// Batches in flight at once per client.
const MAX_FLUSHES: usize = 2;

/// Jobs per batch at most.
const MAX_BATCH: usize = 500;

struct Waiting {
    job: TimedJob,
    reply: oneshot::Sender<Result<JobId>>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Waiting>,
    flushing: usize,
}

/// A client's coalescer.
#[derive(Default)]
pub(crate) struct Coalescer {
    state: Mutex<State>,
    calls: AtomicU64,
    batches: AtomicU64,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

/// How many coalesced enqueues a client made, in how many transactions.
/// Not public API.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoalesceCounts {
    /// Jobs that took the coalesced path.
    pub jobs: u64,
    /// Transactions they took.
    pub batches: u64,
}

impl Coalescer {
    /// Queues `job`; true if the caller must start a flush.
    fn push(&self, w: Waiting) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.queue.push_back(w);
        if st.flushing < MAX_FLUSHES {
            st.flushing += 1;
            true
        } else {
            false
        }
    }

    /// The next batch, or `None` (and one flush fewer) if nothing waits.
    fn next_batch(&self) -> Option<Vec<Waiting>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.queue.is_empty() {
            st.flushing -= 1;
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(w) = st.queue.front() {
            let b = w.job.job.payload.len();
            if !batch.is_empty() && (batch.len() == MAX_BATCH || bytes + b > BATCH_PAYLOAD_BYTES) {
                break;
            }
            bytes += b;
            batch.extend(st.queue.pop_front());
        }
        Some(batch)
    }
}

impl Client {
    /// Inserts one job built at `now`, coalesced with concurrent calls of
    /// this client where it can be, and wakes runtimes.
    pub(crate) async fn insert_one(&self, job: NewJob, now: DateTime<Utc>) -> Result<JobId> {
        if !inlinable(&job) {
            return Ok(self.insert_and_wake(vec![job], now).await?[0]);
        }
        self.check_schema(self.pool()).await?;
        self.store().check_sizes(std::slice::from_ref(&job)).await?;
        let (reply, rx) = oneshot::channel();
        let c = &self.inner.coalescer;
        c.calls.fetch_add(1, Ordering::Relaxed);
        if c.push(Waiting {
            job: TimedJob { job, now },
            reply,
        }) {
            // In a task of its own: a caller that gives up waiting does not
            // strand the jobs of the others.
            tokio::spawn(flush(self.clone()));
        }
        rx.await.unwrap_or_else(|_| {
            Err(Error::Database(sqlx::Error::Protocol(
                "the enqueue batch was dropped before it reported".into(),
            )))
        })
    }

    /// Counts of this client's coalesced enqueues. Not public API.
    #[doc(hidden)]
    pub fn coalesce_counts(&self) -> CoalesceCounts {
        let c = &self.inner.coalescer;
        CoalesceCounts {
            jobs: c.calls.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
        }
    }
}

/// Flushes batches until none waits.
async fn flush(client: Client) {
    while let Some(batch) = client.inner.coalescer.next_batch() {
        client
            .inner
            .coalescer
            .batches
            .fetch_add(1, Ordering::Relaxed);
        let (jobs, replies): (Vec<TimedJob>, Vec<_>) =
            batch.into_iter().map(|w| (w.job, w.reply)).unzip();
        let store = client.store();
        let result = crate::store::retry_deadlocks(|| store.insert_coalesced(&jobs)).await;
        let any_ready = jobs.iter().any(TimedJob::due);
        let any_later = jobs.iter().any(|t| !t.due());
        match result {
            Ok(inserted) => {
                for (reply, id) in replies.into_iter().zip(inserted.ids) {
                    let _ = reply.send(Ok(id));
                }
                client.wake_sleepers(&inserted.sleepers);
            }
            Err(e) if jobs.len() > 1 && matches!(&e, Error::Database(sqlx::Error::Database(_))) => {
                // The server rejected the batch (nothing committed): each
                // job alone, so that only the one at fault fails.
                tracing::debug!(error = %e, jobs = jobs.len(), "coalesced enqueue rejected; inserting one by one");
                let each = jobs.into_iter().zip(replies).map(|(t, reply)| {
                    let client = client.clone();
                    async move {
                        let r = client
                            .insert_and_wake(vec![t.job], t.now)
                            .await
                            .map(|ids| ids[0]);
                        let _ = reply.send(r);
                    }
                });
                futures_util::future::join_all(each).await;
            }
            Err(e) => {
                // The last caller gets the error itself, the others copies.
                let mut replies = replies;
                let last = replies.pop();
                for reply in replies {
                    let _ = reply.send(Err(copy_error(&e)));
                }
                if let Some(reply) = last {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if any_ready {
            client.wake_ready();
        }
        if any_later {
            client.inner.scheduled_gen.send_modify(|g| *g += 1);
        }
    }
}

/// A copy of `e` for each caller of a failed batch: the same kind (so that
/// `is_connection_error` and `db_code` answer alike where they can), the
/// same message.
fn copy_error(e: &Error) -> Error {
    let sql = |e: &sqlx::Error| match e {
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::WorkerCrashed => sqlx::Error::WorkerCrashed,
        other => sqlx::Error::Protocol(other.to_string()),
    };
    match e {
        Error::Database(d) => Error::Database(sql(d)),
        Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
        Error::Busy(m) => Error::Busy(m.clone()),
        Error::SchemaTooOld { found, known } => Error::SchemaTooOld {
            found: *found,
            known: *known,
        },
        Error::SchemaTooNew { found, known } => Error::SchemaTooNew {
            found: *found,
            known: *known,
        },
        other => Error::Database(sqlx::Error::Protocol(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(payload: usize) -> (Waiting, oneshot::Receiver<Result<JobId>>) {
        let (reply, rx) = oneshot::channel();
        let job = NewJob {
            task: "t".into(),
            queue: "q".into(),
            priority: 2,
            payload: "x".repeat(payload),
            max_attempts: 1,
            deadline_ms: None,
            run_at: DateTime::<Utc>::UNIX_EPOCH,
            unique_key: None,
            concurrency_key: None,
            concurrency_limit: None,
            rate_key: None,
        };
        (
            Waiting {
                job: TimedJob {
                    job,
                    now: DateTime::<Utc>::UNIX_EPOCH,
                },
                reply,
            },
            rx,
        )
    }

    #[test]
    fn the_first_callers_flush_and_later_ones_wait_for_a_batch() {
        let c = Coalescer::default();
        let mut rxs = Vec::new();
        let mut leads = Vec::new();
        for _ in 0..5 {
            let (w, rx) = waiting(10);
            rxs.push(rx);
            leads.push(c.push(w));
        }
        assert_eq!(leads, [true, true, false, false, false]);
        assert_eq!(c.next_batch().map(|b| b.len()), Some(5));
        assert!(c.next_batch().is_none());
        assert!(c.next_batch().is_none());
        // Both flushes ended: the next caller leads again.
        let (w, _rx) = waiting(10);
        assert!(c.push(w));
    }

    #[test]
    fn batches_are_cut_by_rows_and_payload_bytes() {
        let c = Coalescer::default();
        let mut rxs = Vec::new();
        for _ in 0..(MAX_BATCH + 3) {
            let (w, rx) = waiting(1);
            rxs.push(rx);
            c.push(w);
        }
        assert_eq!(c.next_batch().map(|b| b.len()), Some(MAX_BATCH));
        assert_eq!(c.next_batch().map(|b| b.len()), Some(3));
        for _ in 0..3 {
            let (w, rx) = waiting(BATCH_PAYLOAD_BYTES / 2);
            rxs.push(rx);
            c.push(w);
        }
        assert_eq!(c.next_batch().map(|b| b.len()), Some(2));
        assert_eq!(c.next_batch().map(|b| b.len()), Some(1));
    }

    #[test]
    fn copies_keep_the_kind() {
        let e = Error::Database(sqlx::Error::PoolTimedOut);
        assert!(matches!(
            copy_error(&e),
            Error::Database(sqlx::Error::PoolTimedOut)
        ));
        let io = Error::Database(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )));
        match copy_error(&io) {
            Error::Database(sqlx::Error::Io(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset)
            }
            other => panic!("{other:?}"),
        }
    }
}
