//! Coalesced single enqueues: concurrent `enqueue` calls of one client share
//! statements and commits, leader–follower style, with no linger.
//!
//! A call whose client has fewer than [`MAX_FLUSHES`] batches in flight
//! leads: it inserts its own job at once, in its own task (then the queue
//! is empty: a lone enqueue waits for nothing and hands nothing over). Calls
//! that arrive while that many are in flight wait in a queue; when a leader
//! is done, a flush task takes them all (up to [`MAX_BATCH`] jobs and
//! [`BATCH_PAYLOAD_BYTES`] of payload) as one batch — one multi-row INSERT
//! per table, one commit — and goes on while calls keep waiting, on the
//! connection of its last batch (no pool ping between its batches).
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
//!
//! A connection is never kept from one call to the next: a lone caller's
//! connection comes from the pool, pinged. (Skipping that ping made lone
//! enqueues ~20% faster here, but a connection cut while idle then fails
//! the next enqueue with an ambiguous "connection lost" instead of
//! reconnecting: not worth it.)

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use queue_core::JobId;
use sqlx::MySql;
use sqlx::pool::PoolConnection;
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
    /// Batches in flight (leaders and flush tasks). While fewer than
    /// [`MAX_FLUSHES`], the queue is empty: a call then leads.
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

/// What a call does with its job.
enum Role {
    /// Insert it now, alone (the queue was empty).
    Lead(TimedJob),
    /// Wait for a batch in flight to take it.
    Follow(oneshot::Receiver<Result<JobId>>),
}

impl Coalescer {
    /// Leads with `job` if fewer than [`MAX_FLUSHES`] batches are in
    /// flight, or queues it for the next batch.
    fn push(&self, job: TimedJob) -> Role {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.flushing < MAX_FLUSHES {
            st.flushing += 1;
            Role::Lead(job)
        } else {
            let (reply, rx) = oneshot::channel();
            st.queue.push_back(Waiting { job, reply });
            Role::Follow(rx)
        }
    }

    /// The next batch, or `None` (and one flush fewer) if nothing waits.
    fn next_batch(&self) -> Option<Vec<Waiting>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.queue.is_empty() {
            st.flushing = st.flushing.saturating_sub(1);
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

/// A leader's hand-over: when its own batch is done (or its caller gave up
/// waiting), the jobs queued meanwhile get a flush task, or the leader's
/// place is given back.
struct Handover(Client);

impl Drop for Handover {
    fn drop(&mut self) {
        let c = &self.0.inner.coalescer;
        let more = {
            let mut st = c.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.queue.is_empty() {
                st.flushing = st.flushing.saturating_sub(1);
                false
            } else {
                true
            }
        };
        if more {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(flush(self.0.clone()));
                }
                // No runtime (the caller's is shutting down): the queued
                // calls cannot be served; they learn it from their channel.
                Err(_) => {
                    let mut st = c.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.queue.clear();
                    st.flushing = st.flushing.saturating_sub(1);
                }
            }
        }
    }
}

