//! [`TaskError`]: what a task handler returns when it fails.
//!
//! `TaskError` works like `anyhow::Error`: any `std::error::Error + Send +
//! Sync + 'static` converts into it, so `?` works in a task returning
//! `Result<(), TaskError>`. On top of the error it carries a
//! [`TaskErrorKind`] and a *permanent* flag: a permanent error sends the job
//! straight to `Dead` instead of retrying it.

use std::error::Error;
use std::fmt;

use crate::deadline::DeadlineExceeded;

type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// What kind of failure a [`TaskError`] is.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskErrorKind {
    /// The task returned an error.
    Failed,
    /// The task ran out of time (its deadline passed).
    Deadline,
    /// The task panicked.
    Panic,
    /// The job's payload could not be decoded into the task's arguments.
    Decode,
    /// No task of the job's name is registered in this program.
    UnknownTask,
}

impl TaskErrorKind {
    /// A lowercase name: `failed`, `deadline`, `panic`, `decode` or
    /// `unknown_task`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskErrorKind::Failed => "failed",
            TaskErrorKind::Deadline => "deadline",
            TaskErrorKind::Panic => "panic",
            TaskErrorKind::Decode => "decode",
            TaskErrorKind::UnknownTask => "unknown_task",
        }
    }
}

impl fmt::Display for TaskErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error a task handler returns.
///
/// Build one with `?` or `.into()` from any error type or from a message
/// (`Err("mailbox unavailable".into())`, a `&str` or a `String`), or with
/// [`TaskError::msg`], [`TaskError::permanent`], [`TaskError::decode`],
/// [`TaskError::panic`] and [`TaskError::deadline_exceeded`].
///
/// ```
/// use queue_core::TaskError;
///
/// fn step(path: &str) -> Result<(), TaskError> {
///     let _text = std::fs::read_to_string(path)?; // io::Error -> TaskError
///     if path.is_empty() {
///         return Err(TaskError::permanent(TaskError::msg("no path given")));
///     }
///     Ok(())
/// }
/// # assert!(step("/nonexistent/queue-core-doc").is_err());
/// ```
///
/// `TaskError` does not implement [`std::error::Error`] itself — that is what
/// lets it convert from every type that does. Use [`TaskError::source_ref`]
/// or [`TaskError::into_inner`] to reach the error inside.
///
/// Its `Display` is the whole chain: the error's text followed by the texts
/// of its [sources](Error::source), joined with `": "`.
pub struct TaskError {
    kind: TaskErrorKind,
    permanent: bool,
    inner: BoxError,
}

/// One blanket impl over what converts into `Box<dyn Error + Send + Sync>`:
/// every error type (so `?` works), and also `&str`, `String` and
/// `Box<dyn Error + Send + Sync>`, so that `Err("mailbox full".into())`
/// works. (Separate `From<&str>` and `From<E: Error>` impls would conflict:
/// the standard library may one day implement `Error` for `&str`.)
impl<E: Into<BoxError>> From<E> for TaskError {
    /// Wraps `error`. The kind is [`TaskErrorKind::Deadline`] if `error` or
    /// any error in its source chain is a [`DeadlineExceeded`], otherwise
    /// [`TaskErrorKind::Failed`]. The error is not permanent.
    fn from(error: E) -> Self {
        TaskError::from_boxed(error.into())
    }
}

impl TaskError {
    /// Wraps an already boxed error (which `?` cannot convert, since
    /// `Box<dyn Error>` does not implement `Error`). The kind is chosen as by
    /// [`From`].
    pub fn from_boxed(error: Box<dyn Error + Send + Sync + 'static>) -> TaskError {
        let deadline = chain(&*error).any(|e| e.is::<DeadlineExceeded>());
        TaskError {
            kind: if deadline {
                TaskErrorKind::Deadline
            } else {
                TaskErrorKind::Failed
            },
            permanent: false,
            inner: error,
        }
    }

    /// Marks an error permanent: the job goes to `Dead` without further
    /// attempts.
    pub fn permanent<E: Into<TaskError>>(error: E) -> TaskError {
        let mut e = error.into();
        e.permanent = true;
        e
    }

    /// An error that is just a message.
    pub fn msg<M>(message: M) -> TaskError
    where
        M: fmt::Display + fmt::Debug + Send + Sync + 'static,
    {
        TaskError::from(MessageError(message))
    }

    /// The error of a task whose deadline passed: kind
    /// [`TaskErrorKind::Deadline`], text `deadline exceeded`.
    pub fn deadline_exceeded() -> TaskError {
        TaskError::from(DeadlineExceeded)
    }

