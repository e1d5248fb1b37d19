//! MariaDB versus MySQL: every place where their SQL differs, and nowhere
//! else. The rest of the crate asks a [`Flavor`] for the text it needs.
//!
//! MySQL 8 is not available to the tests: the unit tests below, which pin
//! the SQL produced for both flavours, are how its paths are checked.

use std::time::Duration;

/// Which server the pool talks to, detected once per pool from `VERSION()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// MariaDB: `SET STATEMENT max_statement_time=<seconds> FOR <statement>`
    /// limits any statement, reads and writes alike.
    MariaDb,
    /// MySQL 8: the `MAX_EXECUTION_TIME(<ms>)` optimizer hint limits
    /// read-only SELECTs only; other statements need a watchdog.
    MySql,
}

/// The user variable that keeps the session's `innodb_lock_wait_timeout`
/// while the MySQL watchdog path has lowered it.
const SAVED_LOCK_WAIT: &str = "@queue_runtime_saved_lock_wait";

/// How a statement run under a deadline is limited on the server, from
/// [`Flavor::deadline_plan`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DeadlinePlan {
    /// The server limits the statement as rewritten: run this text instead.
    Rewritten(String),
    /// MySQL, a statement the hint does not cover: run `setup` before it,
    /// `restore` after it, and a watchdog that kills it at the deadline.
    Watched(WatchedSession),
}

/// The session statements around a statement that a watchdog covers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct WatchedSession {
    /// Two statements in one round trip: lower the session's
    /// `innodb_lock_wait_timeout` to the time left (saving its value), then
    /// `SELECT CONNECTION_ID()`, the id the watchdog kills.
    pub(crate) setup: String,
    /// Puts the saved `innodb_lock_wait_timeout` back.
    pub(crate) restore: String,
}

impl Flavor {
    /// Detects the flavour from the text of `SELECT VERSION()`.
    pub fn from_version(version: &str) -> Flavor {
        if version.to_ascii_lowercase().contains("mariadb") {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        }
    }

    /// `sql` with a server-side time limit of `limit`, where this flavour
    /// can express one for this statement. Returns the statement and whether
    /// the server limits it.
    ///
    /// - MariaDB: `SET STATEMENT max_statement_time=S FOR <sql>` (seconds,
    ///   fractional; any statement).
    /// - MySQL: `SELECT /*+ MAX_EXECUTION_TIME(ms) */ …` for a statement that
    ///   starts with `SELECT`; other statements are returned unchanged and
    ///   `false` (the caller must bound them another way).
    pub fn limit_statement(self, sql: &str, limit: Duration) -> (String, bool) {
        match self {
            Flavor::MariaDb => (
                format!(
                    "SET STATEMENT max_statement_time={} FOR {sql}",
                    max_statement_time(limit)
                ),
                true,
            ),
            Flavor::MySql => match with_execution_time_hint(sql, limit) {
                Some(hinted) => (hinted, true),
                None => (sql.to_owned(), false),
            },
        }
    }

    /// How to limit `sql`, issued with `left` (not zero) before its
    /// deadline, to the time left, lock waits included:
    ///
    /// - MariaDB: `SET STATEMENT innodb_lock_wait_timeout=LEAST(…),
    ///   max_statement_time=S FOR <sql>` (`LEAST`: never raise the session's
    ///   own lock wait, InnoDB's default is 50 s);
    /// - MySQL, a `SELECT`: the `MAX_EXECUTION_TIME` hint;
    /// - MySQL, any other statement: a lowered session lock wait and a
    ///   watchdog ([`DeadlinePlan::Watched`]).
    pub(crate) fn deadline_plan(self, sql: &str, left: Duration) -> DeadlinePlan {
        let lock_wait = lock_wait_secs(left);
        match self {
            Flavor::MariaDb => DeadlinePlan::Rewritten(format!(
                "SET STATEMENT innodb_lock_wait_timeout=LEAST(@@innodb_lock_wait_timeout, {lock_wait}), \
                 max_statement_time={} FOR {sql}",
                max_statement_time(left)
            )),
            Flavor::MySql => match with_execution_time_hint(sql, left) {
                Some(hinted) => DeadlinePlan::Rewritten(hinted),
                None => DeadlinePlan::Watched(WatchedSession {
                    setup: format!(
                        "SET {SAVED_LOCK_WAIT} = @@SESSION.innodb_lock_wait_timeout, \
                         SESSION innodb_lock_wait_timeout = LEAST(@@SESSION.innodb_lock_wait_timeout, {lock_wait}); \
                         SELECT CONNECTION_ID()"
                    ),
                    restore: format!("SET SESSION innodb_lock_wait_timeout = {SAVED_LOCK_WAIT}"),
                }),
            },
        }
    }

    /// The server error numbers that mean "the statement hit its time limit".
    pub fn is_timeout_error(self, number: u16) -> bool {
        match self {
            // ER_STATEMENT_TIMEOUT
            Flavor::MariaDb => number == 1969,
            // ER_QUERY_TIMEOUT (3024) and "query execution was interrupted" (1317)
            Flavor::MySql => number == 3024 || number == 1317,
        }
    }
}

