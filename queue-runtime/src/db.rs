//! Deadline-aware database access for task handlers: [`Db`] (what
//! `ctx.db()` returns) and [`DbTransaction`] (what `ctx.db().begin()`
//! returns).
//!
//! Both implement [`sqlx::Executor`] for MySQL, so the usual
//! `sqlx::query("…").fetch_one(ctx.db())` works. For every statement:
//!
//! - once the deadline has passed, the statement fails at once with an
//!   error whose source chain holds [`DeadlineExceeded`] (its text reads
//!   "deadline exceeded"): no connection is acquired and nothing is sent;
//! - before the deadline, the server itself limits the statement to the time
//!   left, lock waits included:
//!   - MariaDB: `SET STATEMENT innodb_lock_wait_timeout=LEAST(@@innodb_lock_wait_timeout, N),
//!     max_statement_time=S FOR <statement>` (any statement);
//!   - MySQL 8, a statement starting with `SELECT`: the
//!     `/*+ MAX_EXECUTION_TIME(ms) */` hint;
//!   - MySQL 8, any other statement: the session's `innodb_lock_wait_timeout`
//!     is lowered for the statement (and restored after it), and a watchdog
//!     sends `KILL QUERY <connection id>` from another connection if the
//!     statement still runs at the deadline. That connection is then closed
//!     rather than reused.
//! - without any deadline, the statement runs as on the pool.
//!
//! A server-side timeout comes back as the server's own error (MariaDB 1969,
//! MySQL 3024, or 1317 after a `KILL QUERY`), untouched, so that `?` puts
//! the [`sqlx::Error`] in the task's error chain, where the runtime finds
//! its number and records the failure as "deadline exceeded".
//!
//! A connection whose statement was abandoned mid-flight (its future dropped,
//! for example because the runtime stopped the attempt at the deadline plus
//! grace) is closed instead of going back to the pool.
//!
//! See `docs/deadlines.md` for the whole story.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use queue_core::{Deadline, DeadlineExceeded};
use sqlx::error::BoxDynError;
use sqlx::mysql::{
    MySql, MySqlArguments, MySqlConnection, MySqlPool, MySqlQueryResult, MySqlRow, MySqlStatement,
    MySqlTypeInfo,
};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Connection, Either, Execute, Executor, Row, SqlSafeStr, SqlStr};

use crate::client::Client;
use crate::flavor::Flavor;

/// How long a background `ROLLBACK` of a dropped transaction, or the
/// watchdog's `KILL QUERY`, may take before the connection is given up.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The user variable that keeps the session's `innodb_lock_wait_timeout`
/// while the MySQL watchdog path has lowered it.
const SAVED_LOCK_WAIT: &str = "@queue_runtime_saved_lock_wait";

type Item = Result<Either<MySqlQueryResult, MySqlRow>, sqlx::Error>;

/// A deadline-aware handle on the job database, as `ctx.db()` returns it.
///
/// It implements [`sqlx::Executor`] for MySQL like `&MySqlPool`, so
/// `sqlx::query("…").fetch_one(ctx.db())` works; each statement runs on a
/// connection of the client's pool:
///
/// - once the deadline has passed, it fails at once with
///   `sqlx::Error::Io` (kind `TimedOut`, text "deadline exceeded", with
///   [`DeadlineExceeded`] in its source chain): no connection is acquired
///   and nothing is sent;
/// - before the deadline, the server limits it to the time left, lock waits
///   included (MariaDB: `SET STATEMENT innodb_lock_wait_timeout=…,
///   max_statement_time=… FOR …`; MySQL 8: the `MAX_EXECUTION_TIME` hint on
///   a `SELECT`, and for other statements a lowered session
///   `innodb_lock_wait_timeout` plus a watchdog that sends `KILL QUERY` at
///   the deadline). The server's timeout error comes back untouched;
/// - a connection whose statement was abandoned mid-flight (its future
///   dropped) or killed by the watchdog is closed, not returned to the pool.
///
/// See `docs/deadlines.md`.
///
/// The deadline is the earlier of the one the handle was made with (the
/// attempt's) and [`Deadline::current`] at the time the statement is issued,
/// so a tighter [`Deadline::scope`] inside a task tightens its statements
/// too.
///
/// `fetch` and `fetch_many` collect the statement's results before yielding
/// the first one (the statement must be over to restore the connection), so
/// use `LIMIT` rather than a stream to read part of a large result.
///
/// Without any deadline, the handle behaves exactly like the pool.
#[derive(Clone, Copy, Debug)]
pub struct Db<'a> {
    pool: &'a MySqlPool,
    flavor: Flavor,
    deadline: Option<Deadline>,
}

