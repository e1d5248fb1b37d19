//! Every SQL statement the runtime sends, named by its effect. Nothing here
//! decides policy: the runtime and client call these with times from their
//! clock and with the decisions of `runtime::outcome`.
//!
//! - `insert`: new jobs, and their entry into the claim index;
//! - `claim`: the claim path over the claim index;
//! - `outcome`: what an attempt's end writes (complete, retry, dead), leases;
//! - `limits`: concurrency semaphores, blocked jobs and rate windows;
//! - `maintenance`: rescue of expired leases, dispatch of due jobs, healing;
//! - `admin`: the client's inspection and repair statements;
//! - `operator`: the runtime registry, per-minute counts, job listings;
//! - `cron`: the `queue_cron` rows of recurring tasks;
//! - `migrate`: the schema and its check.

pub(crate) mod admin;
mod claim;
pub(crate) mod coalesced;
mod cron;
pub(crate) mod galera;
mod insert;
pub(crate) mod limits;
mod maintenance;
pub(crate) mod migrate;
pub(crate) mod operator;
mod outcome;
#[cfg(feature = "testing")]
mod testing;
mod tx;
pub(crate) mod wake;

use std::time::Duration;

use chrono::{DateTime, Utc};
use queue_core::JobId;
use sqlx::mysql::MySqlArguments;
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, MySql, MySqlPool, Row};

pub(crate) use claim::{ClaimTicket, Claimed, ClaimedJob, LEVELS, Lane, claim_sql};
pub(crate) use insert::{INSERT_CHUNK, payload_limit};
pub(crate) use maintenance::{ExpiredLease, Rescue};
pub(crate) use outcome::SlottedSuccess;

use crate::error::{Error, Result, is_retryable};
use crate::flavor::Flavor;

/// How long any of the runtime's own statements may run on the server.
pub(crate) const STATEMENT_LIMIT: Duration = Duration::from_secs(10);

/// What every connection of a pool the client opens runs first: times are
/// stored and compared in UTC.
pub(crate) const SESSION_SETUP: &str = "SET time_zone = '+00:00'";

/// A job to insert.
#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub task: String,
    pub queue: String,
    pub priority: u8,
    pub payload: String,
    pub max_attempts: u32,
    pub deadline_ms: Option<u64>,
    pub run_at: DateTime<Utc>,
    /// Not enqueued again while a job of the task with this key is pending.
    pub unique_key: Option<String>,
    /// The stored concurrency key (task, U+001F, key; or the task alone)
    /// of a task with a concurrency limit.
    pub concurrency_key: Option<String>,
    /// The task's concurrency limit (with `concurrency_key`).
    pub concurrency_limit: Option<u32>,
    /// The stored rate key of a task with a rate limit.
    pub rate_key: Option<String>,
}

impl NewJob {
    /// Whether its claim-index row must be checked against a limit at
    /// claim (a rate limit; concurrency is settled before a job is ready).
    pub(crate) fn limited(&self) -> bool {
        self.rate_key.is_some()
    }
}

/// The SQL side of a `Client`: a pool and the server's flavour.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub pool: MySqlPool,
    pub flavor: Flavor,
    /// The server is a MariaDB Galera node (`wsrep_on`): the store's
    /// transactions are guarded (`store::galera`).
    pub galera: bool,
    /// The server's `max_allowed_packet`, once read.
    packet: std::sync::Arc<std::sync::OnceLock<u64>>,
}

/// A time as the text of a MySQL `DATETIME(6)` literal.
pub(crate) fn sql_time(t: DateTime<Utc>) -> String {
    crate::time::literal(t)
}

/// `n` copies of `item` joined by `sep`: the one builder of repeated SQL
/// fragments (`?, ?, ?`, `(?, ?), (?, ?)`, `(…) OR (…)`).
pub(crate) fn repeated(item: &str, n: usize, sep: &str) -> String {
    vec![item; n].join(sep)
}

