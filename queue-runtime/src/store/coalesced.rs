//! The statements of coalesced single enqueues (`crate::coalesce`): every
//! value inlined, so that the whole transaction travels as multi-statement
//! text, one round trip for one job and two for a batch, with nothing
//! prepared.
//!
//! Inlining is safe by construction: every string (task, queue, payload,
//! rate key) is written as a hexadecimal literal (`_utf8mb4 X'…'`, or `X'…'`
//! for the binary key), which holds only hex digits whatever the session's
//! `sql_mode` (`NO_BACKSLASH_ESCAPES`, `ANSI_QUOTES`) or character set;
//! integers are printed by Rust, and times by `crate::time::literal` (digits
//! and separators). A hex literal is twice its bytes, so only jobs whose
//! payload is at most [`INLINE_PAYLOAD_MAX`] come this way.
//!
//! Jobs with a unique key or a concurrency key never come here: they keep
//! the prepared path of `insert.rs` (a duplicate key's look-up, a slot taken
//! on the way into the claim index).
//!
//! The transaction ends with a read of the sleeper registry
//! (`queue_sleepers`, see `store/wake.rs`) for the queues it made jobs ready
//! in, in the same round trip as its `COMMIT`: after the commit, so a
//! runtime that registered after this read looks for ready jobs after this
//! commit and finds them itself.

use chrono::{DateTime, Utc};
use queue_core::{JobId, JobState};
use sqlx::{AssertSqlSafe, Row};

use super::wake::{Sleeper, sleepers_sql};
use super::{NewJob, Store};
use crate::error::{Error, Result};
use crate::flavor::Flavor;

/// The largest payload, in bytes, inlined into a coalesced INSERT (its text
/// is twice that); bigger ones take the prepared path.
pub(crate) const INLINE_PAYLOAD_MAX: usize = 64 * 1024;

/// The most bytes of payload one coalesced batch carries.
pub(crate) const BATCH_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Batches of at most this many jobs go in one round trip, two statements
/// per job; bigger ones in two, with one multi-row INSERT per table.
/// Measured (docs/benchmarks.md): at 10 callers, batches of 2 to 10 went
/// faster as two multi-row INSERTs in two round trips than as one round
/// trip of two statements per job, so only a lone job takes one trip.
pub(crate) const ONE_TRIP_MAX: usize = 1;

/// A job with its own `now` (which decides whether it is due, and its
/// creation time).
#[derive(Debug)]
pub(crate) struct TimedJob {
    pub(crate) job: NewJob,
    pub(crate) now: DateTime<Utc>,
}

impl TimedJob {
    pub(crate) fn due(&self) -> bool {
        self.job.run_at <= self.now
    }
}

/// Whether `job` may take the coalesced path.
pub(crate) fn inlinable(job: &NewJob) -> bool {
    job.unique_key.is_none()
        && job.concurrency_key.is_none()
        && job.payload.len() <= INLINE_PAYLOAD_MAX
}

/// What a coalesced insert did: the ids in order, and the sleepers
/// registered for the queues it made jobs ready in.
#[derive(Debug, Default)]
pub(crate) struct Inserted {
    pub(crate) ids: Vec<JobId>,
    pub(crate) sleepers: Vec<Sleeper>,
}

/// `bytes` as hex digits.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// A text value as a character-set-introduced hex literal.
pub(crate) fn text_literal(s: &str) -> String {
    format!("_utf8mb4 X'{}'", hex(s.as_bytes()))
}

/// A binary value as a hex literal, or `NULL`.
fn bytes_literal(s: Option<&str>) -> String {
    s.map_or_else(
        || "NULL".to_owned(),
        |s| format!("X'{}'", hex(s.as_bytes())),
    )
}

fn time_literal(t: DateTime<Utc>) -> String {
    format!("'{}'", crate::time::literal(t))
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "NULL".to_owned(), |v| v.to_string())
}

const JOB_COLUMNS: &str = "INSERT INTO queue_jobs (task, unique_key, queue, priority, state, payload, \
     attempts, max_attempts, deadline_ms, run_at, scheduled_at, created_at, updated_at, \
     concurrency_key, rate_key) VALUES ";

const READY_COLUMNS: &str = "INSERT INTO queue_ready (queue, priority, job_id, limited) VALUES ";

/// One `queue_jobs` row of `VALUES`, every value inlined.
fn job_row(t: &TimedJob) -> String {
    let job = &t.job;
    let due = t.due();
    let state = if due {
        JobState::Ready
    } else {
        JobState::Scheduled
    };
    format!(
        "({}, NULL, {}, {}, {}, {}, 0, {}, {}, {}, {}, {}, {}, NULL, {})",
        text_literal(&job.task),
        text_literal(&job.queue),
        job.priority,
        state.as_u8(),
        text_literal(&job.payload),
        job.max_attempts,
        opt(job.deadline_ms),
        time_literal(job.run_at),
        if due {
            "NULL".to_owned()
        } else {
            time_literal(job.run_at)
        },
        time_literal(t.now),
        time_literal(t.now),
        bytes_literal(job.rate_key.as_deref()),
    )
}