impl<'a> Db<'a> {
    /// A handle on `client`'s pool limited by `deadline` (and by
    /// [`Deadline::current`] wherever a statement is issued). Inside a task,
    /// use `ctx.db()`; this is for code that keeps its own deadline.
    pub fn new(client: &'a Client, deadline: Option<Deadline>) -> Db<'a> {
        Db {
            pool: client.pool(),
            flavor: client.flavor(),
            deadline,
        }
    }

    /// The same handle taking `flavor`'s path whatever the server is. Lets
    /// the tests run MySQL's watchdog path on MariaDB. Not public API.
    #[doc(hidden)]
    pub fn __with_flavor(mut self, flavor: Flavor) -> Db<'a> {
        self.flavor = flavor;
        self
    }

    /// The deadline that limits a statement issued now: the earlier of the
    /// handle's and [`Deadline::current`]. `None` means no limit.
    pub fn deadline(&self) -> Option<Deadline> {
        effective(self.deadline)
    }

    /// Begins a transaction on one connection of the pool. Each statement in
    /// it is limited as a statement through [`Db`] is (lock waits included);
    /// see [`DbTransaction`].
    ///
    /// # Errors
    /// The deadline error if the deadline has passed (nothing is sent), or
    /// the pool's or server's error.
    pub async fn begin(self) -> Result<DbTransaction<'a>, sqlx::Error> {
        let deadline = self.deadline();
        let conn = acquire(self.pool, deadline).await?;
        let mut tx = DbTransaction {
            pool: self.pool,
            flavor: self.flavor,
            deadline: self.deadline,
            conn: Some(conn),
            open: false,
            in_flight: true,
            reusable: true,
        };
        let conn = tx.conn.as_deref_mut().expect("just set");
        bounded(deadline, conn.execute("BEGIN")).await??;
        tx.in_flight = false;
        tx.open = true;
        Ok(tx)
    }

    async fn run(self, deadline: Deadline, stmt: Stmt, want: Want) -> Result<Got, sqlx::Error> {
        let conn = acquire(self.pool, Some(deadline)).await?;
        let mut lease = Lease {
            conn: Some(conn),
            reusable: false,
        };
        let conn = lease.conn.as_deref_mut().expect("just set");
        let mut reusable = true;
        let got = run_on(
            conn,
            self.pool,
            self.flavor,
            Some(deadline),
            stmt,
            want,
            &mut reusable,
        )
        .await;
        lease.reusable = reusable;
        got
    }
}

impl<'c> Executor<'c> for Db<'c> {
    type Database = MySql;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Item>
    where
        'c: 'e,
        E: 'q + Execute<'q, MySql>,
    {
        let Some(deadline) = self.deadline() else {
            return self.pool.fetch_many(query);
        };
        let stmt = Stmt::take(query);
        materialize(async move { self.run(deadline, stmt?, Want::All).await })
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<MySqlRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, MySql>,
    {
        let Some(deadline) = self.deadline() else {
            return self.pool.fetch_optional(query);
        };
        let stmt = Stmt::take(query);
        async move { Ok(self.run(deadline, stmt?, Want::First).await?.into_first()) }.boxed()
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [MySqlTypeInfo],
    ) -> BoxFuture<'e, Result<MySqlStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        let deadline = self.deadline();
        async move {
            let conn = acquire(self.pool, deadline).await?;
            let mut lease = Lease {
                conn: Some(conn),
                reusable: false,
            };
            let conn = lease.conn.as_deref_mut().expect("just set");
            let statement = bounded(deadline, conn.prepare_with(sql, parameters)).await?;
            lease.reusable = true;
            statement
        }
        .boxed()
    }

    /// Required by sqlx's query macros (its `offline` feature, which
    /// queue-runtime turns on so that a host application using the macros
    /// builds): describes the statement on a pooled connection, without a
    /// limit.
    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<MySql>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.pool.describe(sql)
    }
}

