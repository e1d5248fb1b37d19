//! Deadline-aware database access for task handlers: [`Db`] (what
//! `ctx.db()` returns) and [`DbTransaction`] (what `ctx.db().begin()`
//! returns).
//!
//! Both implement [`sqlx::Executor`] for MySQL, so the usual
//! `sqlx::query("…").fetch_one(ctx.db())` works. For every statement:
//!
//! - once the deadline has passed, the statement fails at once with an
//!   error whose source chain holds
//!   [`DeadlineExceeded`](queue_core::DeadlineExceeded) (its text reads
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
//!
//! The files: `executor` (the one `sqlx::Executor` core of both handles),
//! `statement` (a statement taken apart and rewritten), `deadline` (the
//! effective deadline, the refusal error, bounded waits), `watchdog`
//! (MySQL's `KILL QUERY`); the SQL that differs by server comes from
//! [`Flavor`]. `Db::new`, which takes a [`Client`](crate::Client), is in
//! `context.rs`, beside `ctx.db()`, so that this module does not depend on
//! the client.

mod deadline;
mod executor;
mod statement;
mod watchdog;

use std::fmt;

use futures_util::FutureExt;
use queue_core::Deadline;
use sqlx::mysql::{MySql, MySqlConnection, MySqlPool, MySqlStatement, MySqlTypeInfo};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Describe, Executor, SqlStr};

use self::deadline::{
    CLEANUP_TIMEOUT, acquire, bounded, deadline_exceeded, effective, refuse_if_passed,
};
use self::executor::{
    Collect, Collected, ConnectionGuard, Limits, Session, SqlFuture, executor_through_session,
};
use self::statement::Statement;
use crate::flavor::Flavor;
use crate::store::galera::{GUARDED_BEGIN, GUARDED_COMMIT, GUARDED_ROLLBACK};

/// A deadline-aware handle on the job database, as `ctx.db()` returns it.
///
/// It implements [`sqlx::Executor`] for MySQL like `&MySqlPool`, so
/// `sqlx::query("…").fetch_one(ctx.db())` works; each statement runs on a
/// connection of the client's pool:
///
/// - once the deadline has passed, it fails at once with
///   `sqlx::Error::Io` (kind `TimedOut`, text "deadline exceeded", with
///   [`DeadlineExceeded`](queue_core::DeadlineExceeded) in its source
///   chain): no connection is acquired and nothing is sent;
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
    /// The server is a Galera node: [`Db::begin`]'s transactions are
    /// guarded (see [`DbTransaction`]).
    galera: bool,
    deadline: Option<Deadline>,
    /// Set by `queue_runtime::testing::perform`: every statement runs in
    /// this one transaction (and `begin` makes a savepoint in it), so the
    /// test can look at the handler's writes and roll them back.
    pinned: Option<&'a Pinned>,
}

/// A transaction shared by a test and the handler it performs.
pub(crate) type Pinned = std::sync::Arc<tokio::sync::Mutex<sqlx::Transaction<'static, MySql>>>;

/// The savepoint `Db::begin` makes inside a pinned transaction.
const SAVEPOINT: &str = "queue_runtime_test";

impl<'a> Db<'a> {
    /// A handle on `pool`, whose server is `flavor` (a Galera node if
    /// `galera`), limited by `deadline`. [`Db::new`] makes one from a client.
    pub(crate) fn on_pool(
        pool: &'a MySqlPool,
        flavor: Flavor,
        galera: bool,
        deadline: Option<Deadline>,
    ) -> Db<'a> {
        Db {
            pool,
            flavor,
            galera,
            deadline,
            pinned: None,
        }
    }

    /// The same handle running every statement in `pinned`.
    pub(crate) fn pinned_to(mut self, pinned: Option<&'a Pinned>) -> Db<'a> {
        self.pinned = pinned;
        self
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

    fn limits(&self, deadline: Option<Deadline>) -> Limits<'a> {
        Limits {
            pool: self.pool,
            flavor: self.flavor,
            deadline,
        }
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
        let conn = match self.pinned {
            Some(pinned) => {
                refuse_if_passed(deadline)?;
                TxConn::Pinned(pinned.clone().lock_owned().await)
            }
            None => TxConn::Pooled(acquire(self.pool, deadline).await?),
        };
        let begin = begin_sql(matches!(conn, TxConn::Pinned(_)), self.galera);
        let mut tx = DbTransaction {
            db: self,
            conn: Some(conn),
            open: false,
            in_flight: true,
            reusable: true,
        };
        let conn = tx.live_connection();
        // Text (several statements on Galera).
        bounded(deadline, sqlx::raw_sql(AssertSqlSafe(begin)).execute(conn)).await??;
        tx.in_flight = false;
        tx.open = true;
        Ok(tx)
    }
}

/// The connection of a [`DbTransaction`]: its own from the pool, or the
/// pinned transaction of a performed test (the transaction is then a
/// savepoint in it).
enum TxConn {
    Pooled(PoolConnection<MySql>),
    Pinned(tokio::sync::OwnedMutexGuard<sqlx::Transaction<'static, MySql>>),
}

impl TxConn {
    fn conn(&mut self) -> &mut MySqlConnection {
        match self {
            TxConn::Pooled(c) => c,
            TxConn::Pinned(t) => t,
        }
    }