/// One `queue_ready` row of `VALUES` for `job` whose id is the SQL `id`.
fn ready_row(job: &NewJob, id: &str) -> String {
    format!(
        "({}, {}, {id}, {})",
        text_literal(&job.queue),
        job.priority,
        u8::from(job.limited())
    )
}

/// The queues `jobs` make jobs ready in, each once.
fn ready_queues(jobs: &[TimedJob]) -> Vec<&str> {
    let mut queues: Vec<&str> = jobs
        .iter()
        .filter(|t| t.due())
        .map(|t| t.job.queue.as_str())
        .collect();
    queues.sort_unstable();
    queues.dedup();
    queues
}

impl Store {
    /// Inserts `jobs` (all [`inlinable`]) in one transaction sent as
    /// multi-statement text: one round trip for up to [`ONE_TRIP_MAX`]
    /// jobs, two for more.
    /// On any error the transaction is rolled back (the connection is
    /// closed if that fails too) and nothing was inserted.
    pub(crate) async fn insert_coalesced(
        &self,
        conn: &mut sqlx::pool::PoolConnection<sqlx::MySql>,
        jobs: &[TimedJob],
    ) -> Result<Inserted> {
        if jobs.is_empty() {
            return Ok(Inserted::default());
        }
        let result = if jobs.len() <= ONE_TRIP_MAX {
            self.insert_one_trip(conn, jobs).await
        } else {
            self.insert_two_trips(conn, jobs).await
        };
        if result.is_err() {
            self.roll_back_or_close(conn).await;
        } else {
            crate::telemetry::enqueued(jobs.iter().map(|t| &t.job));
        }
        result
    }

    /// The sleepers' read after the commit, if `jobs` made any ready.
    fn sleepers_tail(&self, jobs: &[TimedJob]) -> String {
        let queues = ready_queues(jobs);
        if queues.is_empty() {
            return String::new();
        }
        let now = jobs.iter().map(|t| t.now).max().unwrap_or_default();
        format!("; {}", self.limited(&sleepers_sql(&queues, now)))
    }

    /// Up to [`ONE_TRIP_MAX`] jobs in one round trip: per job an `INSERT`
    /// that says its id (MariaDB's `RETURNING`, MySQL's `LAST_INSERT_ID()`)
    /// and, for a due job, its claim-index row with `LAST_INSERT_ID()`
    /// (which reads the previous statement's id); then `COMMIT` and the
    /// registry read. The first `jobs.len()` rows are the ids, in order.
    async fn insert_one_trip(
        &self,
        conn: &mut sqlx::MySqlConnection,
        jobs: &[TimedJob],
    ) -> Result<Inserted> {
        let mut sql = String::from(self.begin_sql());
        for t in jobs {
            let mut insert = format!("{JOB_COLUMNS}{}", job_row(t));
            if self.flavor == Flavor::MariaDb {
                insert.push_str(" RETURNING id");
            }
            sql.push_str("; ");
            sql.push_str(&self.limited(&insert));
            if self.flavor == Flavor::MySql {
                sql.push_str("; SELECT LAST_INSERT_ID()");
            }
            if t.due() {
                sql.push_str("; ");
                sql.push_str(&self.limited(&format!(
                    "{READY_COLUMNS}{}",
                    ready_row(&t.job, "LAST_INSERT_ID()")
                )));
            }
        }
        sql.push_str("; ");
        sql.push_str(self.commit_sql());
        sql.push_str(&self.sleepers_tail(jobs));
        let rows = sqlx::raw_sql(AssertSqlSafe(sql)).fetch_all(conn).await?;
        if rows.len() < jobs.len() {
            return Err(protocol(&format!(
                "inserted {} jobs but the server returned {} ids",
                jobs.len(),
                rows.len()
            )));
        }
        let (ids, sleepers) = rows.split_at(jobs.len());
        Ok(Inserted {
            ids: ids
                .iter()
                .map(|r| Ok(JobId(r.try_get::<u64, _>(0)?)))
                .collect::<Result<_>>()?,
            sleepers: sleepers
                .iter()
                .map(Sleeper::from_row)
                .collect::<Result<_>>()?,
        })
    }