/// A transaction begun by [`Db::begin`], with every statement limited by the
/// deadline like a statement through [`Db`].
///
/// Use `&mut tx` as the executor: `sqlx::query("…").execute(&mut tx)`. End
/// it with [`commit`](DbTransaction::commit) or
/// [`rollback`](DbTransaction::rollback).
///
/// What the deadline limits in a transaction:
///
/// - each statement on its own, with the time left when it is issued, lock
///   waits included; a statement issued after the deadline fails at once,
///   `COMMIT` too (the transaction is then rolled back);
/// - the transaction as a whole only through the attempt: the runtime stops
///   the attempt at the deadline plus a short grace, which drops the
///   transaction.
///
/// A transaction dropped while open is rolled back: in the background when
/// its connection is idle (the connection then goes back to the pool), or
/// by closing the connection when a statement was abandoned mid-flight or
/// the MySQL watchdog had to kill one (the server rolls back a transaction
/// whose connection closes).
pub struct DbTransaction<'a> {
    pool: &'a MySqlPool,
    flavor: Flavor,
    deadline: Option<Deadline>,
    conn: Option<PoolConnection<MySql>>,
    /// `BEGIN` done, neither `COMMIT` nor `ROLLBACK` yet.
    open: bool,
    /// A statement is being sent or awaited. Still set when a statement's
    /// future was dropped before it finished.
    in_flight: bool,
    /// Cleared for good when the connection must not go back to the pool.
    reusable: bool,
}

impl fmt::Debug for DbTransaction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbTransaction")
            .field("flavor", &self.flavor)
            .field("deadline", &self.deadline)
            .field("open", &self.open)
            .field("reusable", &(self.reusable && !self.in_flight))
            .finish_non_exhaustive()
    }
}

impl DbTransaction<'_> {
    /// The deadline that limits a statement issued now: the earlier of the
    /// transaction's (the attempt's) and [`Deadline::current`].
    pub fn deadline(&self) -> Option<Deadline> {
        effective(self.deadline)
    }

    /// Commits the transaction.
    ///
    /// # Errors
    /// The deadline error if the deadline has passed (the transaction is
    /// rolled back instead), or the server's error.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        if self.deadline().is_some_and(|d| d.is_exceeded()) {
            self.end("ROLLBACK").await?;
            return Err(deadline_exceeded());
        }
        self.end("COMMIT").await
    }

    /// Rolls the transaction back. Not limited by the deadline.
    ///
    /// # Errors
    /// The server's error; the connection is then closed, which rolls the
    /// transaction back on the server.
    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        self.end("ROLLBACK").await
    }

    async fn end(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        self.check_abandoned();
        let conn = self
            .conn
            .as_deref_mut()
            .expect("a live transaction has its connection");
        self.in_flight = true;
        let done = conn.execute(sql).await;
        self.in_flight = false;
        if done.is_err() {
            self.reusable = false;
        }
        self.open = false;
        done.map(|_| ())
    }

    fn check_abandoned(&mut self) {
        if self.in_flight {
            // The previous statement's future was dropped mid-flight.
            self.reusable = false;
            self.in_flight = false;
        }
    }

    async fn run(&mut self, stmt: Stmt, want: Want) -> Result<Got, sqlx::Error> {
        let deadline = self.deadline();
        if deadline.is_some_and(|d| d.is_exceeded()) {
            return Err(deadline_exceeded());
        }
        self.check_abandoned();
        let conn = self
            .conn
            .as_deref_mut()
            .expect("a live transaction has its connection");
        self.in_flight = true;
        let mut reusable = true;
        let got = run_on(
            conn,
            self.pool,
            self.flavor,
            deadline,
            stmt,
            want,
            &mut reusable,
        )
        .await;
        self.in_flight = false;
        self.reusable &= reusable;
        got
    }
}

impl Drop for DbTransaction<'_> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.in_flight || !self.reusable {
            // Closing the connection ends the transaction on the server.
            conn.close_on_drop();
            return;
        }
        if !self.open {
            return; // back to the pool
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let rolled_back =
                        tokio::time::timeout(CLEANUP_TIMEOUT, (&mut *conn).execute("ROLLBACK"))
                            .await
                            .is_ok_and(|r| r.is_ok());
                    if !rolled_back {
                        conn.close_on_drop();
                    }
                });
            }
            // No runtime to roll back on: drop the bare connection, whose
            // closed socket makes the server roll back.
            Err(_) => drop(conn.detach()),
        }
    }
}