/// MariaDB's `max_statement_time` for `limit`: seconds with microsecond
/// resolution, at least 1 ms (0 would mean "no limit").
fn max_statement_time(limit: Duration) -> String {
    let micros = limit.as_micros().clamp(1000, 31_536_000_000_000);
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// MySQL: `sql` with the `MAX_EXECUTION_TIME(ms)` hint, if it starts with
/// `SELECT` (the only statement the hint limits); `None` otherwise.
fn with_execution_time_hint(sql: &str, limit: Duration) -> Option<String> {
    let trimmed = sql.trim_start();
    if trimmed.len() >= 6 && trimmed[..6].eq_ignore_ascii_case("select") {
        let ms = limit.as_millis().clamp(1, u128::from(u32::MAX));
        Some(format!(
            "SELECT /*+ MAX_EXECUTION_TIME({ms}) */{}",
            &trimmed[6..]
        ))
    } else {
        None
    }
}

/// The time left in whole seconds, rounded up, at least 1 (the least
/// `innodb_lock_wait_timeout` that means a wait at all).
fn lock_wait_secs(left: Duration) -> u64 {
    (left.as_secs() + u64::from(left.subsec_nanos() > 0)).clamp(1, 1_073_741_824)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn mariadb_limits_any_statement() {
        let (sql, limited) = Flavor::MariaDb.limit_statement("UPDATE t SET a = 1", 1500 * MS);
        assert_eq!(
            sql,
            "SET STATEMENT max_statement_time=1.500000 FOR UPDATE t SET a = 1"
        );
        assert!(limited);
        let (sql, _) = Flavor::MariaDb.limit_statement("SELECT 1", Duration::ZERO);
        assert_eq!(
            sql,
            "SET STATEMENT max_statement_time=0.001000 FOR SELECT 1"
        );
    }

    #[test]
    fn mysql_hints_selects_only() {
        let (sql, limited) = Flavor::MySql.limit_statement("select a from t", 250 * MS);
        assert_eq!(sql, "SELECT /*+ MAX_EXECUTION_TIME(250) */ a from t");
        assert!(limited);
        let (sql, limited) = Flavor::MySql.limit_statement("DELETE FROM t", 250 * MS);
        assert_eq!(sql, "DELETE FROM t");
        assert!(!limited);
    }

    #[test]
    fn mariadb_deadline_limits_statement_and_lock_wait() {
        assert_eq!(
            Flavor::MariaDb.deadline_plan("SELECT SLEEP(5)", 400 * MS),
            DeadlinePlan::Rewritten(
                "SET STATEMENT innodb_lock_wait_timeout=LEAST(@@innodb_lock_wait_timeout, 1), \
                 max_statement_time=0.400000 FOR SELECT SLEEP(5)"
                    .into()
            )
        );
        assert_eq!(
            Flavor::MariaDb.deadline_plan("UPDATE t SET a = ? WHERE id = ?", 2500 * MS),
            DeadlinePlan::Rewritten(
                "SET STATEMENT innodb_lock_wait_timeout=LEAST(@@innodb_lock_wait_timeout, 3), \
                 max_statement_time=2.500000 FOR UPDATE t SET a = ? WHERE id = ?"
                    .into()
            )
        );
        // A CTE is limited like any statement on MariaDB.
        assert!(matches!(
            Flavor::MariaDb.deadline_plan("WITH x AS (SELECT 1) SELECT * FROM x", 1200 * MS),
            DeadlinePlan::Rewritten(sql) if sql.ends_with("FOR WITH x AS (SELECT 1) SELECT * FROM x")
        ));
    }

    #[test]
    fn mysql_deadline_hints_selects() {
        assert_eq!(
            Flavor::MySql.deadline_plan("  select id FROM t WHERE a = ?", 1500 * MS),
            DeadlinePlan::Rewritten(
                "SELECT /*+ MAX_EXECUTION_TIME(1500) */ id FROM t WHERE a = ?".into()
            )
        );
        // Under a millisecond left: the hint still limits (0 would not).
        assert_eq!(
            Flavor::MySql.deadline_plan("SELECT 1", Duration::from_micros(10)),
            DeadlinePlan::Rewritten("SELECT /*+ MAX_EXECUTION_TIME(1) */ 1".into())
        );
    }

    #[test]
    fn mysql_deadline_watches_other_statements() {
        assert_eq!(
            Flavor::MySql.deadline_plan("UPDATE t SET a = 1", 1200 * MS),
            DeadlinePlan::Watched(WatchedSession {
                setup: "SET @queue_runtime_saved_lock_wait = @@SESSION.innodb_lock_wait_timeout, \
                        SESSION innodb_lock_wait_timeout = LEAST(@@SESSION.innodb_lock_wait_timeout, 2); \
                        SELECT CONNECTION_ID()"
                    .into(),
                restore: "SET SESSION innodb_lock_wait_timeout = @queue_runtime_saved_lock_wait"
                    .into(),
            })
        );
        // A CTE does not start with SELECT: the hint cannot be placed, so the
        // watchdog covers it.
        assert!(matches!(
            Flavor::MySql.deadline_plan("WITH x AS (SELECT 1) SELECT * FROM x", 1200 * MS),
            DeadlinePlan::Watched(_)
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
    fn timeout_errors_by_flavour() {
        assert!(Flavor::MariaDb.is_timeout_error(1969));
        assert!(!Flavor::MariaDb.is_timeout_error(3024));
        assert!(Flavor::MySql.is_timeout_error(3024));
        assert!(Flavor::MySql.is_timeout_error(1317));
        assert!(!Flavor::MySql.is_timeout_error(1969));
    }

    #[test]
    fn detects_flavour() {
        assert_eq!(
            Flavor::from_version("10.11.19-MariaDB-0+deb12u1"),
            Flavor::MariaDb
        );
        assert_eq!(Flavor::from_version("8.0.36"), Flavor::MySql);
    }
}
