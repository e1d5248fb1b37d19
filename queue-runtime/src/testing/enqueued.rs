//! Typed views of the jobs a test enqueued, and assertions on them whose
//! failure shows what was enqueued.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use queue_core::{JobId, JobState};
use serde_json::Value;

use crate::{Client, Error, Result, TaskRef};

/// A pending (ready or scheduled) job of a task, with its typed payload and
/// the options it was enqueued with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Enqueued<P> {
    /// The job's id.
    pub id: JobId,
    /// Its payload, decoded.
    pub payload: P,
    /// Its queue.
    pub queue: String,
    /// Its priority, 0 (highest) to 4.
    pub priority: u8,
    /// Ready (due) or scheduled (waiting for `run_at`, or for a retry).
    pub state: JobState,
    /// When it is (or was) due.
    pub run_at: DateTime<Utc>,
    /// Attempts spent so far.
    pub attempts: u32,
    /// The most attempts it may have.
    pub max_attempts: u32,
    /// Each attempt's time budget, if any.
    pub deadline: Option<Duration>,
    /// Its unique key, if it was enqueued with one.
    pub unique_key: Option<String>,
    /// The payload as stored (JSON).
    pub json: String,
}

/// The pending (ready or scheduled) jobs of `task`, oldest first, with
/// their payloads decoded.
///
/// ```rust,no_run
/// # use queue_runtime::{task, TaskContext, TaskError};
/// # #[task(queue = "mail")]
/// # async fn send_welcome(ctx: TaskContext, to: String) -> Result<(), TaskError> { Ok(()) }
/// # async fn demo(client: &queue_runtime::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use queue_runtime::testing;
///
/// send_welcome::with("ann@example.com".to_owned()).priority(0).enqueue(client).await?;
/// let jobs = testing::enqueued(client, send_welcome::TASK).await?;
/// assert_eq!(jobs.len(), 1);
/// assert_eq!(jobs[0].payload, "ann@example.com");
/// assert_eq!((jobs[0].queue.as_str(), jobs[0].priority), ("mail", 0));
/// # Ok(()) }
/// # fn main() {}
/// ```
///
/// # Errors
/// The database's error, or [`Error::InvalidArgument`] naming the job if a
/// stored payload does not decode into `P`.
pub async fn enqueued<P>(client: &Client, task: TaskRef<P>) -> Result<Vec<Enqueued<P>>> {
    let rows = client.store().pending_jobs_of(task.name()).await?;
    rows.into_iter()
        .map(|r| {
            let payload = task.decode(&r.payload).map_err(|e| {
                Error::InvalidArgument(format!(
                    "job {} of task `{}`: its payload {} does not decode: {e}",
                    r.id,
                    task.name(),
                    r.payload
                ))
            })?;
            Ok(Enqueued {
                id: r.id,
                payload,
                queue: r.queue,
                priority: r.priority,
                state: r.state,
                run_at: r.run_at,
                attempts: r.attempts,
                max_attempts: r.max_attempts,
                deadline: r.deadline_ms.map(Duration::from_millis),
                unique_key: r.unique_key,
                json: r.payload,
            })
        })
        .collect()
}

/// Why an assertion of this module failed: its message says what was
/// expected and what was enqueued. Its `Debug` is the message too, so
/// `.unwrap()` and `?` in a test print it as it is.
pub struct AssertionFailed {
    message: String,
}