impl Client {
    /// Inserts one job built at `now`, coalesced with concurrent calls of
    /// this client where it can be, and wakes runtimes.
    pub(crate) async fn insert_one(&self, job: NewJob, now: DateTime<Utc>) -> Result<JobId> {
        if !inlinable(&job) {
            return first(self.insert_and_wake(vec![job], now).await?);
        }
        self.check_schema(self.pool()).await?;
        self.store().check_sizes(std::slice::from_ref(&job)).await?;
        let c = &self.inner.coalescer;
        c.calls.fetch_add(1, Ordering::Relaxed);
        match c.push(TimedJob { job, now }) {
            Role::Lead(job) => {
                // The caller's own job alone, in the caller's task: no
                // hand-off, no added latency. Jobs queued meanwhile are
                // handed to a flush task when it is done.
                let _handover = Handover(self.clone());
                let mut results = run_batch(self, &mut None, vec![job]).await;
                results.pop().unwrap_or_else(|| Err(dropped()))
            }
            Role::Follow(rx) => rx.await.unwrap_or_else(|_| Err(dropped())),
        }
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

/// The id of a one-job insert.
fn first(ids: Vec<JobId>) -> Result<JobId> {
    ids.first()
        .copied()
        .ok_or_else(|| Error::Database(sqlx::Error::Protocol("the insert returned no id".into())))
}

fn dropped() -> Error {
    Error::Database(sqlx::Error::Protocol(
        "the enqueue batch was dropped before it reported".into(),
    ))
}

/// Flushes batches until none waits (a task of its own: a caller that
/// gives up waiting does not strand the jobs of the others).
async fn flush(client: Client) {
    // The connection of the last batch, for the next: it answered a moment
    // ago, so the pool's ping is skipped.
    let mut conn = None;
    while let Some(batch) = client.inner.coalescer.next_batch() {
        let (jobs, replies): (Vec<TimedJob>, Vec<_>) =
            batch.into_iter().map(|w| (w.job, w.reply)).unzip();
        for (reply, r) in replies
            .into_iter()
            .zip(run_batch(&client, &mut conn, jobs).await)
        {
            let _ = reply.send(r);
        }
        // Let the callers just answered run first: those that enqueue
        // again join the next batch instead of leading batches of one.
        tokio::task::yield_now().await;
    }
}

/// Inserts one batch; each job's result in order. Wakes this process's
/// runtimes and the sleepers the commit read.
async fn run_batch(
    client: &Client,
    kept: &mut Option<PoolConnection<MySql>>,
    jobs: Vec<TimedJob>,
) -> Vec<Result<JobId>> {
    let c = &client.inner.coalescer;
    c.batches.fetch_add(1, Ordering::Relaxed);
    let store = client.store();
    let cell = Mutex::new(kept.take());
    let result = crate::store::retry_deadlocks(|| async {
        let reused = cell.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut conn = match reused {
            Some(conn) => conn,
            None => client.pool().acquire().await?,
        };
        let r = store.insert_coalesced(&mut conn, &jobs).await;
        if r.is_ok() {
            *cell.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
        }
        r
    })
    .await;
    *kept = cell.into_inner().unwrap_or_else(|p| p.into_inner());
    let any_ready = jobs.iter().any(TimedJob::due);
    let any_later = jobs.iter().any(|t| !t.due());
    let results = match result {
        Ok(inserted) => {
            client.wake_sleepers(&inserted.sleepers);
            inserted.ids.into_iter().map(Ok).collect()
        }
        Err(e) if jobs.len() > 1 && matches!(&e, Error::Database(sqlx::Error::Database(_))) => {
            // The server rejected the batch (nothing committed): each job
            // alone, so that only the one at fault fails.
            tracing::debug!(error = %e, jobs = jobs.len(), "coalesced enqueue rejected; inserting one by one");
            let each = jobs.iter().map(|t| async move {
                client
                    .insert_and_wake(vec![t.job.clone()], t.now)
                    .await
                    .and_then(first)
            });
            futures_util::future::join_all(each).await
        }
        Err(e) => {
            // The last caller gets the error itself, the others copies.
            let mut out: Vec<Result<JobId>> =
                (1..jobs.len()).map(|_| Err(copy_error(&e))).collect();
            out.push(Err(e));
            out
        }
    };
    if any_ready {
        client.wake_ready();
    }
    if any_later {
        client.inner.scheduled_gen.send_modify(|g| *g += 1);
    }
    results
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

    fn job(payload: usize) -> TimedJob {
        TimedJob {
            job: NewJob {
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
            },
            now: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_first_callers_lead_and_later_ones_wait_for_a_batch() {
        let c = Coalescer::default();
        let roles: Vec<bool> = (0..5)
            .map(|_| matches!(c.push(job(10)), Role::Lead(_)))
            .collect();
        assert_eq!(roles, [true, true, false, false, false]);
        assert_eq!(c.next_batch().map(|b| b.len()), Some(3));
        assert!(c.next_batch().is_none());
        assert!(c.next_batch().is_none());
        // Both flushes ended: the next caller leads again.
        assert!(matches!(c.push(job(10)), Role::Lead(_)));
    }

    #[test]
    fn batches_are_cut_by_rows_and_payload_bytes() {
        let c = Coalescer::default();
        let mut rxs = Vec::new();
        for _ in 0..(MAX_FLUSHES + MAX_BATCH + 3) {
            if let Role::Follow(rx) = c.push(job(1)) {
                rxs.push(rx);
            }
        }
        assert_eq!(c.next_batch().map(|b| b.len()), Some(MAX_BATCH));
        assert_eq!(c.next_batch().map(|b| b.len()), Some(3));
        for _ in 0..3 {
            if let Role::Follow(rx) = c.push(job(BATCH_PAYLOAD_BYTES / 2)) {
                rxs.push(rx);
            }
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
