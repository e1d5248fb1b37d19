//! The one `sqlx::Executor` core of [`Db`](super::Db) and
//! [`DbTransaction`](super::DbTransaction): a statement is taken apart,
//! limited by the deadline as the server's flavour allows, run on a
//! connection, and its results collected before they are handed back (the
//! statement must be over to restore the connection).

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use queue_core::Deadline;
use sqlx::mysql::{MySql, MySqlConnection, MySqlPool, MySqlQueryResult, MySqlRow};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Either, Execute, Executor};

use super::deadline::deadline_exceeded;
use super::statement::{Outgoing, Statement};
use super::watchdog::{Watchdog, lower_lock_wait};
use crate::flavor::{DeadlinePlan, Flavor};

/// What `fetch_many` yields: a statement's result or one of its rows.
pub(super) type ResultOrRow = Result<Either<MySqlQueryResult, MySqlRow>, sqlx::Error>;

/// Where a handle runs a statement: what `Db` and `&mut DbTransaction`
/// supply to the shared `fetch_many` and `fetch_optional`.
pub(super) trait Session<'e>: Send + Sized + 'e {
    /// The pool to hand a statement to unchanged because nothing limits it
    /// (a `Db` without any deadline). Asked when the statement is issued.
    fn unlimited(&self) -> Option<&'e MySqlPool> {
        None
    }

    /// Runs `stmt` under the deadline, collecting what `collect` asks for.
    fn run(
        self,
        stmt: Statement,
        collect: Collect,
    ) -> BoxFuture<'e, Result<Collected, sqlx::Error>>;
}

/// `Executor::fetch_many` of a session.
pub(super) fn fetch_many<'e, 'q: 'e, E>(
    session: impl Session<'e>,
    query: E,
) -> BoxStream<'e, ResultOrRow>
where
    E: 'q + Execute<'q, MySql>,
{
    if let Some(pool) = session.unlimited() {
        return pool.fetch_many(query);
    }
    let run = Statement::take(query).map(|stmt| session.run(stmt, Collect::All));
    futures_util::stream::once(async move { run?.await })
        .flat_map(|collected| {
            let items = match collected {
                Ok(collected) => collected.into_all(),
                Err(e) => vec![Err(e)],
            };
            futures_util::stream::iter(items)
        })
        .boxed()
}

/// `Executor::fetch_optional` of a session.
pub(super) fn fetch_optional<'e, 'q: 'e, E>(
    session: impl Session<'e>,
    query: E,
) -> BoxFuture<'e, Result<Option<MySqlRow>, sqlx::Error>>
where
    E: 'q + Execute<'q, MySql>,
{
    if let Some(pool) = session.unlimited() {
        return pool.fetch_optional(query);
    }
    let run = Statement::take(query).map(|stmt| session.run(stmt, Collect::FirstRow));
    async move { Ok(run?.await?.into_first_row()) }.boxed()
}

/// What to collect of a statement's results.
#[derive(Clone, Copy)]
pub(super) enum Collect {
    /// Every result (`fetch_many` and all that build on it).
    All,
    /// The first row (`fetch_optional`, `fetch_one`).
    FirstRow,
}

/// What was collected, as [`Collect`] asked.
pub(super) enum Collected {
    All(Vec<ResultOrRow>),
    FirstRow(Option<MySqlRow>),
}

impl Collected {
    fn into_first_row(self) -> Option<MySqlRow> {
        match self {
            Collected::FirstRow(row) => row,
            Collected::All(items) => items.into_iter().find_map(|i| match i {
                Ok(Either::Right(row)) => Some(row),
                _ => None,
            }),
        }
    }

    fn into_all(self) -> Vec<ResultOrRow> {
        match self {
            Collected::All(items) => items,
            Collected::FirstRow(row) => row.map(|r| Ok(Either::Right(r))).into_iter().collect(),
        }
    }
}

/// Runs one statement on `conn`, limited by `deadline` if there is one
/// (refused without sending anything if it has passed). Clears `reusable`
/// when the connection must not be used again.
pub(super) async fn run_on(
    conn: &mut MySqlConnection,
    pool: &MySqlPool,
    flavor: Flavor,
    deadline: Option<Deadline>,
    stmt: Statement,
    collect: Collect,
    reusable: &mut bool,
) -> Result<Collected, sqlx::Error> {
    let Some(deadline) = deadline else {
        return send(conn, stmt.unchanged(), collect).await;
    };
    let left = deadline.time_left();
    if left.is_zero() {
        return Err(deadline_exceeded());
    }
    match flavor.deadline_plan(stmt.sql.as_str(), left) {
        DeadlinePlan::Rewritten(sql) => send(conn, stmt.rewritten(sql), collect).await,
        DeadlinePlan::Watched(session) => {
            let id = match lower_lock_wait(conn, session.setup).await {
                Ok(id) => id,
                Err(e) => {
                    // Unknown how far the setup got: do not reuse.
                    *reusable = false;
                    return Err(e);
                }
            };
            let watchdog = Watchdog::arm(pool.clone(), id, deadline);
            let collected = send(conn, stmt.unchanged(), collect).await;
            if watchdog.disarm() {
                // A KILL QUERY is on its way to this connection, maybe
                // too late for the statement: never reuse it.
                *reusable = false;
                return collected;
            }
            if let Err(e) = conn.execute(AssertSqlSafe(session.restore)).await {
                tracing::warn!(error = %e, "could not restore innodb_lock_wait_timeout; closing the connection");
                *reusable = false;
            }
            collected
        }
    }
}

/// Sends `q` on `conn`, collecting what `collect` asks for.
async fn send(
    conn: &mut MySqlConnection,
    q: Outgoing,
    collect: Collect,
) -> Result<Collected, sqlx::Error> {
    match collect {
        Collect::FirstRow => (&mut *conn)
            .fetch_optional(q)
            .await
            .map(Collected::FirstRow),
        Collect::All => {
            let mut items = Vec::new();
            let mut results = (&mut *conn).fetch_many(q);
            while let Some(item) = results.next().await {
                let failed = item.is_err();
                items.push(item);
                if failed {
                    break;
                }
            }
            Ok(Collected::All(items))
        }
    }
}

/// A pooled connection that one statement borrows: closed when dropped,
/// not returned to the pool, unless [`reusable`](Self::reusable) was set
/// after its statement finished.
pub(super) struct ConnectionGuard {
    conn: PoolConnection<MySql>,
    /// Set once the statement finished and left the connection clean.
    pub(super) reusable: bool,
}

impl ConnectionGuard {
    pub(super) fn new(conn: PoolConnection<MySql>) -> ConnectionGuard {
        ConnectionGuard {
            conn,
            reusable: false,
        }
    }

    pub(super) fn conn(&mut self) -> &mut MySqlConnection {
        &mut self.conn
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if !self.reusable {
            // sqlx would test it with a ping on release, which first reads
            // (waits for) the rest of the abandoned statement; close instead.
            self.conn.close_on_drop();
        }
    }
}
