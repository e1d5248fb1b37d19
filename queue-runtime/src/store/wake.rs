//! The statements of wake-ups across processes: the sleeper registry
//! (`queue_sleepers`), the parked statement of an idle runtime, and the
//! `KILL QUERY` that ends it.
//!
//! Protocol (docs/architecture.md, "Wake-ups across processes"):
//! - the sleeper registers (autocommit) and then, in the same round trip,
//!   runs one statement that sleeps only if its queues have nothing
//!   claimable: `SELECT IF(EXISTS(…) OR …, 2, SLEEP(n))` — 2: found work,
//!   0: slept its time, 1: its sleep was ended by a `KILL QUERY`;
//! - an enqueuer reads the registry after its `COMMIT` (same round trip, see
//!   `coalesced.rs`) and kills the sleepers of its queues.
//!
//! A kill that arrives while the sleeper's connection runs nothing is lost
//! (the server resets the flag at the next statement), but the enqueuer sent
//! it after its commit, so the sleeper's next statement starts after that
//! commit and its `EXISTS` sees the job. An enqueuer that read the registry
//! before the sleeper registered committed before the registration too, and
//! the same `EXISTS` sees its job.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::{LEVELS, Store, sql_time};
use crate::error::Result;

/// A registered sleeper, as an enqueuer reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sleeper {
    /// The server's id of its parked connection.
    pub(crate) conn_id: u64,
    /// Its registration (changes at each).
    pub(crate) generation: u64,
    /// It runs as the same database user as the reader.
    pub(crate) same_user: bool,
}

impl Sleeper {
    pub(crate) fn from_row(r: &sqlx::mysql::MySqlRow) -> Result<Sleeper> {
        Ok(Sleeper {
            conn_id: r.try_get(0)?,
            generation: r.try_get(1)?,
            same_user: r.try_get::<i64, _>(2)? != 0,
        })
    }
}

/// The registry's rows of `queues` (validated names) live at `now`.
pub(crate) fn sleepers_sql(queues: &[&str], now: DateTime<Utc>) -> String {
    let list = queues
        .iter()
        .map(|q| {
            debug_assert!(queue_core::validate_queue_name(q).is_ok());
            format!("'{q}'")
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT conn_id, gen, CAST(db_user = CURRENT_USER() AS SIGNED) FROM queue_sleepers \
         WHERE queue IN ({list}) AND expires_at > '{}'",
        sql_time(now)
    )
}

/// What a parked statement ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parked {
    /// Its queues had something claimable: it did not sleep.
    Found,
    /// It slept its time.
    Slept,
    /// Its sleep was ended by a `KILL QUERY`.
    Woken,
}

/// Where an idle runtime's claim cursors stand: a queue (validated) and the
/// last `seq` it claimed per priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Look {
    pub(crate) queue: String,
    pub(crate) last: [u64; LEVELS],
}

/// `EXISTS` over the ranges after `look`'s cursors (as the idle look of
/// `claim.rs`, without stragglers: a runtime with stragglers is not idle).
fn exists_sql(look: &Look) -> String {
    debug_assert!(queue_core::validate_queue_name(&look.queue).is_ok());
    let ranges = look
        .last
        .iter()
        .enumerate()
        .map(|(p, c)| format!("(priority = {p} AND seq > {c})"))
        .collect::<Vec<_>>()
        .join(" OR ");
    format!(
        "EXISTS(SELECT 1 FROM queue_ready FORCE INDEX (PRIMARY) WHERE queue = '{}' AND ({ranges}))",
        look.queue
    )
}

/// The parked statement: sleeps `secs` unless one of `looks` has work.
pub(crate) fn park_sql(looks: &[Look], secs: f64) -> String {
    let exists = looks
        .iter()
        .map(exists_sql)
        .collect::<Vec<_>>()
        .join(" OR ");
    let exists = if exists.is_empty() {
        "FALSE".to_owned()
    } else {
        exists
    };
    format!("SELECT IF({exists}, 2, SLEEP({secs:.3}))")
}

