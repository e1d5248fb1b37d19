//! The one `sqlx::Executor` core of [`Db`](super::Db) and
//! [`DbTransaction`](super::DbTransaction): a statement is taken apart,
//! limited by the deadline as the server's flavour allows, run on a
//! connection, and its results collected before they are handed back (the
//! statement must be over to restore the connection).

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use queue_core::Deadline;
use sqlx::mysql::{
    MySql, MySqlConnection, MySqlPool, MySqlQueryResult, MySqlRow, MySqlStatement, MySqlTypeInfo,
};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Describe, Either, Execute, Executor, SqlStr};

use super::deadline::deadline_exceeded;
use super::statement::{Outgoing, Statement};
use super::watchdog::{Watchdog, lower_lock_wait};
use crate::flavor::{DeadlinePlan, Flavor};

/// What `fetch_many` yields: a statement's result or one of its rows.
pub(super) type ResultOrRow = Result<Either<MySqlQueryResult, MySqlRow>, sqlx::Error>;

/// A future of what sqlx returns, boxed as `sqlx::Executor` wants it.
pub(super) type SqlFuture<'e, T> = BoxFuture<'e, Result<T, sqlx::Error>>;

/// Where a handle runs a statement: what `Db` and `&mut DbTransaction`
/// supply to the one `sqlx::Executor` that [`executor_through_session!`]
/// writes for both.
pub(super) trait Session<'e>: Send + Sized + 'e {
    /// The pool to hand a statement to unchanged because nothing limits it
    /// (a `Db` without any deadline). Asked when the statement is issued.
    fn unlimited(&self) -> Option<&'e MySqlPool> {
        None
    }

    /// Runs `stmt` under the deadline, collecting what `collect` asks for.
    fn run(self, stmt: Statement, collect: Collect) -> SqlFuture<'e, Collected>;

    /// `Executor::prepare_with`, within the deadline.
    fn prepare(self, sql: SqlStr, types: &'e [MySqlTypeInfo]) -> SqlFuture<'e, MySqlStatement>;

    /// `Executor::describe`, required by sqlx's query macros (its `offline`
    /// feature, which queue-runtime turns on so that a host application
    /// using the macros builds). Not limited.
    fn describe(self, sql: SqlStr) -> SqlFuture<'e, Describe<MySql>>;
}

/// The body of `impl sqlx::Executor<$life> for` a [`Session`]: every method
/// forwards to the session. A macro because sqlx's trait cannot be
/// implemented once for every session (the orphan rule), and both impls
/// would otherwise repeat these signatures.
macro_rules! executor_through_session {
    ($life:lifetime) => {
        type Database = ::sqlx::MySql;

        fn fetch_many<'e, 'q: 'e, E>(
            self,
            query: E,
        ) -> ::futures_core::stream::BoxStream<'e, $crate::db::executor::ResultOrRow>
        where
            $life: 'e,
            E: 'q + ::sqlx::Execute<'q, ::sqlx::MySql>,
        {
            $crate::db::executor::fetch_many(self, query)
        }

        fn fetch_optional<'e, 'q: 'e, E>(
            self,
            query: E,
        ) -> $crate::db::executor::SqlFuture<'e, Option<::sqlx::mysql::MySqlRow>>
        where
            $life: 'e,
            E: 'q + ::sqlx::Execute<'q, ::sqlx::MySql>,
        {
            $crate::db::executor::fetch_optional(self, query)
        }

        fn prepare_with<'e>(
            self,
            sql: ::sqlx::SqlStr,
            parameters: &'e [::sqlx::mysql::MySqlTypeInfo],
        ) -> $crate::db::executor::SqlFuture<'e, ::sqlx::mysql::MySqlStatement>
        where
            $life: 'e,
        {
            $crate::db::executor::Session::prepare(self, sql, parameters)
        }

        fn describe<'e>(
            self,
            sql: ::sqlx::SqlStr,
        ) -> $crate::db::executor::SqlFuture<'e, ::sqlx::Describe<::sqlx::MySql>>
        where
            $life: 'e,
        {
            $crate::db::executor::Session::describe(self, sql)
        }
    };
}
pub(super) use executor_through_session;

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
) -> SqlFuture<'e, Option<MySqlRow>>
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

/// What limits a statement: its deadline, and the server's flavour, which
/// says how the server enforces it (the pool is where MySQL's watchdog
/// finds a connection for its `KILL QUERY`).
#[derive(Clone, Copy)]
pub(super) struct Limits<'a> {
    pub(super) pool: &'a MySqlPool,
    pub(super) flavor: Flavor,
    pub(super) deadline: Option<Deadline>,
}

impl Limits<'_> {
    /// Runs one statement on `conn`, limited by the deadline if there is one
    /// (refused without sending anything if it has passed). Clears
    /// `reusable` when the connection must not be used again.
    pub(super) async fn run_on(
        self,
        conn: &mut MySqlConnection,
        stmt: Statement,
        collect: Collect,
        reusable: &mut bool,
    ) -> Result<Collected, sqlx::Error> {
        let Some(deadline) = self.deadline else {
            return send(conn, stmt.unchanged(), collect).await;
        };
        let left = deadline.time_left();
        if left.is_zero() {
            return Err(deadline_exceeded());
        }
        match self.flavor.deadline_plan(stmt.sql.as_str(), left) {
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
                let watchdog = Watchdog::arm(self.pool.clone(), id, deadline);
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