impl<'t, 'c: 't> Executor<'t> for &'t mut DbTransaction<'c> {
    type Database = MySql;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Item>
    where
        't: 'e,
        E: 'q + Execute<'q, MySql>,
    {
        let stmt = Stmt::take(query);
        materialize(async move { self.run(stmt?, Want::All).await })
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<MySqlRow>, sqlx::Error>>
    where
        't: 'e,
        E: 'q + Execute<'q, MySql>,
    {
        let stmt = Stmt::take(query);
        async move { Ok(self.run(stmt?, Want::First).await?.into_first()) }.boxed()
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [MySqlTypeInfo],
    ) -> BoxFuture<'e, Result<MySqlStatement, sqlx::Error>>
    where
        't: 'e,
    {
        async move {
            let deadline = self.deadline();
            if deadline.is_some_and(|d| d.is_exceeded()) {
                return Err(deadline_exceeded());
            }
            self.check_abandoned();
            let conn = self
                .conn
                .as_deref_mut()
                .expect("a live transaction has its connection");
            self.in_flight = true;
            let statement = bounded(deadline, conn.prepare_with(sql, parameters)).await?;
            self.in_flight = false;
            statement
        }
        .boxed()
    }

    /// Required by sqlx's query macros: describes the statement on the
    /// transaction's connection.
    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<MySql>, sqlx::Error>>
    where
        't: 'e,
    {
        async move {
            self.check_abandoned();
            let conn = self
                .conn
                .as_deref_mut()
                .expect("a live transaction has its connection");
            conn.describe(sql).await
        }
        .boxed()
    }
}

/// The error of a statement refused because its deadline had passed:
/// `sqlx::Error::Io` of kind `TimedOut`, reading "deadline exceeded", with
/// [`DeadlineExceeded`] in its source chain (so that a `TaskError` made from
/// it has kind `Deadline`).
fn deadline_exceeded() -> sqlx::Error {
    sqlx::Error::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        NotSent(DeadlineExceeded),
    ))
}

