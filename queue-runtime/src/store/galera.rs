//! What a MariaDB Galera node says of itself: `wsrep_on`, the cluster's
//! size and this node's state (docs/scaling.md); and the guarded
//! transactions the store and `ctx.db().begin()` run on a Galera node.
//!
//! # Guarded transactions
//!
//! On Galera (MariaDB 10.11, galera-4) a transaction that a replicated
//! write set brute-force aborts (BF abort) while one of its statements runs
//! is rolled back, but that statement can return *without an error*: the
//! error 1213 comes back on a later statement, possibly after `COMMIT` has
//! returned OK. With `autocommit = 1` the statements after the abort run in
//! autocommit and are committed, so a transaction sent as one
//! multi-statement batch can be partly rolled back and partly committed
//! while the client sees success (measured: docs/scaling.md).
//!
//! A guarded transaction is therefore:
//!
//! - begun ([`GUARDED_BEGIN_RC`], [`GUARDED_BEGIN`]) with `autocommit = 0`,
//!   so that statements after an abort run in a new implicit transaction
//!   that nothing commits, and a marker row inserted, right after
//!   `START TRANSACTION`, into the connection's InnoDB temporary table
//!   `queue_runtime_trx_guard` (temporary tables are not replicated): its
//!   value is a per-connection counter kept in the user variable
//!   `@queue_runtime_trx` (user variables are not transactional, so a row
//!   left by an earlier transaction never matches);
//! - committed ([`GUARDED_COMMIT`]) by a guard, `COMMIT`, the guard again,
//!   then the marker's removal and `autocommit = 1`. The guard is `IF NOT
//!   EXISTS (marker) THEN SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213
//!   …`: before `COMMIT` it stops the batch (a failing statement ends a
//!   multi-statement batch) when the transaction in progress is not the
//!   one begun, so `COMMIT` never commits what ran after an abort; after
//!   `COMMIT` it fails when the transaction that `COMMIT` ended was not
//!   ours (an abort during the first guard). Either way the client gets
//!   error 1213, which every caller already retries like a deadlock
//!   (`retry_deadlocks`), and nothing of the transaction was committed;
//! - on any error, rolled back with [`GUARDED_ROLLBACK`] (`ROLLBACK` and
//!   `autocommit = 1`) before its connection goes back to the pool, or the
//!   connection is closed.
//!
//! Off Galera none of this is sent: the store's transactions are the plain
//! `START TRANSACTION … COMMIT` (unit-tested in `store::tx`).

use sqlx::Row;

use super::Store;
use crate::admin::GaleraStatus;

/// The marker table's name (a per-connection InnoDB temporary table).
macro_rules! guard_table {
    () => {
        "queue_runtime_trx_guard"
    };
}

/// Makes the marker table if this connection has none, then opens the
/// transaction with `autocommit = 0` and inserts its marker.
macro_rules! guarded_begin {
    ($isolation:expr) => {
        concat!(
            "CREATE TEMPORARY TABLE IF NOT EXISTS ",
            guard_table!(),
            " (trx BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB; SET autocommit = 0; ",
            $isolation,
            "START TRANSACTION; INSERT INTO ",
            guard_table!(),
            " VALUES (@queue_runtime_trx := COALESCE(@queue_runtime_trx, 0) + 1)"
        )
    };
}

/// Fails with 1213 unless this transaction's marker is there (its
/// message, under MariaDB's 128 characters: "queue-runtime Galera guard:
/// …; try restarting transaction").
macro_rules! guard {
    ($what:literal) => {
        concat!(
            "IF NOT EXISTS (SELECT 1 FROM ",
            guard_table!(),
            " WHERE trx = @queue_runtime_trx) THEN SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, \
             MESSAGE_TEXT = 'queue-runtime Galera guard: ",
            $what,
            "; try restarting transaction'; END IF"
        )
    };
}

/// A store transaction on a Galera node, begun READ COMMITTED (the
/// isolation of every store transaction). Five statements, whose results
/// come before the transaction's own: see [`Store::begin_results`].
pub const GUARDED_BEGIN_RC: &str =
    guarded_begin!("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; ");

/// A handler's transaction (`ctx.db().begin()`) on a Galera node, at the
/// session's isolation level (as `BEGIN` is off Galera).
pub(crate) const GUARDED_BEGIN: &str = guarded_begin!("");

/// The end of a guarded transaction: the guard, `COMMIT`, the guard again
/// (the transaction `COMMIT` ended was ours), the marker's removal (one
/// row affected) and `autocommit = 1`.
pub const GUARDED_COMMIT: &str = concat!(
    guard!("transaction aborted before COMMIT"),
    "; COMMIT; ",
    guard!("COMMIT ended an aborted transaction"),
    "; DELETE FROM ",
    guard_table!(),
    "; SET autocommit = 1"
);

/// What a failed guarded transaction's connection runs before it goes back
/// to the pool: the implicit transaction that statements after an abort
/// (or after the failing one) opened is rolled back, and `autocommit`
/// restored.
pub const GUARDED_ROLLBACK: &str = "ROLLBACK; SET autocommit = 1";

impl Store {
    /// Whether the server is a Galera node: `@@GLOBAL.wsrep_on`, read once
    /// when a MariaDB store is made (MySQL has no such variable).
    pub(crate) async fn detect_galera(pool: &sqlx::MySqlPool) -> bool {
        sqlx::query_scalar::<_, i64>("SELECT @@GLOBAL.wsrep_on + 0")
            .fetch_one(pool)
            .await
            .is_ok_and(|on| on != 0)
    }

    /// The Galera status of the node a pooled connection reaches, or `None`
    /// when the server is no Galera node (MySQL, or MariaDB with
    /// `wsrep_on = OFF`) or cannot say. One statement on the server's
    /// status variables.
    pub(crate) async fn galera_status(&self) -> Option<GaleraStatus> {
        // `@@wsrep_on` is unknown to MySQL (error 1193): not Galera.
        let on: i64 = sqlx::query_scalar("SELECT @@GLOBAL.wsrep_on + 0")
            .fetch_one(&self.pool)
            .await
            .ok()?;
        if on == 0 {
            return None;
        }
        let rows = sqlx::query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN \
             ('wsrep_cluster_size', 'wsrep_local_state_comment', 'wsrep_cluster_status', \
             'wsrep_local_cert_failures', 'wsrep_local_bf_aborts', 'wsrep_gcomm_uuid')",
        )
        .fetch_all(&self.pool)
        .await
        .ok()?;
        let mut status = GaleraStatus::default();
        for r in &rows {
            let (name, value): (String, String) = (r.try_get(0).ok()?, r.try_get(1).ok()?);
            match name.to_ascii_lowercase().as_str() {
                "wsrep_cluster_size" => status.cluster_size = value.parse().unwrap_or(0),
                "wsrep_local_state_comment" => status.local_state = value,
                "wsrep_cluster_status" => status.cluster_status = value,
                "wsrep_local_cert_failures" => status.cert_failures = value.parse().unwrap_or(0),
                "wsrep_local_bf_aborts" => status.bf_aborts = value.parse().unwrap_or(0),
                "wsrep_gcomm_uuid" => status.node = value,
                _ => {}
            }
        }
        Some(status)
    }
}
