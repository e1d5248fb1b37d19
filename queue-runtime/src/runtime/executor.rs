//! Runs one attempt of a claimed job: its slot, its deadline, its panic,
//! and the outcome it reports to the completer.

use super::outcome::{self, Ended};
use super::*;
use crate::context::TaskContext;
use crate::error::Error;
use crate::store::ClaimedJob;
use crate::store::operator::Event;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use queue_core::{Deadline, TaskError, TaskErrorKind};
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

/// Extra time a handler gets past its deadline before it is stopped.
pub(super) const DEADLINE_GRACE: Duration = Duration::from_millis(250);
/// How long an unknown task's job waits before it is offered again.
pub(super) const UNKNOWN_TASK_DELAY: Duration = Duration::from_secs(60);
/// How often this process warns about each unknown task name it claims.
pub(super) const UNKNOWN_TASK_LOG_EVERY: Duration = Duration::from_secs(3600);

/// The unknown task names this process warned about, and when: one warning
/// per name per hour, however many runtimes and claims (a job of an unknown
/// task comes back every minute, forever).
pub(super) static UNKNOWN_TASKS_LOGGED: LogLimiter = LogLimiter::new(UNKNOWN_TASK_LOG_EVERY);

/// Lets through the first sighting of each key, then one per `every`.
#[derive(Debug)]
pub(super) struct LogLimiter {
    every: Duration,
    last: Mutex<BTreeMap<String, Instant>>,
}

impl LogLimiter {
    const fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether to log `key` at `now`: its first sighting, or `every` after
    /// the last one logged.
    fn first_in_a_while(&self, key: &str, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(key) {
            Some(t) if now.saturating_duration_since(*t) < self.every => false,
            _ => {
                last.insert(key.to_owned(), now);
                true
            }
        }
    }
}

/// Starts a claimed job of the served queue at index `queue`: at once in a
/// free slot, or when one frees (a prefetched job).
pub(super) fn spawn_job(shared: &Arc<Shared>, job: ClaimedJob, queue: usize) {
    let registered = {
        let mut map = shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        register(shared, &mut map, &job, job.slot.clone())
    };
    if registered {
        start_job(shared, job, queue);
    }
}

/// Registers a claimed job in flight (before its task can finish, so
/// heartbeats cover it), holding the slot of `slot`'s key. False, and
/// nothing registered, for a job this runtime already runs: a claim
/// delivers only the rows its own UPDATE leased, so this is a second line
/// of defence (a claim-index row left behind for a running job, read back
/// with it). The job is left to its lease: the attempt already running
/// reports its outcome, or the rescuer takes the job back.
pub(super) fn register(
    shared: &Shared,
    map: &mut HashMap<JobId, InFlight>,
    job: &ClaimedJob,
    slot: Option<Vec<u8>>,
) -> bool {
    if let Some(running) = map.get(&job.id) {
        tracing::error!(
            job.id = job.id.0,
            task = %job.task,
            attempt = job.attempt,
            running_attempt = running.attempt,
            "a claim delivered a job this runtime already runs; not started again"
        );
        return false;
    }
    if let Some(key) = &slot {
        shared.spares.holder(key, 1);
    }
    map.insert(
        job.id,
        InFlight {
            attempt: job.attempt,
            reported: false,
            slot,
            heir: None,
            unsettled: false,
            deferred: None,
        },
    );
    crate::telemetry::in_flight(1);
    true
}

/// Starts a registered job: at once in a free slot, or when one frees.
pub(super) fn start_job(shared: &Arc<Shared>, job: ClaimedJob, queue: usize) {
    shared.count(&job.queue, &job.task, Event::Started);
    shared.queue_in_flight[queue].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let permit = match shared.waiters.take_or_wait(&shared.semaphore, job.priority) {
        Ok(p) => Ok(p),
        Err(line) => {
            // Prefetched beyond the free slots: waits below for one.
            shared
                .waiting
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(line)
        }
    };
    let shared2 = shared.clone();
    tokio::spawn(async move {
        let _share = QueueShare {
            shared: shared2.clone(),
            queue,
        };
        let permit = match permit {
            Ok(p) => p,
            Err(line) => {
                // A prefetched job waits for a slot, unless the runtime stops
                // first: then it is handed back without having started.
                let mut stop = shared2.stop.clone();
                let p = tokio::select! {
                    p = line => p.ok(),
                    _ = stop.wait_for(|s| *s) => None,
                };
                shared2
                    .waiting
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                shared2.slot_freed.notify_one();
                match p {
                    Some(p) => p,
                    None => {
                        let ack = handed_back(
                            &job,
                            Duration::ZERO,
                            "handed back at shutdown before it started".into(),
                            shared2.client.now(),
                        );
                        report(&shared2, &job, ack);
                        return;
                    }
                }
            }
        };
        let _slot = Slot {
            permit: Some(permit),
            shared: shared2.clone(),
        };
        execute(shared2, job).await;
    });
}

