//! The store's transactions: how they begin, commit and roll back, as
//! statements ([`Store::begin_sql`] and the rest, for the transactions sent
//! as multi-statement text) and as a handle ([`StoreTx`], from
//! [`Store::begin`]). Off Galera they are sqlx's plain transactions; on a
//! Galera node they are guarded (see `store::galera`).

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::{MySql, MySqlConnection};

use super::Store;
use super::galera::{GUARDED_BEGIN_RC, GUARDED_COMMIT, GUARDED_ROLLBACK};
use crate::error::Result;

/// How every store transaction begins off Galera: READ COMMITTED, so no
/// gap locks (claims do not block inserts at the tail of the index).
pub(crate) const BEGIN_RC: &str =
    "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION";

impl Store {
    /// The statements that begin a store transaction: [`BEGIN_RC`], or on a
    /// Galera node the guarded begin.
    pub(crate) fn begin_sql(&self) -> &'static str {
        if self.galera {
            GUARDED_BEGIN_RC
        } else {
            BEGIN_RC
        }
    }

    /// How many results [`Store::begin_sql`]'s statements give, before the
    /// first statement of the transaction (for a batch read by position).
    pub(crate) fn begin_results(&self) -> usize {
        self.begin_sql().split("; ").count()
    }

    /// The statements that commit it: `COMMIT`, or the guarded commit (which
    /// fails with 1213 if the transaction was aborted, see `store::galera`).
    /// Nothing of a batch's reads may come after them by position on
    /// Galera: the guarded commit's own statements give results too.
    pub(crate) fn commit_sql(&self) -> &'static str {
        if self.galera {
            GUARDED_COMMIT
        } else {
            "COMMIT"
        }
    }

    /// The statements that roll it back after an error.
    pub(crate) fn rollback_sql(&self) -> &'static str {
        if self.galera {
            GUARDED_ROLLBACK
        } else {
            "ROLLBACK"
        }
    }

    /// Rolls back whatever a failed transaction left open on `conn` (and on
    /// Galera restores `autocommit`); closes the connection instead of
    /// returning it to the pool when that fails too.
    pub(crate) async fn roll_back_or_close(&self, conn: &mut PoolConnection<MySql>) {
        if sqlx::raw_sql(self.rollback_sql())
            .execute(&mut **conn)
            .await
            .is_err()
        {
            conn.close_on_drop();
        }
    }

    /// Starts a READ COMMITTED transaction: no gap locks, so claims do not
    /// block inserts at the tail of the index. On a Galera node it is
    /// guarded: its [`StoreTx::commit`] fails with 1213 (retried by
    /// `retry_deadlocks`) instead of committing part of it.
    pub(crate) async fn begin(&self) -> Result<StoreTx> {
        if !self.galera {
            return Ok(StoreTx::Plain(self.pool.begin_with(BEGIN_RC).await?));
        }
        let mut conn = self.pool.acquire().await?;
        if let Err(e) = sqlx::raw_sql(GUARDED_BEGIN_RC).execute(&mut *conn).await {
            self.roll_back_or_close(&mut conn).await;
            return Err(e.into());
        }
        Ok(StoreTx::Guarded(GuardedTx { conn: Some(conn) }))
    }
}

/// A transaction of the store ([`Store::begin`]): use `&mut *tx` (or
/// `&mut tx`) as a connection; end it with [`commit`](StoreTx::commit) or
/// [`rollback`](StoreTx::rollback). Dropped while open, it is rolled back.
pub(crate) enum StoreTx {
    /// Off Galera: sqlx's transaction, as before.
    Plain(sqlx::Transaction<'static, MySql>),
    /// On a Galera node.
    Guarded(GuardedTx),
}

/// A guarded transaction's connection; `None` once it ended.
pub(crate) struct GuardedTx {
    conn: Option<PoolConnection<MySql>>,
}

impl StoreTx {
    /// Commits. On Galera, fails with 1213 when the transaction was aborted
    /// (nothing of it is then committed) and rolls back what statements
    /// after the abort left open.
    pub(crate) async fn commit(self) -> Result<()> {
        match self {
            StoreTx::Plain(tx) => Ok(tx.commit().await?),
            StoreTx::Guarded(mut g) => g.end(GUARDED_COMMIT).await,
        }
    }