/// Inside the `io::Error` of [`deadline_exceeded`]: `io::Error::source`
/// skips the error it wraps and returns that error's source, so the wrapped
/// error must have `DeadlineExceeded` as its source.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
struct NotSent(#[source] DeadlineExceeded);

/// The earlier of `own` and [`Deadline::current`].
fn effective(own: Option<Deadline>) -> Option<Deadline> {
    match (own, Deadline::current()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Runs `fut` unless `deadline` passes first. The outer error is the
/// deadline error, returned when `fut` was dropped unfinished (so whatever
/// it was doing on a connection was abandoned mid-flight); the inner result
/// is `fut`'s.
async fn bounded<T>(
    deadline: Option<Deadline>,
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<Result<T, sqlx::Error>, sqlx::Error> {
    match deadline {
        Some(d) => d
            .run(fut)
            .await
            .map_err(|DeadlineExceeded| deadline_exceeded()),
        None => Ok(fut.await),
    }
}

/// A connection of `pool`, unless `deadline` passes first (or has passed:
/// then nothing is asked of the pool).
async fn acquire(
    pool: &MySqlPool,
    deadline: Option<Deadline>,
) -> Result<PoolConnection<MySql>, sqlx::Error> {
    if deadline.is_some_and(|d| d.is_exceeded()) {
        return Err(deadline_exceeded());
    }
    bounded(deadline, pool.acquire()).await?
}

/// A pooled connection that is closed, not returned, unless `reusable` was
/// set after its statement finished.
struct Lease {
    conn: Option<PoolConnection<MySql>>,
    reusable: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take()
            && !self.reusable
        {
            // sqlx would test it with a ping on release, which first reads
            // (waits for) the rest of the abandoned statement; close instead.
            conn.close_on_drop();
        }
    }
}

/// A statement taken apart: its SQL, arguments and cache preference.
struct Stmt {
    sql: SqlStr,
    args: Option<MySqlArguments>,
    persistent: bool,
}

impl Stmt {
    fn take<'q, E: Execute<'q, MySql>>(mut query: E) -> Result<Stmt, sqlx::Error> {
        let args = query.take_arguments().map_err(sqlx::Error::Encode)?;
        let persistent = query.persistent();
        Ok(Stmt {
            sql: query.sql(),
            args,
            persistent,
        })
    }

    /// The statement as written.
    fn unchanged(self) -> Prepared {
        Prepared {
            sql: self.sql,
            args: self.args,
            persistent: self.persistent,
        }
    }

    /// The statement with its SQL replaced. The new text embeds a time, so
    /// it is not worth caching as a prepared statement.
    fn rewritten(self, sql: String) -> Prepared {
        Prepared {
            sql: AssertSqlSafe(sql).into_sql_str(),
            args: self.args,
            persistent: false,
        }
    }
}

/// What is executed on the connection.
struct Prepared {
    sql: SqlStr,
    args: Option<MySqlArguments>,
    persistent: bool,
}

impl Execute<'_, MySql> for Prepared {
    fn sql(self) -> SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&MySqlStatement> {
        None
    }

    fn take_arguments(&mut self) -> Result<Option<MySqlArguments>, BoxDynError> {
        Ok(self.args.take())
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
}

#[derive(Clone, Copy)]
enum Want {
    /// Every result (`fetch_many` and all that build on it).
    All,
    /// The first row (`fetch_optional`, `fetch_one`).
    First,
}

enum Got {
    All(Vec<Item>),
    First(Option<MySqlRow>),
}

impl Got {
    fn into_first(self) -> Option<MySqlRow> {
        match self {
            Got::First(row) => row,
            Got::All(items) => items.into_iter().find_map(|i| match i {
                Ok(Either::Right(row)) => Some(row),
                _ => None,
            }),
        }
    }

    fn into_items(self) -> Vec<Item> {
        match self {
            Got::All(items) => items,
            Got::First(row) => row.map(|r| Ok(Either::Right(r))).into_iter().collect(),
        }
    }
}

/// A stream of what `fut` collects.
fn materialize<'e>(
    fut: impl Future<Output = Result<Got, sqlx::Error>> + Send + 'e,
) -> BoxStream<'e, Item> {
    futures_util::stream::once(fut)
        .flat_map(|got| {
            let items = match got {
                Ok(got) => got.into_items(),
                Err(e) => vec![Err(e)],
            };
            futures_util::stream::iter(items)
        })
        .boxed()
}

/// Runs `q` on `conn`, collecting what `want` asks for.
async fn fetch(conn: &mut MySqlConnection, q: Prepared, want: Want) -> Result<Got, sqlx::Error> {
    match want {
        Want::First => (&mut *conn).fetch_optional(q).await.map(Got::First),
        Want::All => {
            let mut items = Vec::new();
            let mut results = (&mut *conn).fetch_many(q);
            while let Some(item) = results.next().await {
                let failed = item.is_err();
                items.push(item);
                if failed {
                    break;
                }
            }
            Ok(Got::All(items))
        }
    }
}

/// Runs one statement on `conn`, limited by `deadline` if there is one
/// (refused without sending anything if it has passed). Clears `reusable`
/// when the connection must not be used again.
async fn run_on(
    conn: &mut MySqlConnection,
    pool: &MySqlPool,
    flavor: Flavor,
    deadline: Option<Deadline>,
    stmt: Stmt,
    want: Want,
    reusable: &mut bool,
) -> Result<Got, sqlx::Error> {
    let Some(deadline) = deadline else {
        return fetch(conn, stmt.unchanged(), want).await;
    };
    let left = deadline.time_left();
    if left.is_zero() {
        return Err(deadline_exceeded());
    }
    match plan(flavor, stmt.sql.as_str(), left) {
        Plan::Limited(sql) => fetch(conn, stmt.rewritten(sql), want).await,
        Plan::Watched { setup, restore } => {
            let id = match watched_setup(conn, setup).await {
                Ok(id) => id,
                Err(e) => {
                    // Unknown how far the setup got: do not reuse.
                    *reusable = false;
                    return Err(e);
                }
            };
            let watchdog = Watchdog::arm(pool.clone(), id, deadline);
            let got = fetch(conn, stmt.unchanged(), want).await;
            if watchdog.disarm() {
                // A KILL QUERY is on its way to this connection, maybe
                // too late for the statement: never reuse it.
                *reusable = false;
                return got;
            }
            if let Err(e) = conn.execute(AssertSqlSafe(restore)).await {
                tracing::warn!(error = %e, "could not restore innodb_lock_wait_timeout; closing the connection");
                *reusable = false;
            }
            got
        }
    }
}

/// Sends the MySQL path's setup (lower the lock wait, read the connection
/// id) in one round trip; returns the connection id.
async fn watched_setup(conn: &mut MySqlConnection, setup: String) -> Result<u64, sqlx::Error> {
    let row = (&mut *conn)
        .fetch_optional(AssertSqlSafe(setup))
        .await?
        .ok_or_else(|| sqlx::Error::Protocol("no CONNECTION_ID() row".into()))?;
    row.try_get::<u64, _>(0)
}

/// How a statement is limited.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// The server limits the statement as rewritten.
    Limited(String),
    /// MySQL, a statement the hint does not cover: `setup` (a multi-statement
    /// text that lowers `innodb_lock_wait_timeout` and selects
    /// `CONNECTION_ID()`) before it, `restore` after it, and a watchdog.
    Watched { setup: String, restore: String },
}