/// A job's slot: released when the job's task ends, however it ends, and
/// the producer told.
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
}

/// A job's place in its queue's count of jobs in flight (for the queue's
/// limit): given back when the job's task ends, however it ends.
struct QueueShare {
    shared: Arc<Shared>,
    queue: usize,
}

impl Drop for QueueShare {
    fn drop(&mut self) {
        self.shared.queue_in_flight[self.queue].fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.shared.slot_freed.notify_one();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.shared.waiters.release(p);
        }
        self.shared.slot_freed.notify_one();
    }
}

/// Prefetched jobs waiting for a slot. A freed slot goes to the most
/// urgent of them (the lowest priority number, then the one that waited
/// longest), not to the first in line: a priority-0 job claimed behind a
/// prefetched batch of priority-4 jobs starts before them. (A semaphore's
/// own waiters are served first come, first served.)
#[derive(Debug, Default)]
pub(super) struct Waiters {
    line: Mutex<(std::collections::BinaryHeap<Waiter>, u64)>,
}

/// A place in the line: `(priority, seq)`, smaller first.
#[derive(Debug)]
struct Waiter {
    priority: u8,
    seq: u64,
    slot: tokio::sync::oneshot::Sender<OwnedSemaphorePermit>,
}

impl Waiter {
    fn rank(&self) -> (u8, u64) {
        (self.priority, self.seq)
    }
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.rank() == other.rank()
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    /// Reversed: the heap pops the smallest rank.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.rank().cmp(&self.rank())
    }
}

/// Where a job that found no free slot waits for one.
type Line = tokio::sync::oneshot::Receiver<OwnedSemaphorePermit>;

impl Waiters {
    /// A free slot now, or a place in the line for the next one. Both
    /// under the line's lock, as [`Waiters::release`]: a slot is never
    /// given back to the semaphore while a job waits in the line.
    fn take_or_wait(
        &self,
        semaphore: &Arc<tokio::sync::Semaphore>,
        priority: u8,
    ) -> Result<OwnedSemaphorePermit, Line> {
        let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(p) = semaphore.clone().try_acquire_owned() {
            return Ok(p);
        }
        let (slot, rx) = tokio::sync::oneshot::channel();
        line.1 += 1;
        let seq = line.1;
        line.0.push(Waiter {
            priority,
            seq,
            slot,
        });
        Err(rx)
    }

    /// Gives a freed slot to the most urgent job in the line (skipping
    /// any that stopped waiting), or back to the semaphore.
    fn release(&self, mut permit: OwnedSemaphorePermit) {
        let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(w) = line.0.pop() {
            match w.slot.send(permit) {
                Ok(()) => return,
                Err(p) => permit = p,
            }
        }
        drop(permit);
    }
}

#[cfg(test)]
mod waiters_tests {
    use super::*;

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_most_urgent_waiter_then_the_longest_waiting() {
        let semaphore = Arc::new(tokio::sync::Semaphore::new(1));
        let w = Waiters::default();
        let held = w.take_or_wait(&semaphore, 4).expect("the free slot");
        let mut lines: Vec<(u8, Line)> = [4u8, 4, 0, 2]
            .into_iter()
            .map(|p| {
                (
                    p,
                    w.take_or_wait(&semaphore, p).expect_err("no slot: waits"),
                )
            })
            .collect();
        // The third in line stopped waiting: skipped.
        let stopped = lines.remove(1);
        drop(stopped);
        let mut order = Vec::new();
        let mut permit = held;
        for _ in 0..3 {
            w.release(permit);
            let (i, p) = lines
                .iter_mut()
                .enumerate()
                .find_map(|(i, (_, rx))| rx.try_recv().ok().map(|p| (i, p)))
                .expect("one waiter got the slot");
            permit = p;
            order.push(lines.remove(i).0);
        }
        assert_eq!(order, vec![0, 2, 4]);
        // Nobody waits: the slot goes back to the semaphore.
        w.release(permit);
        assert_eq!(semaphore.available_permits(), 1);
    }
}