/// `?, ?, ?` for `n` parameters.
pub(crate) fn placeholders(n: usize) -> String {
    repeated("?", n, ", ")
}

/// The rows of a multi-row `VALUES`: `n` copies of `row`, as in
/// `(?, ?, ?), (?, ?, ?)`.
pub(crate) fn value_rows(row: &str, n: usize) -> String {
    repeated(row, n, ", ")
}

/// Values inlined into a statement's text, comma-separated: for integers
/// only (ids, sequence numbers), in statements kept out of the prepared
/// statement cache (see [`fence`]).
pub(crate) fn inline_list<T: ToString>(values: impl IntoIterator<Item = T>) -> String {
    values
        .into_iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The stored form of a job's unique key: the task's name, U+001F and the
/// key, so that the one-column unique index keeps keys apart per task.
pub(crate) fn stored_unique_key(task: &str, key: &str) -> String {
    format!("{task}\u{1f}{key}")
}

/// The `(id = 7 AND attempts = 1) OR …` fence over `jobs`: an outcome is
/// written only while the job is still at the attempt that produced it.
///
/// Written with the values inlined (they are integers): these statements
/// differ in length with every batch, and as prepared statements they would
/// churn the connection's statement cache, whose evictions cost a round
/// trip that waits on the server's delayed ACK (~40 ms) under sqlx 0.9.
fn fence(jobs: &[(JobId, u32)]) -> String {
    jobs.iter()
        .map(|(id, attempt)| format!("(id = {} AND attempts = {attempt})", id.0))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Binds each of `ids` in turn (after the parameters bound so far).
fn bind_ids<'q>(
    mut q: Query<'q, MySql, MySqlArguments>,
    ids: &[u64],
) -> Query<'q, MySql, MySqlArguments> {
    for id in ids {
        q = q.bind(*id);
    }
    q
}

/// The order in which jobs enter the claim index (their `seq` follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadyOrder {
    /// By id: enqueue order.
    Id,
    /// By run time, then id: scheduled jobs that came due.
    RunAt,
}

impl ReadyOrder {
    fn sql(self) -> &'static str {
        match self {
            ReadyOrder::Id => "id",
            ReadyOrder::RunAt => "run_at, id",
        }
    }
}

impl Store {
    /// The store of `pool`, a server of `flavor`.
    pub(crate) fn new(pool: MySqlPool, flavor: Flavor) -> Store {
        Store {
            pool,
            flavor,
            galera: false,
            packet: Default::default(),
        }
    }

    /// The same store, its server a Galera node or not.
    pub(crate) fn with_galera(mut self, galera: bool) -> Store {
        self.galera = galera;
        self
    }

