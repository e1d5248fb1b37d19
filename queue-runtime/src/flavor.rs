//! MariaDB versus MySQL: the few places where their SQL differs.

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
            Flavor::MariaDb => {
                // max_statement_time has microsecond resolution; 0 means "no
                // limit", so never send 0.
                let micros = limit.as_micros().clamp(1000, 31_536_000_000_000);
                let secs = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
                (
                    format!("SET STATEMENT max_statement_time={secs} FOR {sql}"),
                    true,
                )
            }
            Flavor::MySql => {
                let trimmed = sql.trim_start();
                if trimmed.len() >= 6 && trimmed[..6].eq_ignore_ascii_case("select") {
                    let ms = limit.as_millis().clamp(1, u128::from(u32::MAX));
                    (
                        format!("SELECT /*+ MAX_EXECUTION_TIME({ms}) */{}", &trimmed[6..]),
                        true,
                    )
                } else {
                    (sql.to_owned(), false)
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_limits_any_statement() {
        let (sql, limited) =
            Flavor::MariaDb.limit_statement("UPDATE t SET a = 1", Duration::from_millis(1500));
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
        let (sql, limited) =
            Flavor::MySql.limit_statement("select a from t", Duration::from_millis(250));
        assert_eq!(sql, "SELECT /*+ MAX_EXECUTION_TIME(250) */ a from t");
        assert!(limited);
        let (sql, limited) =
            Flavor::MySql.limit_statement("DELETE FROM t", Duration::from_millis(250));
        assert_eq!(sql, "DELETE FROM t");
        assert!(!limited);
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