    /// Several jobs: one multi-row `INSERT` that says their ids, then the
    /// claim-index rows with those ids inlined, `COMMIT` and the reads.
    async fn insert_two_trips(
        &self,
        conn: &mut sqlx::MySqlConnection,
        jobs: &[TimedJob],
    ) -> Result<Inserted> {
        let rows: Vec<String> = jobs.iter().map(job_row).collect();
        let mut insert = format!("{JOB_COLUMNS}{}", rows.join(", "));
        let first = match self.flavor {
            Flavor::MariaDb => {
                insert.push_str(" RETURNING id");
                format!("{}; {}", self.begin_sql(), self.limited(&insert))
            }
            // As in `insert.rs`: a multi-row INSERT of known row count takes
            // its AUTO_INCREMENT values as one block, `increment` apart.
            Flavor::MySql => format!(
                "{}; {}; SELECT LAST_INSERT_ID(), @@session.auto_increment_increment",
                self.begin_sql(),
                self.limited(&insert)
            ),
        };
        let got = sqlx::raw_sql(AssertSqlSafe(first))
            .fetch_all(&mut *conn)
            .await?;
        let ids: Vec<u64> = match self.flavor {
            Flavor::MariaDb => got
                .iter()
                .map(|r| r.try_get::<u64, _>(0))
                .collect::<Result<_, _>>()?,
            Flavor::MySql => match got.first() {
                Some(r) => {
                    let first: u64 = r.try_get(0)?;
                    let step: u64 = r.try_get(1)?;
                    (0..jobs.len() as u64)
                        .map(|i| first + i * step.max(1))
                        .collect()
                }
                None => Vec::new(),
            },
        };
        if ids.len() != jobs.len() {
            return Err(protocol(&format!(
                "inserted {} jobs but the server returned {} ids",
                jobs.len(),
                ids.len()
            )));
        }
        let ready: Vec<String> = jobs
            .iter()
            .zip(&ids)
            .filter(|(t, _)| t.due())
            .map(|(t, id)| ready_row(&t.job, &id.to_string()))
            .collect();
        let mut second = String::new();
        if !ready.is_empty() {
            second.push_str(&self.limited(&format!("{READY_COLUMNS}{}", ready.join(", "))));
            second.push_str("; ");
        }
        second.push_str(self.commit_sql());
        second.push_str(&self.sleepers_tail(jobs));
        let rows = sqlx::raw_sql(AssertSqlSafe(second))
            .fetch_all(&mut *conn)
            .await?;
        Ok(Inserted {
            ids: ids.into_iter().map(JobId).collect(),
            sleepers: rows.iter().map(Sleeper::from_row).collect::<Result<_>>()?,
        })
    }
}

fn protocol(m: &str) -> Error {
    Error::Database(sqlx::Error::Protocol(m.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(payload: &str) -> TimedJob {
        TimedJob {
            job: NewJob {
                task: "t'; DROP TABLE x; --".into(),
                queue: "q".into(),
                priority: 2,
                payload: payload.into(),
                max_attempts: 4,
                deadline_ms: Some(250),
                run_at: DateTime::<Utc>::UNIX_EPOCH,
                unique_key: None,
                concurrency_key: None,
                concurrency_limit: None,
                rate_key: Some("k\\".into()),
            },
            now: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    #[test]
    fn strings_are_hex_literals() {
        assert_eq!(hex(b""), "");
        assert_eq!(hex(&[0, 0xAB, 0x7F]), "00AB7F");
        assert_eq!(text_literal("é'"), "_utf8mb4 X'C3A927'");
        assert_eq!(bytes_literal(None), "NULL");
        assert_eq!(bytes_literal(Some("\\")), "X'5C'");
    }

    #[test]
    fn a_row_inlines_only_hex_digits_numbers_and_times() {
        let row = job_row(&job("{\"a\":\"'\\\\\"}"));
        assert!(!row.contains("DROP"), "{row}");
        // Outside hex literals and times, nothing but digits, NULL and
        // punctuation.
        let quotes = row.matches('\'').count();
        assert_eq!(quotes % 2, 0);
        assert!(row.starts_with("(_utf8mb4 X'"), "{row}");
        assert!(row.contains(", 2, 0, _utf8mb4 X'"), "{row}");
        assert!(row.contains(", 0, 4, 250, '1970-01-01 00:00:00.000000', NULL, "));
        assert!(row.ends_with(", NULL, X'6B5C')"), "{row}");
        assert!(inlinable(&job("{}").job));
        let mut unique = job("{}").job;
        unique.unique_key = Some("k".into());
        assert!(!inlinable(&unique));
        let big = job(&"x".repeat(INLINE_PAYLOAD_MAX + 1)).job;
        assert!(!inlinable(&big));
    }

    #[test]
    fn ready_queues_are_the_due_jobs_queues_once() {
        let mut a = job("1");
        a.job.queue = "b".into();
        let b = job("2");
        let mut later = job("3");
        later.job.queue = "c".into();
        later.job.run_at = DateTime::<Utc>::MAX_UTC;
        let c = job("4");
        assert_eq!(ready_queues(&[a, b, later, c]), ["b", "q"]);
    }
}
