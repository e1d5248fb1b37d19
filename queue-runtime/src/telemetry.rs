//! Counters, gauges and histograms through the [`metrics`] crate's facade
//! (feature `metrics`): the application installs the recorder or exporter
//! it likes (Prometheus, StatsD, …); without one, or without the feature,
//! every function here does nothing. They are called where the runtime
//! already knows of the event: none of them touches the database.
//!
//! The names and labels are listed in docs/operations.md; keep the two in
//! step.

use std::time::Duration;

/// Jobs enqueued (`queue_jobs_enqueued_total`).
pub(crate) const ENQUEUED: &str = "queue_jobs_enqueued_total";
/// Attempts started (`queue_jobs_started_total`).
pub(crate) const STARTED: &str = "queue_jobs_started_total";
/// Attempts that succeeded.
pub(crate) const SUCCEEDED: &str = "queue_jobs_succeeded_total";
/// Attempts that failed (retried or dead).
pub(crate) const FAILED: &str = "queue_jobs_failed_total";
/// Failed attempts with a retry to come.
pub(crate) const RETRIED: &str = "queue_jobs_retried_total";
/// Jobs that died.
pub(crate) const DEAD: &str = "queue_jobs_dead_total";
/// Jobs taken back from a lost worker (expired lease).
pub(crate) const RESCUED: &str = "queue_jobs_rescued_total";
/// Seconds from a job's run time to the start of its attempt.
pub(crate) const WAIT: &str = "queue_job_wait_seconds";
/// Seconds an attempt ran.
pub(crate) const RUN: &str = "queue_job_run_seconds";
/// Seconds a claim transaction took.
pub(crate) const CLAIM: &str = "queue_claim_seconds";
/// Jobs held by this process's runtimes (running or prefetched).
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const IN_FLIGHT: &str = "queue_jobs_in_flight";
/// InnoDB's history list length, as the runtime's monitor last read it.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const HISTORY: &str = "queue_innodb_history_list_length";

/// What happened to an attempt, for [`attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    Succeeded,
    Retried,
    Dead,
}

#[cfg(feature = "metrics")]
mod imp {
    use super::*;

    fn labels(queue: &str, task: &str) -> [(&'static str, String); 2] {
        [("queue", queue.to_owned()), ("task", task.to_owned())]
    }

    pub(crate) fn count(name: &'static str, queue: &str, task: &str, n: u64) {
        metrics::counter!(name, &labels(queue, task)).increment(n);
    }

    pub(crate) fn seconds(name: &'static str, queue: &str, task: Option<&str>, d: Duration) {
        match task {
            Some(task) => metrics::histogram!(name, &labels(queue, task)).record(d.as_secs_f64()),
            None => metrics::histogram!(name, "queue" => queue.to_owned()).record(d.as_secs_f64()),
        }
    }

    pub(crate) fn in_flight(delta: f64) {
        metrics::gauge!(IN_FLIGHT).increment(delta);
    }

    pub(crate) fn history(n: u64) {
        // A gauge is an f64: exact up to 2^53.
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(HISTORY).set(n as f64);
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use super::*;

    pub(crate) fn count(_: &'static str, _: &str, _: &str, _: u64) {}
    pub(crate) fn seconds(_: &'static str, _: &str, _: Option<&str>, _: Duration) {}
    pub(crate) fn in_flight(_: f64) {}
    pub(crate) fn history(_: u64) {}
}

/// Jobs enqueued, counted per queue and task.
pub(crate) fn enqueued<'a>(jobs: impl IntoIterator<Item = &'a crate::store::NewJob>) {
    if !cfg!(feature = "metrics") {
        return;
    }
    let mut counts: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for job in jobs {
        *counts.entry((&job.queue, &job.task)).or_default() += 1;
    }
    for ((queue, task), n) in counts {
        imp::count(ENQUEUED, queue, task, n);
    }
}

/// An attempt starts, `wait` after its job's run time.
pub(crate) fn started(queue: &str, task: &str, wait: Option<Duration>) {
    imp::count(STARTED, queue, task, 1);
    if let Some(wait) = wait {
        imp::seconds(WAIT, queue, Some(task), wait);
    }
}

/// An attempt ended after running `ran`, as `outcome` says.
pub(crate) fn attempt(queue: &str, task: &str, outcome: Attempt, ran: Option<Duration>) {
    match outcome {
        Attempt::Succeeded => imp::count(SUCCEEDED, queue, task, 1),
        Attempt::Retried => {
            imp::count(FAILED, queue, task, 1);
            imp::count(RETRIED, queue, task, 1);
        }
        Attempt::Dead => {
            imp::count(FAILED, queue, task, 1);
            imp::count(DEAD, queue, task, 1);
        }
    }
    if let Some(ran) = ran {
        imp::seconds(RUN, queue, Some(task), ran);
    }
}

/// A job was taken back from a lost worker; `dead` if it had no attempt left.
pub(crate) fn rescued(queue: &str, task: &str, dead: bool) {
    imp::count(RESCUED, queue, task, 1);
    if dead {
        imp::count(DEAD, queue, task, 1);
    }
}

/// A claim of `queue` took `d`.
pub(crate) fn claim(queue: &str, d: Duration) {
    imp::seconds(CLAIM, queue, None, d);
}

/// Jobs held by this process's runtimes changed by `delta`.
pub(crate) fn in_flight(delta: i32) {
    imp::in_flight(f64::from(delta));
}

/// InnoDB's history list length was read.
pub(crate) fn history_list_length(n: u64) {
    imp::history(n);
}