    /// Rolls back.
    pub(crate) async fn rollback(self) -> Result<()> {
        match self {
            StoreTx::Plain(tx) => Ok(tx.rollback().await?),
            StoreTx::Guarded(mut g) => g.end(GUARDED_ROLLBACK).await,
        }
    }
}

impl GuardedTx {
    async fn end(&mut self, sql: &'static str) -> Result<()> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        match sqlx::raw_sql(sql).execute(&mut *conn).await {
            Ok(_) => Ok(()),
            Err(e) => {
                if sqlx::raw_sql(GUARDED_ROLLBACK)
                    .execute(&mut *conn)
                    .await
                    .is_err()
                {
                    conn.close_on_drop();
                }
                Err(e.into())
            }
        }
    }
}

impl Drop for GuardedTx {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // Rolled back (with `autocommit` restored too) before the
        // connection goes back to the pool, or closed.
        crate::db::roll_back_in_background(conn, GUARDED_ROLLBACK);
    }
}

impl Deref for StoreTx {
    type Target = MySqlConnection;

    fn deref(&self) -> &MySqlConnection {
        match self {
            StoreTx::Plain(tx) => tx,
            StoreTx::Guarded(g) => g.conn.as_ref().expect("an open transaction"),
        }
    }
}

impl DerefMut for StoreTx {
    fn deref_mut(&mut self) -> &mut MySqlConnection {
        match self {
            StoreTx::Plain(tx) => tx,
            StoreTx::Guarded(g) => g.conn.as_mut().expect("an open transaction"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flavor::Flavor;

    fn store(galera: bool) -> Store {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .connect_lazy("mysql://u:p@127.0.0.1:1/db")
            .expect("a lazy pool");
        Store::new(pool, Flavor::MariaDb).with_galera(galera)
    }

    #[tokio::test]
    async fn off_galera_the_transactions_are_the_plain_statements() {
        let s = store(false);
        assert_eq!(
            s.begin_sql(),
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION"
        );
        assert_eq!(s.begin_results(), 2);
        assert_eq!(s.commit_sql(), "COMMIT");
        assert_eq!(s.rollback_sql(), "ROLLBACK");
    }

    #[tokio::test]
    async fn on_galera_they_are_guarded() {
        let s = store(true);
        assert_eq!(
            s.begin_sql(),
            "CREATE TEMPORARY TABLE IF NOT EXISTS queue_runtime_trx_guard \
             (trx BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB; SET autocommit = 0; \
             SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION; \
             INSERT INTO queue_runtime_trx_guard VALUES \
             (@queue_runtime_trx := COALESCE(@queue_runtime_trx, 0) + 1)"
        );
        assert_eq!(s.begin_results(), 5);
        let guard = "IF NOT EXISTS (SELECT 1 FROM queue_runtime_trx_guard WHERE trx = @queue_runtime_trx) \
                     THEN SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = \
                     'queue-runtime Galera guard: ";
        assert_eq!(
            s.commit_sql(),
            format!(
                "{guard}transaction aborted before COMMIT; try restarting transaction'; END IF; \
                 COMMIT; \
                 {guard}COMMIT ended an aborted transaction; try restarting transaction'; END IF; \
                 DELETE FROM queue_runtime_trx_guard; SET autocommit = 1"
            )
        );
        assert_eq!(s.rollback_sql(), "ROLLBACK; SET autocommit = 1");
        // The handlers' begin: the same without the isolation level.
        assert_eq!(
            super::super::galera::GUARDED_BEGIN,
            s.begin_sql()
                .replace("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; ", "")
        );
        // MariaDB's MESSAGE_TEXT holds 128 characters.
        for message in s.commit_sql().split("MESSAGE_TEXT = '").skip(1) {
            let text = message.split('\'').next().unwrap();
            assert!(text.len() <= 128, "{text}");
        }
    }
}