/// How to limit `sql` on `flavor` to `left` (which is not zero).
fn plan(flavor: Flavor, sql: &str, left: Duration) -> Plan {
    let lock_wait = lock_wait_secs(left);
    let (limited, server_limits) = flavor.limit_statement(sql, left);
    match flavor {
        Flavor::MariaDb => {
            // limit_statement gives `SET STATEMENT max_statement_time=S FOR …`;
            // add the lock wait to the same SET STATEMENT. LEAST: never raise
            // the session's own value (InnoDB's default is 50 s).
            let sql = match limited.strip_prefix("SET STATEMENT ") {
                Some(rest) => format!(
                    "SET STATEMENT innodb_lock_wait_timeout=LEAST(@@innodb_lock_wait_timeout, {lock_wait}), {rest}"
                ),
                None => limited,
            };
            Plan::Limited(sql)
        }
        Flavor::MySql if server_limits => Plan::Limited(limited),
        Flavor::MySql => Plan::Watched {
            setup: format!(
                "SET {SAVED_LOCK_WAIT} = @@SESSION.innodb_lock_wait_timeout, \
                 SESSION innodb_lock_wait_timeout = LEAST(@@SESSION.innodb_lock_wait_timeout, {lock_wait}); \
                 SELECT CONNECTION_ID()"
            ),
            restore: format!("SET SESSION innodb_lock_wait_timeout = {SAVED_LOCK_WAIT}"),
        },
    }
}

/// The time left in whole seconds, rounded up, at least 1 (the least
/// `innodb_lock_wait_timeout` that means a wait at all).
fn lock_wait_secs(left: Duration) -> u64 {
    (left.as_secs() + u64::from(left.subsec_nanos() > 0)).clamp(1, 1_073_741_824)
}

const WATCHING: u8 = 0;
const DISARMED: u8 = 1;
const FIRED: u8 = 2;

/// Kills the statement on connection `id` at the deadline unless disarmed
/// first. It runs as its own task, so it still fires when the statement's
/// future is dropped mid-flight (the attempt stopped).
struct Watchdog {
    state: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    fn arm(pool: MySqlPool, id: u64, deadline: Deadline) -> Watchdog {
        let state = Arc::new(AtomicU8::new(WATCHING));
        let task = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                tokio::time::sleep_until(deadline.expires_at()).await;
                if state
                    .compare_exchange(WATCHING, FIRED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    tracing::info!(
                        connection_id = id,
                        "deadline passed while a statement ran: KILL QUERY"
                    );
                    match tokio::time::timeout(CLEANUP_TIMEOUT, kill_query(&pool, id)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(connection_id = id, error = %e, "KILL QUERY failed")
                        }
                        Err(_) => tracing::warn!(connection_id = id, "KILL QUERY timed out"),
                    }
                }
            }
        });
        Watchdog { state, task }
    }

    /// Stops watching; returns whether the watchdog fired (or is firing),
    /// in which case the connection must not be used again.
    fn disarm(self) -> bool {
        let fired = self
            .state
            .compare_exchange(WATCHING, DISARMED, Ordering::AcqRel, Ordering::Acquire)
            .is_err();
        if !fired {
            self.task.abort();
        }
        fired
    }
}