/// The registration of this connection for `looks`' queues, `gen`, until
/// `expires_at`.
pub(crate) fn register_sql(
    looks: &[Look],
    generation: u64,
    owner: &str,
    expires_at: DateTime<Utc>,
) -> String {
    debug_assert!(
        owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    );
    let rows = looks
        .iter()
        .map(|l| {
            format!(
                "('{}', CONNECTION_ID(), {generation}, CURRENT_USER(), '{owner}', '{}')",
                l.queue,
                sql_time(expires_at)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO queue_sleepers (queue, conn_id, gen, db_user, owner, expires_at) VALUES {rows} \
         ON DUPLICATE KEY UPDATE gen = VALUES(gen), db_user = VALUES(db_user), \
         owner = VALUES(owner), expires_at = VALUES(expires_at)"
    )
}

/// Drops this connection's registration.
pub(crate) const DEREGISTER: &str = "DELETE FROM queue_sleepers WHERE conn_id = CONNECTION_ID()";

/// The registry's rows that expired before `before` (sleepers that died).
pub(crate) fn purge_sql(before: DateTime<Utc>) -> String {
    format!(
        "DELETE FROM queue_sleepers WHERE expires_at < '{}'",
        sql_time(before)
    )
}

/// Runs `sql` (a registration, or nothing, then a [`park_sql`]) on the
/// parked connection: what the parked statement ended with. A `KILL QUERY`
/// that lands in the `EXISTS` ends it with error 1317: woken too.
pub(crate) async fn park(conn: &mut sqlx::MySqlConnection, sql: String) -> Result<Parked> {
    match sqlx::raw_sql(AssertSqlSafe(sql)).fetch_all(conn).await {
        Ok(rows) => {
            let v: i64 = match rows.last() {
                Some(r) => r.try_get(0)?,
                None => 0,
            };
            Ok(match v {
                2 => Parked::Found,
                1 => Parked::Woken,
                _ => Parked::Slept,
            })
        }
        Err(e) if crate::error::sql_error_number(&e) == Some(1317) => Ok(Parked::Woken),
        Err(e) => Err(e.into()),
    }
}

impl Store {
    /// Ends the running statement of connection `conn_id` (`KILL QUERY`).
    /// Error 1094 (no such connection: the sleeper is gone) is success.
    pub(crate) async fn kill_query(&self, conn_id: u64) -> Result<()> {
        match sqlx::raw_sql(AssertSqlSafe(format!("KILL QUERY {conn_id}")))
            .execute(&self.pool)
            .await
        {
            Err(e) if crate::error::sql_error_number(&e) == Some(1094) => Ok(()),
            other => Ok(other.map(|_| ())?),
        }
    }

    /// The registry's live sleepers of `queues` at `now`: what an enqueue
    /// that did not read them with its commit (`enqueue_many`) asks.
    pub(crate) async fn sleepers(
        &self,
        queues: &[&str],
        now: DateTime<Utc>,
    ) -> Result<Vec<Sleeper>> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::raw_sql(AssertSqlSafe(self.limited(&sleepers_sql(queues, now))))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Sleeper::from_row)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parked_statement_looks_after_the_cursors_then_sleeps() {
        let look = Look {
            queue: "mail".into(),
            last: [0, 5, 0, 0, 9],
        };
        assert_eq!(
            park_sql(std::slice::from_ref(&look), 0.5),
            "SELECT IF(EXISTS(SELECT 1 FROM queue_ready FORCE INDEX (PRIMARY) WHERE queue = 'mail' AND \
             ((priority = 0 AND seq > 0) OR (priority = 1 AND seq > 5) OR (priority = 2 AND seq > 0) OR \
             (priority = 3 AND seq > 0) OR (priority = 4 AND seq > 9))), 2, SLEEP(0.500))"
        );
        assert_eq!(park_sql(&[], 2.0), "SELECT IF(FALSE, 2, SLEEP(2.000))");
        let reg = register_sql(&[look], 7, "rt-ab12", DateTime::<Utc>::UNIX_EPOCH);
        assert!(reg.contains(
            "('mail', CONNECTION_ID(), 7, CURRENT_USER(), 'rt-ab12', '1970-01-01 00:00:00.000000')"
        ));
        assert_eq!(
            sleepers_sql(&["a", "b"], DateTime::<Utc>::UNIX_EPOCH),
            "SELECT conn_id, gen, CAST(db_user = CURRENT_USER() AS SIGNED) FROM queue_sleepers \
             WHERE queue IN ('a', 'b') AND expires_at > '1970-01-01 00:00:00.000000'"
        );
    }
}