    /// The store of `pool`, whose server's flavour is asked for (and, on
    /// MariaDB, whether it is a Galera node).
    pub(crate) async fn detect(pool: MySqlPool) -> Result<Store> {
        let version: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&pool)
            .await?;
        let flavor = Flavor::from_version(&version);
        let galera = flavor == Flavor::MariaDb && Store::detect_galera(&pool).await;
        Ok(Store::new(pool, flavor).with_galera(galera))
    }

    /// A statement with the runtime's own server-side limit. The text is
    /// built by this module from constants and placeholders only.
    pub(crate) fn sql(&self, text: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(self.limited(text))
    }

    /// A statement with the runtime's own server-side limit, as text.
    fn limited(&self, text: &str) -> String {
        self.flavor.limit_statement(text, STATEMENT_LIMIT).0
    }

    /// One round trip's text: each statement with the runtime's limit,
    /// separated by `;` (a multi-statement batch for `sqlx::raw_sql`).
    fn batch(&self, statements: &[String]) -> String {
        statements
            .iter()
            .map(|s| self.limited(s))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn q(&self, text: &str) -> Query<'static, MySql, MySqlArguments> {
        sqlx::query(self.sql(text))
    }

    /// Adds jobs, by id, to the claim index, in `order`: the way existing
    /// jobs become claimable. A job with a concurrency key and no slot takes
    /// one first ([`Store::acquire_slots`]); one whose limit is full is
    /// blocked instead (and stays out of the claim index). Returns how many
    /// jobs entered the index.
    pub(crate) async fn index_ready_by_id(
        &self,
        tx: &mut sqlx::MySqlConnection,
        ids: &[u64],
        order: ReadyOrder,
    ) -> Result<u64> {
        let sql = format!(
            "INSERT INTO queue_ready (queue, priority, job_id, limited) SELECT queue, priority, id, {LIMITED} \
             FROM queue_jobs WHERE id IN ({}) AND (concurrency_key IS NULL OR slot = 1) ORDER BY {}",
            placeholders(ids.len()),
            order.sql()
        );
        let n = bind_ids(self.q(&sql), ids)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n as usize >= ids.len() {
            return Ok(n);
        }
        // Some need a slot (or are not there).
        let sql = format!(
            "SELECT id, concurrency_key, priority FROM queue_jobs WHERE id IN ({}) \
             AND concurrency_key IS NOT NULL AND slot = 0 ORDER BY priority, {}",
            placeholders(ids.len()),
            order.sql()
        );
        let rows = bind_ids(self.q(&sql), ids).fetch_all(&mut *tx).await?;
        let wanting: Vec<limits::Wanting> = rows
            .iter()
            .map(|r| {
                Ok(limits::Wanting {
                    id: r.try_get(0)?,
                    key: r.try_get(1)?,
                    priority: r.try_get(2)?,
                    limit: None,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let granted = self.acquire_slots(tx, &wanting).await?;
        if granted.is_empty() {
            return Ok(n);
        }
        let sql = format!(
            "INSERT INTO queue_ready (queue, priority, job_id, limited) SELECT queue, priority, id, {LIMITED} \
             FROM queue_jobs WHERE id IN ({}) ORDER BY {}",
            placeholders(granted.len()),
            order.sql()
        );
        let m = bind_ids(self.q(&sql), &granted)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        Ok(n + m)
    }
}

/// Whether a job's claim-index row must be checked against a limit at
/// claim, as a SQL expression over `queue_jobs`: it has a rate key.
/// (A job with a concurrency key enters the claim index only holding a
/// slot: see [`Store::index_ready_by_id`].)
pub(crate) const LIMITED: &str = "(rate_key IS NOT NULL)";

/// Tries of [`retry_deadlocks`], the first included.
const DEADLOCK_TRIES: u32 = 8;

/// Runs `f` again when it fails with a deadlock or lock wait timeout, up
/// to [`DEADLOCK_TRIES`] times in all, after a short, growing, jittered
/// pause: the one retry rule of every transaction the store runs.
///
/// On a Galera cluster a certification conflict (another node committed a
/// write to the same rows first) fails the losing transaction's `COMMIT`,
/// or its next statement when the winner's write set aborts it while it
/// runs (a brute-force abort), with the same error 1213 "Deadlock found
/// when trying to get lock": a lost race, retried here like a deadlock.
/// Nothing the retried transaction wrote was kept, so a claim that lost
/// counted no attempt.
pub(crate) async fn retry_deadlocks<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match f().await {
            Err(Error::Database(e)) if is_retryable(&e) && attempt < DEADLOCK_TRIES => {
                tracing::debug!(error = %e, attempt, "retrying after a deadlock");
                tokio::time::sleep(Duration::from_millis(
                    u64::from(attempt) * 3 + fastrand::u64(0..5),
                ))
                .await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_repeat_with_their_separator() {
        assert_eq!(placeholders(0), "");
        assert_eq!(placeholders(3), "?, ?, ?");
        assert_eq!(value_rows("(?, ?)", 2), "(?, ?), (?, ?)");
        assert_eq!(inline_list([3u64, 8]), "3, 8");
        assert_eq!(
            fence(&[(JobId(7), 1), (JobId(9), 2)]),
            "(id = 7 AND attempts = 1) OR (id = 9 AND attempts = 2)"
        );
    }
}