pub(super) async fn execute(shared: Arc<Shared>, job: ClaimedJob) {
    let span = tracing::info_span!(
        "queue.job",
        job.id = %job.id,
        task = %job.task,
        queue = %job.queue,
        attempt = job.attempt,
    );
    let ack = run_attempt(&shared, &job).instrument(span.clone()).await;
    if matches!(ack, Ack::Complete { .. }) && job.slot.is_some() {
        // The slot goes to a spare of its key at once, if one is at hand.
        super::spares::pass_slot(&shared, job.id, job.attempt);
    }
    let _enter = span.enter();
    match &ack {
        Ack::Complete { .. } => tracing::debug!("job succeeded"),
        Ack::Retry {
            error,
            run_at,
            refund: false,
            ..
        } => {
            tracing::warn!(error = %error, retry_at = %run_at, max_attempts = job.max_attempts, "job failed; will retry");
        }
        Ack::Retry { error, .. } => tracing::info!(reason = %error, "job handed back"),
        Ack::Dead { error, .. } => {
            tracing::error!(error = %error, attempts = job.attempt, "job failed for good; moving it to the dead jobs");
        }
        Ack::Stop | Ack::Pending => {}
    }
    report(&shared, &job, ack);
}

/// Counts an attempt's outcome for the per-minute counts (a hand-back,
/// which spends no attempt, is not counted).
pub(super) fn count_outcome(shared: &Shared, job: &ClaimedJob, ack: &Ack) {
    let event = match ack {
        Ack::Complete { .. } => Event::Succeeded,
        Ack::Retry { refund: false, .. } => Event::Failed,
        Ack::Dead { .. } => Event::Dead,
        Ack::Retry { refund: true, .. } | Ack::Stop | Ack::Pending => return,
    };
    shared.count(&job.queue, &job.task, event);
}

/// Hands an outcome to the acker, marking the job as reported.
pub(super) fn report(shared: &Shared, job: &ClaimedJob, ack: Ack) {
    count_outcome(shared, job, &ack);
    if let Some(f) = shared
        .in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(&job.id)
        .filter(|f| f.attempt == job.attempt)
    {
        f.reported = true;
    }
    // A success of a job without a slot goes where the next claim can take
    // it at once (before this job's slot frees and wakes the producer);
    // the acker is told, and writes it after its linger if no claim did.
    let ack = match ack {
        Ack::Complete { id, attempt } if job.slot.is_none() => {
            shared.push_success(id, attempt);
            Ack::Pending
        }
        other => other,
    };
    if shared.ack_tx.send(ack).is_err() {
        // The acker is gone (runtime dropped): the lease expires and the job runs again.
        shared.finished(job.id, job.attempt);
    }
}

