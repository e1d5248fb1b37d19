//! What `#[task]` declares about a task, and the rules for names.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::priority::Priority;

/// The options of a task, as its `#[task]` attribute declares them.
///
/// Every field is plain data so that the attribute can emit the whole value
/// in a `static`; [`TaskOptions::new`] gives the defaults:
///
/// ```
/// use queue_core::{Priority, TaskOptions};
///
/// static OPTIONS: TaskOptions = TaskOptions {
///     priority: Priority::HIGHEST,
///     retries: 5,
///     ..TaskOptions::new("send_email")
/// };
/// assert_eq!(OPTIONS.queue, "default");
/// assert_eq!(OPTIONS.max_attempts(), 6);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TaskOptions {
    /// The task's name, unique in the program; stored with each job.
    pub name: &'static str,
    /// The queue its jobs go to ([`TaskOptions::DEFAULT_QUEUE`] unless set).
    pub queue: &'static str,
    /// The priority of its jobs unless the enqueuer picks another.
    pub priority: Priority,
    /// How many times a failed job is retried after its first attempt: at
    /// most `retries + 1` attempts in all.
    pub retries: u32,
    /// The wait before each retry.
    pub backoff: Backoff,
    /// How long one attempt may run, or `None` for no limit.
    pub deadline: Option<Duration>,
    /// For a periodic task, its cron expression (as written, or normalized;
    /// see [`crate::Schedule`]).
    pub cron: Option<&'static str>,
    /// The IANA time zone the cron expression is evaluated in; `None` means
    /// UTC.
    pub tz: Option<&'static str>,
    /// What a periodic task does with ticks missed while no runtime ran.
    pub catch_up: CatchUp,
    /// Whether a periodic task's tick enqueues a job while the job of an
    /// earlier tick is still ready, scheduled or running (default `true`).
    /// With `false` such a tick enqueues nothing.
    pub overlap: bool,
    /// At most this many jobs of the task run at once across every runtime
    /// on the database (per key when the task has a `concurrency_key`), or
    /// `None` for no limit.
    pub concurrency: Option<u32>,
    /// At most this many starts of the task per window across every
    /// runtime (per key when the task has a `rate_key`), or `None`.
    pub rate: Option<crate::Rate>,
}

impl TaskOptions {
    /// The queue of a task that does not name one: `"default"`.
    pub const DEFAULT_QUEUE: &'static str = "default";
    /// The retries of a task that does not set them: 3 (so 4 attempts).
    pub const DEFAULT_RETRIES: u32 = 3;

    /// The options of a task named `name` with every other field at its
    /// default: the default queue and priority, [`Self::DEFAULT_RETRIES`],
    /// [`Backoff::DEFAULT`], no deadline, not periodic, [`CatchUp::Latest`].
    pub const fn new(name: &'static str) -> TaskOptions {
        TaskOptions {
            name,
            queue: Self::DEFAULT_QUEUE,
            priority: Priority::DEFAULT,
            retries: Self::DEFAULT_RETRIES,
            backoff: Backoff::DEFAULT,
            deadline: None,
            cron: None,
            tz: None,
            catch_up: CatchUp::Latest,
            overlap: true,
            concurrency: None,
            rate: None,
        }
    }

    /// The most attempts a job of this task gets: `retries + 1`, saturating.
    pub const fn max_attempts(&self) -> u32 {
        self.retries.saturating_add(1)
    }
}

/// What a periodic task does with ticks missed while no runtime was running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Fire the latest missed tick once, then carry on with the schedule.
    #[default]
    Latest,
    /// Forget missed ticks and wait for the next one.
    Skip,
}

impl CatchUp {
    /// The spelling [`CatchUp::from_str`] reads: `"latest"` or `"skip"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CatchUp::Latest => "latest",
            CatchUp::Skip => "skip",
        }
    }
}

impl fmt::Display for CatchUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`CatchUp`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid catch-up `{input}`: expected `latest` or `skip`")]
pub struct CatchUpError {
    input: String,
}

impl FromStr for CatchUp {
    type Err = CatchUpError;

    /// Parses `latest` or `skip` (surrounding whitespace is ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "latest" => Ok(CatchUp::Latest),
            "skip" => Ok(CatchUp::Skip),
            _ => Err(CatchUpError {
                input: s.to_owned(),
            }),
        }
    }
}

/// The longest queue name, in characters.
const MAX_QUEUE_NAME: usize = 64;
/// The longest task name, in characters.
const MAX_TASK_NAME: usize = 255;

/// The error of [`validate_queue_name`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid queue name `{}`: {reason}", .name.escape_debug())]
pub struct QueueNameError {
    name: String,
    reason: &'static str,
}

/// The error of [`validate_task_name`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid task name `{}`: {reason}", .name.escape_debug())]
pub struct TaskNameError {
    name: String,
    reason: &'static str,
}

/// Checks a queue name: 1 to 64 characters, each an ASCII letter or digit,
/// `_`, `.`, `:` or `-`.
pub fn validate_queue_name(s: &str) -> Result<(), QueueNameError> {
    let fail = |reason| {
        Err(QueueNameError {
            name: s.to_owned(),
            reason,
        })
    };
    if s.is_empty() {
        return fail("it must not be empty");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        return fail("only ASCII letters, digits, `_`, `.`, `:` and `-` are allowed");
    }
    if s.len() > MAX_QUEUE_NAME {
        return fail("it is longer than 64 characters");
    }
    Ok(())
}