    /// The statement that ends the transaction with `end` (`COMMIT` or
    /// `ROLLBACK`), on a Galera node (`galera`) if so.
    fn end_sql(&self, end: &'static str, galera: bool) -> String {
        end_sql(matches!(self, TxConn::Pinned(_)), end, galera)
    }
}

/// The statements that begin a [`DbTransaction`]: `BEGIN`; a savepoint in
/// a `pinned` test transaction; the guarded begin on a Galera node
/// (`store::galera`).
fn begin_sql(pinned: bool, galera: bool) -> String {
    match (pinned, galera) {
        (true, _) => format!("SAVEPOINT {SAVEPOINT}"),
        (false, true) => GUARDED_BEGIN.to_owned(),
        (false, false) => "BEGIN".to_owned(),
    }
}

/// The statements that end a [`DbTransaction`] with `end` (`COMMIT` or
/// `ROLLBACK`), as [`begin_sql`] began it.
fn end_sql(pinned: bool, end: &'static str, galera: bool) -> String {
    match (pinned, end) {
        (true, "COMMIT") => format!("RELEASE SAVEPOINT {SAVEPOINT}"),
        (true, _) => format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"),
        (false, "COMMIT") if galera => GUARDED_COMMIT.to_owned(),
        (false, _) if galera => GUARDED_ROLLBACK.to_owned(),
        (false, _) => end.to_owned(),
    }
}

impl<'e, 'c: 'e> Session<'e> for Db<'c> {
    fn unlimited(&self) -> Option<&'e MySqlPool> {
        (self.pinned.is_none() && self.deadline().is_none()).then_some(self.pool)
    }

    fn run(self, stmt: Statement, collect: Collect) -> SqlFuture<'e, Collected> {
        let deadline = self.deadline();
        if let Some(pinned) = self.pinned {
            return async move {
                refuse_if_passed(deadline)?;
                let mut tx = pinned.lock().await;
                let mut reusable = true;
                self.limits(deadline)
                    .run_on(&mut tx, stmt, collect, &mut reusable)
                    .await
            }
            .boxed();
        }
        async move {
            let mut guard = ConnectionGuard::new(acquire(self.pool, deadline).await?);
            let limits = self.limits(deadline);
            let mut reusable = true;
            let collected = limits
                .run_on(guard.conn(), stmt, collect, &mut reusable)
                .await;
            guard.reusable = reusable;
            collected
        }
        .boxed()
    }

    fn prepare(self, sql: SqlStr, types: &'e [MySqlTypeInfo]) -> SqlFuture<'e, MySqlStatement> {
        let deadline = self.deadline();
        if let Some(pinned) = self.pinned {
            return async move {
                refuse_if_passed(deadline)?;
                let mut tx = pinned.lock().await;
                bounded(deadline, tx.prepare_with(sql, types)).await?
            }
            .boxed();
        }
        async move {
            let mut guard = ConnectionGuard::new(acquire(self.pool, deadline).await?);
            let statement = bounded(deadline, guard.conn().prepare_with(sql, types)).await?;
            guard.reusable = true;
            statement
        }
        .boxed()
    }

    /// On a pooled connection.
    fn describe(self, sql: SqlStr) -> SqlFuture<'e, Describe<MySql>> {
        self.pool.describe(sql)
    }
}

impl<'c> Executor<'c> for Db<'c> {
    executor_through_session!('c);
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
    /// The handle it was begun on: the pool, flavour and deadline.
    db: Db<'a>,
    conn: Option<TxConn>,
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
            .field("flavor", &self.db.flavor)
            .field("deadline", &self.db.deadline)
            .field("open", &self.open)
            .field("reusable", &(self.reusable && !self.in_flight))
            .finish_non_exhaustive()
    }
}

impl DbTransaction<'_> {
    /// The deadline that limits a statement issued now: the earlier of the
    /// transaction's (the attempt's) and [`Deadline::current`].
    pub fn deadline(&self) -> Option<Deadline> {
        self.db.deadline()
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

    async fn end(&mut self, end: &'static str) -> Result<(), sqlx::Error> {
        let galera = self.db.galera;
        let sql = self
            .conn
            .as_ref()
            .map_or_else(|| end.to_owned(), |c| c.end_sql(end, galera));
        let done = sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(self.start_statement())
            .await;
        self.in_flight = false;
        if done.is_err() {
            // On Galera a failed guarded commit (1213: the transaction was
            // aborted) leaves what ran after the abort open, and
            // `autocommit` off: rolled back here, or the connection closed.
            let pooled = matches!(self.conn, Some(TxConn::Pooled(_)));
            let restored = galera
                && pooled
                && sqlx::raw_sql(GUARDED_ROLLBACK)
                    .execute(self.live_connection())
                    .await
                    .is_ok();
            if !restored {
                self.reusable = false;
            }
        }
        self.open = false;
        done.map(|_| ())
    }

    /// The connection, marked busy with a statement until the caller clears
    /// `in_flight`.
    fn start_statement(&mut self) -> &mut MySqlConnection {
        self.check_abandoned();
        self.in_flight = true;
        self.live_connection()
    }

    fn live_connection(&mut self) -> &mut MySqlConnection {
        self.conn
            .as_mut()
            .expect("a live transaction has its connection")
            .conn()
    }

    fn check_abandoned(&mut self) {
        if self.in_flight {
            // The previous statement's future was dropped mid-flight.
            self.reusable = false;
            self.in_flight = false;
        }
    }
}

