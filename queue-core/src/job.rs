//! A job's identity ([`JobId`]) and its place in its life ([`JobState`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The identity of a job: the primary key of its row.
///
/// Displays and parses as the bare number; serializes as a JSON number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl JobId {
    /// The number inside.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for JobId {
    fn from(v: u64) -> Self {
        JobId(v)
    }
}

impl From<JobId> for u64 {
    fn from(id: JobId) -> Self {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The error of parsing a [`JobId`] from text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid job id `{input}`: expected a non-negative whole number such as `42`")]
pub struct JobIdError {
    input: String,
}

impl FromStr for JobId {
    type Err = JobIdError;

    /// Parses the bare number (surrounding whitespace is ignored; a sign is not
    /// accepted).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(JobIdError {
                input: s.to_owned(),
            });
        }
        t.parse::<u64>().map(JobId).map_err(|_| JobIdError {
            input: s.to_owned(),
        })
    }
}

/// Where a job is in its life.
///
/// A job is created `Ready` (or `Scheduled` when it has a future run time),
/// is claimed by a worker (`Running`), and then either disappears (success),
/// goes back to `Scheduled` for a retry, or ends `Dead`.
///
/// The numeric values ([`JobState::as_u8`]) are stored in the database and
/// never change.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting in the claim index for a worker.
    ///
    /// A job enters `Ready` when it is enqueued without a run time, when the
    /// dispatcher finds a `Scheduled` job due, or when the lease of a
    /// `Running` job expires (its worker died or hung). A worker's claim moves
    /// it to `Running`.
    Ready,
    /// Waiting for a run time in the future.
    ///
    /// A job enters `Scheduled` when it is enqueued with `run_at` or a delay,
    /// when a failed attempt is retried after its backoff, or when a worker
    /// that does not know the job's task hands it back. The dispatcher moves
    /// it to `Ready` once its run time is due.
    Scheduled,
    /// Claimed by a worker under a lease and being executed.
    ///
    /// On success the job is deleted. On failure it moves to `Scheduled` for a
    /// retry, or to `Dead` when its attempts are spent or the error is
    /// permanent. If the lease expires before the worker reports back, the job
    /// moves back to `Ready`.
    Running,
    /// Finished without success and kept for inspection.
    ///
    /// A job enters `Dead` when its attempts are spent, when its task returned
    /// a permanent error, or when its payload cannot be decoded. It keeps its
    /// payload and last error until `retry_dead` moves it back to `Ready` or
    /// `purge_dead` deletes it.
    Dead,
    /// Waiting for a slot of its task's concurrency limit
    /// (`#[task(concurrency = N)]`), outside the claim index.
    ///
    /// A claim that takes a job whose limit is full moves it here instead
    /// of `Running`. When a running job of the same limit ends, the oldest
    /// blocked job (by priority, then enqueue order) moves back to `Ready`
    /// holding the freed slot.
    Blocked,
}

impl JobState {
    /// Every state, in the order of [`JobState::as_u8`].
    pub const ALL: [JobState; 5] = [
        JobState::Ready,
        JobState::Scheduled,
        JobState::Running,
        JobState::Dead,
        JobState::Blocked,
    ];

    /// The number stored in the database: `Ready` 0, `Scheduled` 1,
    /// `Running` 2, `Dead` 3, `Blocked` 4.
    pub const fn as_u8(self) -> u8 {
        match self {
            JobState::Ready => 0,
            JobState::Scheduled => 1,
            JobState::Running => 2,
            JobState::Dead => 3,
            JobState::Blocked => 4,
        }
    }

    /// The state stored as `v`, or `None` if `v` is no state.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(JobState::Ready),
            1 => Some(JobState::Scheduled),
            2 => Some(JobState::Running),
            3 => Some(JobState::Dead),
            4 => Some(JobState::Blocked),
            _ => None,
        }
    }

    /// The lowercase name: `"ready"`, `"scheduled"`, `"running"`, `"dead"`
    /// or `"blocked"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Dead => "dead",
            JobState::Blocked => "blocked",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serializes as its lowercase name ([`JobState::as_str`]).
impl Serialize for JobState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Deserializes from its lowercase name ([`JobState::as_str`]).
impl<'de> Deserialize<'de> for JobState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The error of parsing a [`JobState`] from text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown job state `{input}`: expected `ready`, `scheduled`, `running`, `dead` or `blocked`"
)]
pub struct JobStateError {
    input: String,
}

impl FromStr for JobState {
    type Err = JobStateError;

    /// Parses the names of [`JobState::as_str`] (surrounding whitespace is
    /// ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == t)
            .ok_or_else(|| JobStateError {
                input: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_display_parse_and_serde() {
        let id = JobId::from(42);
        assert_eq!(id.get(), 42);
        assert_eq!(u64::from(id), 42);
        assert_eq!(id.to_string(), "42");
        assert_eq!("42".parse::<JobId>().unwrap(), id);
        assert_eq!(" 42 ".parse::<JobId>().unwrap(), id);
        assert_eq!(
            u64::MAX.to_string().parse::<JobId>().unwrap(),
            JobId(u64::MAX)
        );
        assert_eq!(serde_json::to_string(&id).unwrap(), "42");
        assert_eq!(serde_json::from_str::<JobId>("42").unwrap(), id);
        assert!(JobId(1) < JobId(2));
    }

    #[test]
    fn job_id_rejects_garbage() {
        for bad in ["", " ", "-1", "+1", "1.5", "abc", "18446744073709551616"] {
            let err = bad.parse::<JobId>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid job id `{bad}`: expected a non-negative whole number such as `42`"
                )
            );
        }
    }

    #[test]
    fn job_state_numbers_and_names_round_trip() {
        for (i, st) in JobState::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(st.as_u8()), i);
            assert_eq!(JobState::from_u8(st.as_u8()), Some(st));
            assert_eq!(st.to_string(), st.as_str());
            assert_eq!(st.as_str().parse::<JobState>().unwrap(), st);
        }
        assert_eq!(JobState::Ready.as_u8(), 0);
        assert_eq!(JobState::Scheduled.as_u8(), 1);
        assert_eq!(JobState::Running.as_u8(), 2);
        assert_eq!(JobState::Dead.as_u8(), 3);
        assert_eq!(JobState::Blocked.as_u8(), 4);
        assert_eq!(JobState::from_u8(5), None);
        assert_eq!(JobState::from_u8(255), None);
        assert_eq!(serde_json::to_string(&JobState::Dead).unwrap(), "\"dead\"");
        assert_eq!(
            serde_json::from_str::<JobState>("\"blocked\"").unwrap(),
            JobState::Blocked
        );
        assert!(serde_json::from_str::<JobState>("\"gone\"").is_err());
        assert_eq!(
            "Dead".parse::<JobState>().unwrap_err().to_string(),
            "unknown job state `Dead`: expected `ready`, `scheduled`, `running`, `dead` or `blocked`"
        );
    }
}