/// Checks a task name: 1 to 255 characters, none of them a control
/// character, not beginning or ending with whitespace (the database
/// compares names ignoring trailing spaces: `"a "` would share `"a"`'s
/// cron schedule).
pub fn validate_task_name(s: &str) -> Result<(), TaskNameError> {
    let fail = |reason| {
        Err(TaskNameError {
            name: s.to_owned(),
            reason,
        })
    };
    if s.is_empty() {
        return fail("it must not be empty");
    }
    if s.chars().any(char::is_control) {
        return fail("control characters are not allowed");
    }
    if s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return fail("it must not begin or end with whitespace");
    }
    if s.chars().count() > MAX_TASK_NAME {
        return fail("it is longer than 255 characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    static STATIC_OPTIONS: TaskOptions = TaskOptions {
        name: "report",
        queue: "reports",
        priority: Priority::HIGHEST,
        retries: 5,
        backoff: Backoff::Exponential {
            base: Duration::from_millis(1000),
            max: Duration::from_millis(3600000),
        },
        deadline: Some(Duration::from_secs(30)),
        cron: Some("0 0 * * * *"),
        tz: Some("Europe/Berlin"),
        catch_up: CatchUp::Skip,
        overlap: true,
        concurrency: Some(2),
        rate: Some(crate::Rate {
            count: 10,
            per: Duration::from_secs(1),
        }),
    };

    #[test]
    fn defaults() {
        let o = TaskOptions::new("t");
        assert_eq!(o.name, "t");
        assert_eq!(o.queue, TaskOptions::DEFAULT_QUEUE);
        assert_eq!(o.queue, "default");
        assert_eq!(o.priority, Priority::DEFAULT);
        assert_eq!(o.retries, TaskOptions::DEFAULT_RETRIES);
        assert_eq!(o.max_attempts(), 4);
        assert_eq!(o.backoff, Backoff::DEFAULT);
        assert_eq!(o.deadline, None);
        assert_eq!(o.cron, None);
        assert_eq!(o.tz, None);
        assert_eq!(o.catch_up, CatchUp::Latest);
        assert_eq!(CatchUp::default(), CatchUp::Latest);
    }

    #[test]
    fn statics_and_attempts() {
        assert_eq!(STATIC_OPTIONS.max_attempts(), 6);
        assert_eq!(STATIC_OPTIONS.backoff, Backoff::DEFAULT);
        let o = TaskOptions {
            retries: u32::MAX,
            ..TaskOptions::new("x")
        };
        assert_eq!(o.max_attempts(), u32::MAX);
        let o = TaskOptions {
            retries: 0,
            ..TaskOptions::new("x")
        };
        assert_eq!(o.max_attempts(), 1);
    }

    #[test]
    fn catch_up_parses() {
        assert_eq!("latest".parse::<CatchUp>().unwrap(), CatchUp::Latest);
        assert_eq!(" skip ".parse::<CatchUp>().unwrap(), CatchUp::Skip);
        for c in [CatchUp::Latest, CatchUp::Skip] {
            assert_eq!(c.to_string().parse::<CatchUp>().unwrap(), c);
        }
        assert_eq!(
            "all".parse::<CatchUp>().unwrap_err().to_string(),
            "invalid catch-up `all`: expected `latest` or `skip`"
        );
    }

    #[test]
    fn queue_names() {
        for ok in [
            "default",
            "a",
            "emails.high",
            "tenant:42",
            "a_b-c",
            &"q".repeat(64),
        ] {
            assert_eq!(validate_queue_name(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("", "invalid queue name ``: it must not be empty"),
            (
                "a b",
                "invalid queue name `a b`: only ASCII letters, digits, `_`, `.`, `:` and `-` are allowed",
            ),
            (
                "caf\u{e9}",
                "invalid queue name `caf\u{e9}`: only ASCII letters, digits, `_`, `.`, `:` and `-` are allowed",
            ),
            (
                "a/b",
                "invalid queue name `a/b`: only ASCII letters, digits, `_`, `.`, `:` and `-` are allowed",
            ),
        ];
        for (bad, want) in cases {
            assert_eq!(validate_queue_name(bad).unwrap_err().to_string(), want);
        }
        let long = "q".repeat(65);
        assert_eq!(
            validate_queue_name(&long).unwrap_err().to_string(),
            format!("invalid queue name `{long}`: it is longer than 64 characters")
        );
    }

    #[test]
    fn task_names() {
        for ok in [
            "send_email",
            "billing::charge",
            "with space",
            "\u{e9}t\u{e9}",
        ] {
            assert_eq!(validate_task_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_task_name(&"\u{e9}".repeat(255)), Ok(()));
        assert_eq!(validate_task_name("a b"), Ok(()));
        for bad in ["a ", " a", "a\u{a0}", "\u{3000}a"] {
            let e = validate_task_name(bad).unwrap_err().to_string();
            assert!(
                e.ends_with(": it must not begin or end with whitespace"),
                "{e}"
            );
        }
        assert_eq!(
            validate_task_name("").unwrap_err().to_string(),
            "invalid task name ``: it must not be empty"
        );
        assert_eq!(
            validate_task_name("a\nb").unwrap_err().to_string(),
            "invalid task name `a\\nb`: control characters are not allowed"
        );
        let long = "t".repeat(256);
        assert_eq!(
            validate_task_name(&long).unwrap_err().to_string(),
            format!("invalid task name `{long}`: it is longer than 255 characters")
        );
    }
}
