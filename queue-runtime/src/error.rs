//! The runtime's one error type.

/// What a `Client` or `Runtime` call that touches the database can fail with.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed a statement, or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A payload could not be encoded as JSON at enqueue time.
    #[error("payload of task `{task}` cannot be encoded as JSON: {source}")]
    Encode {
        /// The task's name.
        task: String,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// A payload too big for the database server: its `max_allowed_packet`
    /// less room for the rest of the row. Nothing was enqueued.
    #[error(
        "payload of task `{task}` is {size} bytes; this server takes at most {limit} bytes per payload \
         (its max_allowed_packet less 128 KiB)"
    )]
    PayloadTooLarge {
        /// The task's name.
        task: String,
        /// The payload's size in bytes (JSON).
        size: u64,
        /// The largest payload the server takes, in bytes.
        limit: u64,
    },
    /// Two `#[task]` functions were registered under one name.
    #[error(
        "two tasks are named `{name}`: {first} and {second}; give one of them `#[task(name = \"...\")]`"
    )]
    DuplicateTask {
        /// The shared name.
        name: String,
        /// Where the first is declared (`file:line`).
        first: String,
        /// Where the second is declared (`file:line`).
        second: String,
    },
    /// A task name that no `#[task]` of this program declares.
    #[error("unknown task `{0}`")]
    UnknownTask(String),
    /// A queue name or other argument that the runtime rejects.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Another process held the lock for too long: the migration lock
    /// (`what` names it), or the pending job of a unique key, which kept
    /// changing under the enqueue. Nothing was done; try again.
    #[error("busy: {0}; try again")]
    Busy(String),
    /// A cron expression or time zone of a registered task is invalid.
    #[error("task `{task}`: {message}")]
    Schedule {
        /// The task's name.
        task: String,
        /// What is wrong.
        message: String,
    },
    /// The schema in the database is newer than this build knows.
    #[error(
        "the database schema is at version {found}, newer than this build's {known}; upgrade queue-runtime"
    )]
    SchemaTooNew {
        /// The version found in the database.
        found: i64,
        /// The newest version this build ships.
        known: i64,
    },
    /// The schema in the database is older than this build's, or missing:
    /// [`Client::migrate`](crate::Client::migrate) has not been run since
    /// the upgrade. Returned by `Runtime::start` and the enqueue paths.
    #[error("{}; run Client::migrate()", schema_too_old(*found, *known))]
    SchemaTooOld {
        /// The version found in the database: the last of the migrations
        /// it has in order, 0 for none.
        found: i64,
        /// The newest version this build ships.
        known: i64,
    },
    /// A job that `retry_dead` was asked for is not dead (or does not exist).
    #[error("job {0} is not a dead job")]
    NotDead(queue_core::JobId),
    /// The deadline of the current attempt passed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// Shutdown did not finish within its drain time.
    #[error("shutdown: {0}")]
    Shutdown(String),
}

fn schema_too_old(found: i64, known: i64) -> String {
    if found == 0 {
        format!("the database has no queue-runtime schema (this build's is version {known})")
    } else {
        format!("the database schema is at version {found}, older than this build's {known}")
    }
}

/// `Result` with the runtime's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The MySQL/MariaDB error number, when the database reported one.
    pub fn db_code(&self) -> Option<u16> {
        match self {
            Error::Database(e) => sql_error_number(e),
            _ => None,
        }
    }
}

/// The server's error number of a sqlx error (e.g. 1213 for a deadlock).
pub(crate) fn sql_error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    }
}

/// Whether a statement failed for a reason that a retry of the whole
/// transaction fixes: deadlock (1213) or lock wait timeout (1205).
pub(crate) fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(sql_error_number(e), Some(1213 | 1205))
}

/// Whether a sqlx error means the connection or server is gone (as opposed to
/// a statement the server rejected).
pub(crate) fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
    ) || matches!(
        sql_error_number(e),
        // 1047: a Galera node outside the primary component (or still
        // joining) refuses every statement with "WSREP has not yet prepared
        // node for application use": for this client, the server is away.
        Some(1927 | 2006 | 2013 | 1053 | 1077 | 1078 | 1079 | 1080 | 1047)
    )
}