impl<'e, 't: 'e, 'c: 't> Session<'e> for &'t mut DbTransaction<'c> {
    fn run(self, stmt: Statement, collect: Collect) -> SqlFuture<'e, Collected> {
        async move {
            let deadline = self.deadline();
            refuse_if_passed(deadline)?;
            let limits = self.db.limits(deadline);
            let mut reusable = true;
            let conn = self.start_statement();
            let collected = limits.run_on(conn, stmt, collect, &mut reusable).await;
            self.in_flight = false;
            self.reusable &= reusable;
            collected
        }
        .boxed()
    }

    fn prepare(self, sql: SqlStr, types: &'e [MySqlTypeInfo]) -> SqlFuture<'e, MySqlStatement> {
        async move {
            let deadline = self.deadline();
            refuse_if_passed(deadline)?;
            let prepared = self.start_statement().prepare_with(sql, types);
            let statement = bounded(deadline, prepared).await?;
            self.in_flight = false;
            statement
        }
        .boxed()
    }

    /// On the transaction's connection.
    fn describe(self, sql: SqlStr) -> SqlFuture<'e, Describe<MySql>> {
        async move {
            self.check_abandoned();
            self.live_connection().describe(sql).await
        }
        .boxed()
    }
}

impl<'t, 'c: 't> Executor<'t> for &'t mut DbTransaction<'c> {
    executor_through_session!('t);
}

impl Drop for DbTransaction<'_> {
    fn drop(&mut self) {
        let mut conn = match self.conn.take() {
            None => return,
            Some(TxConn::Pooled(conn)) => conn,
            Some(TxConn::Pinned(mut tx)) => {
                // A savepoint in a test's transaction: roll back to it; the
                // test's transaction itself is rolled back when it ends.
                if self.open
                    && !self.in_flight
                    && let Ok(rt) = tokio::runtime::Handle::try_current()
                {
                    let sql = format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}");
                    rt.spawn(async move {
                        let _ = tokio::time::timeout(
                            CLEANUP_TIMEOUT,
                            (&mut **tx).execute(AssertSqlSafe(sql)),
                        )
                        .await;
                    });
                }
                return;
            }
        };
        if self.in_flight || !self.reusable {
            // Closing the connection ends the transaction on the server.
            conn.close_on_drop();
            return;
        }
        if !self.open {
            return; // back to the pool
        }
        let rollback = if self.db.galera {
            GUARDED_ROLLBACK
        } else {
            "ROLLBACK"
        };
        roll_back_in_background(conn, rollback);
    }
}

/// Rolls back the transaction left open on `conn` by `rollback`'s
/// statements, in the background, before the connection goes back to the
/// pool (as sqlx does for its own transactions); closes it if that fails
/// or takes longer than [`CLEANUP_TIMEOUT`]. With no runtime to roll back
/// on, the bare connection is dropped: its closed socket makes the server
/// roll back.
pub(crate) fn roll_back_in_background(mut conn: PoolConnection<MySql>, rollback: &'static str) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                let rolled_back = tokio::time::timeout(
                    CLEANUP_TIMEOUT,
                    sqlx::raw_sql(rollback).execute(&mut *conn),
                )
                .await
                .is_ok_and(|r| r.is_ok());
                if !rolled_back {
                    conn.close_on_drop();
                }
            });
        }
        Err(_) => drop(conn.detach()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_are_plain_off_galera_and_guarded_on_it() {
        assert_eq!(begin_sql(false, false), "BEGIN");
        assert_eq!(end_sql(false, "COMMIT", false), "COMMIT");
        assert_eq!(end_sql(false, "ROLLBACK", false), "ROLLBACK");
        assert_eq!(begin_sql(true, false), "SAVEPOINT queue_runtime_test");
        assert_eq!(
            end_sql(true, "COMMIT", true),
            "RELEASE SAVEPOINT queue_runtime_test"
        );
        assert_eq!(
            end_sql(true, "ROLLBACK", false),
            "ROLLBACK TO SAVEPOINT queue_runtime_test"
        );
        assert_eq!(begin_sql(false, true), GUARDED_BEGIN);
        assert!(GUARDED_BEGIN.contains("SET autocommit = 0; START TRANSACTION; INSERT INTO"));
        assert_eq!(end_sql(false, "COMMIT", true), GUARDED_COMMIT);
        assert_eq!(end_sql(false, "ROLLBACK", true), GUARDED_ROLLBACK);
    }
}