/// `KILL QUERY id` on an idle connection of the pool, or on a new one when
/// none is idle (the pool may be exhausted, by the very statement to kill).
async fn kill_query(pool: &MySqlPool, id: u64) -> Result<(), sqlx::Error> {
    let sql = AssertSqlSafe(format!("KILL QUERY {id}"));
    match pool.try_acquire() {
        Some(mut conn) => {
            (&mut *conn).execute(sql).await?;
        }
        None => {
            let mut conn = MySqlConnection::connect_with(&pool.connect_options()).await?;
            (&mut conn).execute(sql).await?;
            conn.close().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use queue_core::{TaskError, TaskErrorKind};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn mariadb_limits_statement_and_lock_wait() {
        let got = plan(Flavor::MariaDb, "SELECT SLEEP(5)", 400 * MS);
        assert_eq!(
            got,
            Plan::Limited(
                "SET STATEMENT innodb_lock_wait_timeout=LEAST(@@innodb_lock_wait_timeout, 1), \
                 max_statement_time=0.400000 FOR SELECT SLEEP(5)"
                    .into()
            )
        );
        let got = plan(
            Flavor::MariaDb,
            "UPDATE t SET a = ? WHERE id = ?",
            2500 * MS,
        );
        assert_eq!(
            got,
            Plan::Limited(
                "SET STATEMENT innodb_lock_wait_timeout=LEAST(@@innodb_lock_wait_timeout, 3), \
                 max_statement_time=2.500000 FOR UPDATE t SET a = ? WHERE id = ?"
                    .into()
            )
        );
    }

    #[test]
    fn mysql_hints_selects() {
        let got = plan(Flavor::MySql, "  select id FROM t WHERE a = ?", 1500 * MS);
        assert_eq!(
            got,
            Plan::Limited("SELECT /*+ MAX_EXECUTION_TIME(1500) */ id FROM t WHERE a = ?".into())
        );
    }

    #[test]
    fn mysql_watches_writes() {
        let got = plan(Flavor::MySql, "UPDATE t SET a = 1", 1200 * MS);
        assert_eq!(
            got,
            Plan::Watched {
                setup: "SET @queue_runtime_saved_lock_wait = @@SESSION.innodb_lock_wait_timeout, \
                        SESSION innodb_lock_wait_timeout = LEAST(@@SESSION.innodb_lock_wait_timeout, 2); \
                        SELECT CONNECTION_ID()"
                    .into(),
                restore: "SET SESSION innodb_lock_wait_timeout = @queue_runtime_saved_lock_wait".into(),
            }
        );
        // A CTE does not start with SELECT: the hint cannot be placed, so the
        // watchdog covers it.
        assert!(matches!(
            plan(
                Flavor::MySql,
                "WITH x AS (SELECT 1) SELECT * FROM x",
                1200 * MS
            ),
            Plan::Watched { .. }
        ));
    }

    #[test]
    fn lock_wait_rounds_up_to_whole_seconds() {
        assert_eq!(lock_wait_secs(Duration::from_micros(1)), 1);
        assert_eq!(lock_wait_secs(1000 * MS), 1);
        assert_eq!(lock_wait_secs(1001 * MS), 2);
        assert_eq!(lock_wait_secs(Duration::from_secs(120)), 120);
    }

    #[test]
    fn refusal_is_a_deadline_error() {
        let e = deadline_exceeded();
        assert!(matches!(&e, sqlx::Error::Io(io) if io.kind() == io::ErrorKind::TimedOut));
        assert!(e.to_string().ends_with("deadline exceeded"), "{e}");
        let te = TaskError::from(e);
        assert_eq!(te.kind(), TaskErrorKind::Deadline);
        assert!(te.find::<DeadlineExceeded>().is_some());
        assert!(te.find::<sqlx::Error>().is_some());
        assert!(te.to_string().starts_with("deadline exceeded"), "{te}");
    }

    #[tokio::test(start_paused = true)]
    async fn effective_deadline_is_the_earlier() {
        let near = Deadline::after(Duration::from_secs(1));
        let far = Deadline::after(Duration::from_secs(10));
        assert_eq!(effective(None), None);
        assert_eq!(effective(Some(far)), Some(far));
        Deadline::scope(Some(near), async {
            assert_eq!(effective(Some(far)), Some(near));
            assert_eq!(effective(None), Some(near));
        })
        .await;
        Deadline::scope(Some(far), async {
            assert_eq!(effective(Some(near)), Some(near));
        })
        .await;
    }
}