    /// The error of a task that panicked: kind [`TaskErrorKind::Panic`], text
    /// `panicked: <message>`. Not permanent.
    pub fn panic(message: String) -> TaskError {
        TaskError {
            kind: TaskErrorKind::Panic,
            permanent: false,
            inner: Box::new(PanicError(message)),
        }
    }

    /// The error of a payload that does not decode into the task's
    /// arguments: kind [`TaskErrorKind::Decode`], permanent, text
    /// `payload cannot be decoded: <error>`. The decoder's error is the
    /// source of the inner error.
    pub fn decode<E: Error + Send + Sync + 'static>(error: E) -> TaskError {
        TaskError {
            kind: TaskErrorKind::Decode,
            permanent: true,
            inner: Box::new(DecodeError(Box::new(error))),
        }
    }

    /// The same error with another kind.
    pub fn with_kind(mut self, kind: TaskErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// Whether the job must not be retried.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The kind of failure.
    pub fn kind(&self) -> TaskErrorKind {
        self.kind
    }

    /// The wrapped error, for inspection or downcasting. This is the error
    /// that was converted, not the root of its chain: use
    /// [`TaskError::find`] to look through the chain.
    pub fn source_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.inner
    }

    /// The first error of type `T` in the chain (the wrapped error, then its
    /// sources), if any.
    pub fn find<T: Error + 'static>(&self) -> Option<&T> {
        chain(&*self.inner).find_map(|e| e.downcast_ref::<T>())
    }

    /// The wrapped error.
    pub fn into_inner(self) -> Box<dyn Error + Send + Sync + 'static> {
        self.inner
    }
}

impl fmt::Display for TaskError {
    /// The text of the whole chain. An error of kind
    /// [`TaskErrorKind::Deadline`] always starts with `deadline exceeded`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = error_chain_text(&*self.inner);
        if self.kind == TaskErrorKind::Deadline && !text.starts_with("deadline exceeded") {
            write!(f, "deadline exceeded: {text}")
        } else {
            f.write_str(&text)
        }
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("kind", &self.kind)
            .field("permanent", &self.permanent)
            .field("message", &self.to_string())
            .field("inner", &self.inner)
            .finish()
    }
}