impl AssertionFailed {
    fn new(message: String) -> Self {
        AssertionFailed { message }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for AssertionFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for AssertionFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AssertionFailed {}

impl From<Error> for AssertionFailed {
    fn from(e: Error) -> Self {
        AssertionFailed::new(format!("could not read the enqueued jobs: {e}"))
    }
}

/// Asserts that a pending job of `task` carries `payload` (compared as the
/// JSON it is stored as) and returns the first such job, to check its
/// options too.
///
/// On failure, the message lists every pending job of the task with the
/// fields whose values differ from `payload`'s, or, if there is none, the
/// jobs of other tasks that are pending:
///
/// ```text
/// no pending job of task `app::send_welcome` carries the expected payload
///   expected: {"name":"Ann","to":"ann@example.com"}
///   job 1 (ready, queue `mail`, priority 1): {"name":"Ann","to":"bob@example.com"}
///     .to: expected "ann@example.com", enqueued "bob@example.com"
/// ```
///
/// ```rust,no_run
/// # use queue_runtime::{task, TaskContext, TaskError};
/// # #[task]
/// # async fn send_welcome(ctx: TaskContext, to: String) -> Result<(), TaskError> { Ok(()) }
/// # async fn demo(client: &queue_runtime::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use queue_runtime::testing;
///
/// send_welcome::enqueue(client, "ann@example.com".to_owned()).await?;
/// let job = testing::assert_enqueued(client, send_welcome::TASK, &"ann@example.com".to_owned()).await?;
/// assert_eq!(job.priority, 2);
/// # Ok(()) }
/// # fn main() {}
/// ```
///
/// # Errors
/// [`AssertionFailed`] if no pending job of the task carries `payload` (or
/// the jobs cannot be read).
pub async fn assert_enqueued<P: serde::Serialize>(
    client: &Client,
    task: TaskRef<P>,
    payload: &P,
) -> std::result::Result<Enqueued<P>, AssertionFailed> {
    let expected = expected_json(task, payload)?;
    let jobs = enqueued(client, task).await?;
    let found = jobs
        .iter()
        .position(|j| serde_json::from_str::<Value>(&j.json).ok().as_ref() == Some(&expected));
    match found {
        Some(i) => Ok(jobs
            .into_iter()
            .nth(i)
            .ok_or_else(|| AssertionFailed::new("the matching job vanished".to_owned()))?),
        None => Err(AssertionFailed::new(
            describe(
                client,
                task.name(),
                &format!(
                    "no pending job of task `{}` carries the expected payload",
                    task.name()
                ),
                Some(&expected),
                &jobs,
            )
            .await,
        )),
    }
}

/// Asserts that exactly one job of `task` is pending and that it carries
/// `payload`; returns it. Fails, listing them, if there are none, several,
/// or one with another payload (naming the fields that differ).
///
/// # Errors
/// [`AssertionFailed`], as [`assert_enqueued`].
pub async fn assert_enqueued_once<P: serde::Serialize>(
    client: &Client,
    task: TaskRef<P>,
    payload: &P,
) -> std::result::Result<Enqueued<P>, AssertionFailed> {
    let expected = expected_json(task, payload)?;
    let mut jobs = enqueued(client, task).await?;
    let matches = jobs.len() == 1
        && serde_json::from_str::<Value>(&jobs[0].json).ok() == Some(expected.clone());
    if matches && let Some(job) = jobs.pop() {
        return Ok(job);
    }
    let head = match jobs.len() {
        0 => format!(
            "expected one pending job of task `{}`, found none",
            task.name()
        ),
        1 => format!(
            "the one pending job of task `{}` does not carry the expected payload",
            task.name()
        ),
        n => format!(
            "expected one pending job of task `{}`, found {n}",
            task.name()
        ),
    };
    Err(AssertionFailed::new(
        describe(client, task.name(), &head, Some(&expected), &jobs).await,
    ))
}

/// Asserts that no job of `task` is pending (ready or scheduled); on
/// failure, lists those that are.
///
/// # Errors
/// [`AssertionFailed`] if some are (or the jobs cannot be read).
pub async fn assert_not_enqueued<P>(
    client: &Client,
    task: TaskRef<P>,
) -> std::result::Result<(), AssertionFailed> {
    let jobs = enqueued(client, task).await?;
    if jobs.is_empty() {
        return Ok(());
    }
    Err(AssertionFailed::new(
        describe(
            client,
            task.name(),
            &format!(
                "expected no pending job of task `{}`, found {}",
                task.name(),
                jobs.len()
            ),
            None,
            &jobs,
        )
        .await,
    ))
}

fn expected_json<P>(task: TaskRef<P>, payload: &P) -> std::result::Result<Value, AssertionFailed> {
    let json = task.encode(payload).map_err(|e| {
        AssertionFailed::new(format!("the expected payload cannot be encoded: {e}"))
    })?;
    serde_json::from_str(&json)
        .map_err(|e| AssertionFailed::new(format!("the expected payload is not JSON: {e}")))
}

/// The failure message: `head`, the expected payload, each job of the task
/// with its differences, or the other tasks' pending jobs if it has none.
async fn describe<P>(
    client: &Client,
    task: &str,
    head: &str,
    expected: Option<&Value>,
    jobs: &[Enqueued<P>],
) -> String {
    let mut out = head.to_owned();
    if let Some(e) = expected {
        out.push_str(&format!("\n  expected: {e}"));
    }
    for j in jobs {
        out.push_str(&format!(
            "\n  job {} ({}, queue `{}`, priority {}): {}",
            j.id, j.state, j.queue, j.priority, j.json
        ));
        if let (Some(e), Ok(actual)) = (expected, serde_json::from_str::<Value>(&j.json)) {
            let mut diffs = Vec::new();
            diff("", e, &actual, &mut diffs);
            for d in diffs {
                out.push_str(&format!("\n    {d}"));
            }
        }
    }
    if jobs.is_empty() {
        match client.store().pending_counts().await {
            Ok(counts) => {
                let others: Vec<String> = counts
                    .iter()
                    .filter(|(t, _)| t != task)
                    .map(|(t, n)| format!("{n} of `{t}`"))
                    .collect();
                if others.is_empty() {
                    out.push_str("\n  no job of any task is pending");
                } else {
                    out.push_str(&format!(
                        "\n  pending jobs of other tasks: {}",
                        others.join(", ")
                    ));
                }
            }
            Err(e) => out.push_str(&format!("\n  (could not count other tasks' jobs: {e})")),
        }
    }
    out
}

/// The differences between `expected` and `actual`, one line per path.
pub(crate) fn diff(path: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let mut keys: Vec<&String> = e.keys().chain(a.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}.{k}");
                match (e.get(k), a.get(k)) {
                    (Some(ev), Some(av)) => diff(&p, ev, av, out),
                    (Some(ev), None) => out.push(format!("{p}: expected {ev}, missing")),
                    (None, Some(av)) => out.push(format!("{p}: not expected, enqueued {av}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                diff(&format!("{path}[{i}]"), ev, av, out);
            }
        }
        (e, a) if e != a => {
            let p = if path.is_empty() { "payload" } else { path };
            out.push(format!("{p}: expected {e}, enqueued {a}"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_names_each_differing_path() {
        let mut out = Vec::new();
        diff(
            "",
            &json!({"to": "ann", "n": 1, "tags": ["a", "b"], "gone": true}),
            &json!({"to": "bob", "n": 1, "tags": ["a", "c"], "extra": null}),
            &mut out,
        );
        assert_eq!(
            out,
            [
                ".extra: not expected, enqueued null",
                ".gone: expected true, missing",
                ".tags[1]: expected \"b\", enqueued \"c\"",
                ".to: expected \"ann\", enqueued \"bob\"",
            ]
        );
        let mut out = Vec::new();
        diff("", &json!("x"), &json!("y"), &mut out);
        assert_eq!(out, ["payload: expected \"x\", enqueued \"y\""]);
        let mut out = Vec::new();
        diff("", &json!({"a": [1]}), &json!({"a": [1]}), &mut out);
        assert!(out.is_empty());
    }
}