/// Runs one attempt and decides its outcome.
pub(super) async fn run_attempt(shared: &Arc<Shared>, job: &ClaimedJob) -> Ack {
    let client = &shared.client;
    let (id, attempt) = (job.id, job.attempt);
    let Some(reg) = shared.registry.get(&job.task) else {
        let error = format!(
            "unknown task `{}`: no #[task] of this name in runtime {}; handed back for {}s",
            job.task,
            shared.owner,
            UNKNOWN_TASK_DELAY.as_secs()
        );
        if UNKNOWN_TASKS_LOGGED.first_in_a_while(&job.task, Instant::now()) {
            tracing::warn!(
                task = %job.task,
                job.id = %id,
                "claimed a job of an unknown task; handing it back (every {}s, no attempt spent; \
                 logged once an hour per task name; client.stats() counts these jobs)",
                UNKNOWN_TASK_DELAY.as_secs()
            );
        } else {
            tracing::debug!(task = %job.task, job.id = %id, "claimed a job of an unknown task; handing it back");
        }
        return handed_back(job, UNKNOWN_TASK_DELAY, error, client.now());
    };
    let budget = job
        .deadline_ms
        .map(Duration::from_millis)
        .or(reg.options.deadline);
    let deadline = budget.map(Deadline::after);
    let ctx = TaskContext::new(
        id,
        attempt,
        job.max_attempts,
        job.task.clone(),
        job.queue.clone(),
        deadline,
        client.clone(),
    );
    // The handler runs inside this task (no second spawn): a panic is
    // caught here, and dropping the future is how a deadline or a shutdown
    // stops it.
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| (reg.handler)(ctx, &job.payload)))
    {
        Ok(fut) => fut,
        Err(p) => Box::pin(std::future::ready(Err(TaskError::panic(panic_message(p))))),
    };
    let lag = (client.now() - job.run_at).to_std().ok();
    if let Some(lag) = lag {
        client.inner.metrics.record_start_lag(lag);
    }
    crate::telemetry::started(&job.queue, &job.task, lag);
    let began = Instant::now();
    let fut = AssertUnwindSafe(Deadline::scope(deadline, fut)).catch_unwind();
    let mut hand_back = shared.hand_back.subscribe();
    let stop_at = deadline.map(|d| d.expires_at() + DEADLINE_GRACE);
    let joined = tokio::select! {
        j = fut => Some(j),
        _ = async {
            match stop_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        } => Some(Ok(Err(TaskError::deadline_exceeded()))),
        _ = hand_back.wait_for(|h| *h) => None,
    };
    let ended = match joined {
        // The runtime is shutting down: hand the job back at once.
        None => Ended::HandedBack {
            after: Duration::ZERO,
            reason: "handed back at shutdown before it finished".into(),
        },
        Some(joined) => match joined.unwrap_or_else(|p| Err(TaskError::panic(panic_message(p)))) {
            Ok(()) => Ended::Succeeded,
            Err(error) => Ended::Failed {
                text: error_text(&error, client.flavor()),
                error,
            },
        },
    };
    let decision = outcome::decide(
        ended,
        attempt,
        job.max_attempts,
        &reg.options.backoff,
        &mut fastrand::Rng::new(),
    );
    let counted = match &decision {
        outcome::Decision::Complete => Some(crate::telemetry::Attempt::Succeeded),
        outcome::Decision::Retry { refund: false, .. } => Some(crate::telemetry::Attempt::Retried),
        outcome::Decision::Dead { .. } => Some(crate::telemetry::Attempt::Dead),
        // Handed back at shutdown: no attempt spent.
        outcome::Decision::Retry { refund: true, .. } => None,
    };
    if let Some(counted) = counted {
        crate::telemetry::attempt(&job.queue, &job.task, counted, Some(began.elapsed()));
    }
    Ack::new(id, attempt, decision, client.now())
}

/// The text stored as a job's last error. A server-side statement timeout
/// reads "deadline exceeded" like any other deadline failure.
pub(super) fn error_text(e: &TaskError, flavor: crate::flavor::Flavor) -> String {
    let text = e.to_string();
    if e.kind() == TaskErrorKind::Deadline {
        return text;
    }
    let server_timeout = e
        .find::<sqlx::Error>()
        .and_then(crate::error::sql_error_number)
        .is_some_and(|n| flavor.is_timeout_error(n));
    let ours = e.find::<Error>().is_some_and(|e| {
        matches!(e, Error::DeadlineExceeded)
            || e.db_code().is_some_and(|n| flavor.is_timeout_error(n))
    });
    if server_timeout || ours {
        format!("deadline exceeded: {text}")
    } else {
        text
    }
}

pub(super) fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// The write for a job handed back without having run to an end: the
/// retry policy's answer for `Ended::HandedBack` (the attempt refunded).
pub(super) fn handed_back(
    job: &ClaimedJob,
    after: Duration,
    reason: String,
    now: DateTime<Utc>,
) -> Ack {
    let decision = outcome::decide(
        Ended::HandedBack { after, reason },
        job.attempt,
        job.max_attempts,
        &queue_core::Backoff::default(),
        &mut fastrand::Rng::new(),
    );
    Ack::new(job.id, job.attempt, decision, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_task_is_logged_once_an_hour_per_name() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        let t0 = Instant::now();
        assert!(limiter.first_in_a_while("old.task", t0));
        assert!(!limiter.first_in_a_while("old.task", t0 + Duration::from_secs(60)));
        assert!(limiter.first_in_a_while("other.task", t0 + Duration::from_secs(60)));
        assert!(!limiter.first_in_a_while("old.task", t0 + Duration::from_secs(3599)));
        assert!(limiter.first_in_a_while("old.task", t0 + Duration::from_secs(3600)));
        assert!(!limiter.first_in_a_while("old.task", t0 + Duration::from_secs(3660)));
    }
}