/// The text of an error followed by the texts of its sources, joined with
/// `": "`, as in `reading config: permission denied`.
///
/// A source whose text the chain so far already ends with (because its
/// parent's message includes it) is not repeated, and empty texts are left
/// out.
pub fn error_chain_text(e: &(dyn Error + 'static)) -> String {
    let mut text = String::new();
    for err in chain(e) {
        let part = err.to_string();
        if part.is_empty() || (!text.is_empty() && text.ends_with(&part)) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn chain<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |&e| e.source())
}

/// A message used as an error.
struct MessageError<M>(M);

impl<M: fmt::Display> fmt::Display for MessageError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<M: fmt::Debug> fmt::Debug for MessageError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<M: fmt::Display + fmt::Debug> Error for MessageError<M> {}

#[derive(Debug, thiserror::Error)]
#[error("panicked: {0}")]
struct PanicError(String);

#[derive(Debug, thiserror::Error)]
#[error("payload cannot be decoded")]
struct DecodeError(#[source] BoxError);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("loading report {id}")]
    struct LoadError {
        id: u32,
        #[source]
        source: io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("calling upstream")]
    struct Upstream(#[source] DeadlineExceeded);

    #[derive(Debug, thiserror::Error)]
    #[error("database: {0}")]
    struct Repeats(#[source] io::Error);

    fn read(path: &str) -> Result<(), TaskError> {
        std::fs::read(path)?;
        Ok(())
    }

    fn mailbox(full: bool) -> Result<(), TaskError> {
        if full {
            return Err("mailbox unavailable".into());
        }
        Err(format!("mailbox {} is gone", 7).into())
    }

    #[test]
    fn messages_convert_with_into() {
        let e = mailbox(true).unwrap_err();
        assert_eq!(e.to_string(), "mailbox unavailable");
        assert_eq!(e.kind(), TaskErrorKind::Failed);
        assert!(!e.is_permanent());
        assert_eq!(mailbox(false).unwrap_err().to_string(), "mailbox 7 is gone");
        let boxed: Box<dyn Error + Send + Sync> = "boxed".into();
        assert_eq!(TaskError::from(boxed).to_string(), "boxed");
        let p = TaskError::permanent("no such user");
        assert!(p.is_permanent());
        assert_eq!(p.to_string(), "no such user");
    }

    #[test]
    fn question_mark_converts_io_errors() {
        let e = read("/nonexistent/queue-core-test").unwrap_err();
        assert_eq!(e.kind(), TaskErrorKind::Failed);
        assert!(!e.is_permanent());
        let io = e.source_ref().downcast_ref::<io::Error>().unwrap();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        assert!(e.find::<io::Error>().is_some());
        let inner = e.into_inner();
        assert!(inner.downcast::<io::Error>().is_ok());
    }

    #[test]
    fn permanent_flag() {
        let e = TaskError::permanent(io::Error::other("bad input"));
        assert!(e.is_permanent());
        assert_eq!(e.kind(), TaskErrorKind::Failed);
        assert_eq!(e.to_string(), "bad input");
        let e = TaskError::permanent(TaskError::msg("again"));
        assert!(e.is_permanent());
        assert!(!TaskError::msg("x").is_permanent());
    }

    #[test]
    fn deadline_becomes_kind_deadline() {
        let e = TaskError::from(DeadlineExceeded);
        assert_eq!(e.kind(), TaskErrorKind::Deadline);
        assert_eq!(e.to_string(), "deadline exceeded");
        let e = TaskError::deadline_exceeded();
        assert_eq!(e.kind(), TaskErrorKind::Deadline);
        assert!(!e.is_permanent());
        assert_eq!(e.to_string(), "deadline exceeded");

        fn step() -> Result<(), TaskError> {
            Err(DeadlineExceeded)?
        }
        assert_eq!(step().unwrap_err().kind(), TaskErrorKind::Deadline);

        let nested = TaskError::from(Upstream(DeadlineExceeded));
        assert_eq!(nested.kind(), TaskErrorKind::Deadline);
        assert_eq!(
            nested.to_string(),
            "deadline exceeded: calling upstream: deadline exceeded"
        );

        let relabelled = TaskError::msg("slow").with_kind(TaskErrorKind::Deadline);
        assert_eq!(relabelled.kind(), TaskErrorKind::Deadline);
        assert_eq!(relabelled.to_string(), "deadline exceeded: slow");
        assert_eq!(
            TaskError::from(io::Error::other("x")).kind(),
            TaskErrorKind::Failed
        );
    }

    #[test]
    fn display_shows_the_chain() {
        let e = TaskError::from(LoadError {
            id: 7,
            source: io::Error::new(io::ErrorKind::PermissionDenied, "permission denied"),
        });
        assert_eq!(e.to_string(), "loading report 7: permission denied");
        let dbg = format!("{e:?}");
        assert!(dbg.contains("kind: Failed"), "{dbg}");
        assert!(dbg.contains("permanent: false"), "{dbg}");
        assert!(dbg.contains("loading report 7: permission denied"), "{dbg}");
        // A parent that already prints its source does not print it twice.
        let e = TaskError::from(Repeats(io::Error::other("gone away")));
        assert_eq!(e.to_string(), "database: gone away");
    }

    #[test]
    fn msg_panic_and_decode() {
        let e = TaskError::msg("no such customer");
        assert_eq!(e.to_string(), "no such customer");
        assert_eq!(e.kind(), TaskErrorKind::Failed);
        assert_eq!(TaskError::msg(42).to_string(), "42");
        assert_eq!(format!("{:?}", TaskError::msg("m").source_ref()), "\"m\"");

        let e = TaskError::panic("index out of bounds".to_owned());
        assert_eq!(e.kind(), TaskErrorKind::Panic);
        assert!(!e.is_permanent());
        assert_eq!(e.to_string(), "panicked: index out of bounds");

        let json = serde_json::from_str::<u32>("\"x\"").unwrap_err();
        let want = format!("payload cannot be decoded: {json}");
        let e = TaskError::decode(json);
        assert_eq!(e.kind(), TaskErrorKind::Decode);
        assert!(e.is_permanent());
        assert_eq!(e.to_string(), want);
        assert!(e.find::<serde_json::Error>().is_some());
        let r: Result<u32, TaskError> = serde_json::from_str("[]").map_err(TaskError::decode);
        assert_eq!(r.unwrap_err().kind(), TaskErrorKind::Decode);
    }

    #[test]
    fn with_kind_and_boxed() {
        let e = TaskError::msg("who?").with_kind(TaskErrorKind::UnknownTask);
        assert_eq!(e.kind(), TaskErrorKind::UnknownTask);
        assert_eq!(e.kind().to_string(), "unknown_task");
        let boxed: Box<dyn Error + Send + Sync> = "plain".into();
        let e = TaskError::from_boxed(boxed);
        assert_eq!(e.to_string(), "plain");
        assert_eq!(e.kind(), TaskErrorKind::Failed);
    }

    #[test]
    fn chain_text_helper() {
        let e = LoadError {
            id: 1,
            source: io::Error::other("disk full"),
        };
        assert_eq!(error_chain_text(&e), "loading report 1: disk full");
        assert_eq!(error_chain_text(&DeadlineExceeded), "deadline exceeded");
    }

    #[test]
    fn is_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<TaskError>();
    }
}
