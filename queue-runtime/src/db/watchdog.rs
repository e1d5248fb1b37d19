//! MySQL's path for a statement that no hint limits: the session's lock wait
//! is lowered around it, and a watchdog sends `KILL QUERY <connection id>`
//! from another connection if it still runs at the deadline. The SQL of the
//! setup and restore comes from [`Flavor::deadline_plan`](crate::flavor::Flavor::deadline_plan).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use queue_core::Deadline;
use sqlx::mysql::{MySqlConnection, MySqlPool};
use sqlx::{AssertSqlSafe, Connection, Executor, Row};

use super::deadline::CLEANUP_TIMEOUT;

/// Sends the watched path's setup (lower the lock wait, read the connection
/// id) in one round trip; returns the connection id.
pub(super) async fn lower_lock_wait(
    conn: &mut MySqlConnection,
    setup: String,
) -> Result<u64, sqlx::Error> {
    let row = (&mut *conn)
        .fetch_optional(AssertSqlSafe(setup))
        .await?
        .ok_or_else(|| sqlx::Error::Protocol("no CONNECTION_ID() row".into()))?;
    row.try_get::<u64, _>(0)
}

const WATCHING: u8 = 0;
const DISARMED: u8 = 1;
const FIRED: u8 = 2;

/// Kills the statement on connection `id` at the deadline unless disarmed
/// first. It runs as its own task, so it still fires when the statement's
/// future is dropped mid-flight (the attempt stopped).
pub(super) struct Watchdog {
    state: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    pub(super) fn arm(pool: MySqlPool, id: u64, deadline: Deadline) -> Watchdog {
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
    pub(super) fn disarm(self) -> bool {
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
