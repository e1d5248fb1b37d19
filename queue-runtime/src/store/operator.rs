//! What operators see and steer, as SQL: the runtime registry
//! (`queue_runtimes`), per-minute counts (`queue_throughput`), paged job
//! listings, and the repairs `run_now`, `delete_job` and `retry_dead_all`.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use queue_core::{JobId, JobState};
use sqlx::{AssertSqlSafe, Row};

use super::coalesced::text_literal;
use super::{ReadyOrder, Store, bind_ids, inline_list, placeholders, retry_deadlocks, sql_time};
use crate::error::Result;
use crate::operator::JobSummary;
use crate::time::At;

/// What happened to an attempt, for the per-minute counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// Claimed to run.
    Started,
    /// Succeeded.
    Succeeded,
    /// Failed, with a retry to come.
    Failed,
    /// Failed for good.
    Dead,
}

/// Counts of one minute, queue and task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.started += other.started;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.dead += other.dead;
    }
}

/// Per-minute counts kept in memory until they are written: the key is
/// (minute as Unix seconds, queue, task).
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    counts: BTreeMap<(i64, String, String), Counts>,
    /// When the oldest count not yet written was added.
    since: Option<std::time::Instant>,
}

impl Tally {
    /// Counts one event at `at` for a job of `queue` and `task`.
    pub(crate) fn add(&mut self, at: DateTime<Utc>, queue: &str, task: &str, event: Event) {
        let minute = at.timestamp().div_euclid(60) * 60;
        let c = self
            .counts
            .entry((minute, queue.to_owned(), task.to_owned()))
            .or_default();
        match event {
            Event::Started => c.started += 1,
            Event::Succeeded => c.succeeded += 1,
            Event::Failed => c.failed += 1,
            Event::Dead => c.dead += 1,
        }
        self.since.get_or_insert_with(std::time::Instant::now);
    }

    /// Adds counts that could not be written back in.
    pub(crate) fn merge(&mut self, other: Tally) {
        for (k, v) in other.counts {
            self.counts.entry(k).or_default().add(v);
        }
        self.since = match (self.since, other.since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Whether nothing is counted.
    pub(crate) fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// How long the oldest count has waited to be written.
    pub(crate) fn age(&self) -> std::time::Duration {
        self.since.map(|s| s.elapsed()).unwrap_or_default()
    }

    /// The statement that adds these counts to `queue_throughput`, its
    /// rows in key order (so that two of them lock their rows in one
    /// order), every value inlined (the task name as a hex literal);
    /// `None` if there is nothing to add.
    pub(crate) fn upsert_sql(&self) -> Option<String> {
        if self.counts.is_empty() {
            return None;
        }
        let rows: Vec<String> = self
            .counts
            .iter()
            .map(|((minute, queue, task), c)| {
                let at = Utc
                    .timestamp_opt(*minute, 0)
                    .single()
                    .unwrap_or_else(crate::time::earliest);
                format!(
                    "('{}', {}, {}, {}, {}, {}, {})",
                    sql_time(at),
                    text_literal(queue),
                    text_literal(task),
                    c.started,
                    c.succeeded,
                    c.failed,
                    c.dead
                )
            })
            .collect();
        Some(format!(
            "INSERT INTO queue_throughput (minute, queue, task, started, succeeded, failed, dead) \
             VALUES {} ON DUPLICATE KEY UPDATE started = started + VALUES(started), \
             succeeded = succeeded + VALUES(succeeded), failed = failed + VALUES(failed), \
             dead = dead + VALUES(dead)",
            rows.join(", ")
        ))
    }
}

/// A runtime as registered in `queue_runtimes`.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeRow {
    pub owner: String,
    pub host: String,
    pub pid: u32,
    pub queues: Vec<String>,
    pub concurrency: u32,
    pub in_flight: u32,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// The Galera node it claims through (`wsrep_gcomm_uuid`), if any.
    pub node: Option<String>,
}

/// One minute's counts summed as asked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MinuteRow {
    pub minute: DateTime<Utc>,
    pub counts: Counts,
}

/// A listing's filter, checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListFilter {
    pub state: Option<JobState>,
    pub queue: Option<String>,
    pub task: Option<String>,
    /// Jobs with a smaller id than this only.
    pub before: Option<u64>,
    /// Jobs per page, 1 to 1,000.
    pub limit: usize,
}

/// Ids a listing's window scan covers per statement.
pub(crate) const LIST_WINDOW: u64 = 5_000;

/// Ids one listing call covers at most before it returns a short page
/// (with where to go on): bounds the work of a filter that matches few
/// jobs among many.
pub(crate) const LIST_BUDGET: u64 = 50_000;

/// Entries of a state's own index a listing reads at most to sort them by
/// id; a state with more jobs is listed by the window scan.
pub(crate) const LIST_INDEX_CAP: usize = 10_000;

const SUMMARY_COLUMNS: &str = "id, task, queue, priority, state, attempts, max_attempts, run_at, \
     created_at, updated_at, LEFT(last_error, 500)";

/// The index, and its condition, holding exactly the jobs of `state`
/// among `queue_jobs` (for the states that have one).
fn state_index(state: JobState) -> Option<(&'static str, &'static str)> {
    match state {
        JobState::Scheduled => Some(("queue_jobs_scheduled", "scheduled_at IS NOT NULL")),
        JobState::Running => Some(("queue_jobs_lease", "lease_expires_at IS NOT NULL")),
        JobState::Dead => Some(("queue_jobs_dead", "dead_at IS NOT NULL")),
        _ => None,
    }
}

/// The window scan of a listing: jobs with ids in `[low, high)` that
/// match, newest first, by the primary key (a range read backwards: no
/// sort). Values inlined: the state a number, names as hex literals.
pub(crate) fn list_window_sql(f: &ListFilter, low: u64, high: u64, limit: usize) -> String {
    format!(
        "SELECT {SUMMARY_COLUMNS} FROM queue_jobs FORCE INDEX (PRIMARY) \
         WHERE id >= {low} AND id < {high}{} ORDER BY id DESC LIMIT {limit}",
        filter_sql(f)
    )
}

/// The read of a state's index for a listing: the ids of the state's jobs
/// below `high`, at most `LIST_INDEX_CAP + 1` of them, from the index
/// alone.
pub(crate) fn list_index_sql(state: JobState, high: u64) -> Option<String> {
    let (index, cond) = state_index(state)?;
    Some(format!(
        "SELECT id FROM queue_jobs FORCE INDEX ({index}) WHERE {cond} AND id < {high} LIMIT {}",
        LIST_INDEX_CAP + 1
    ))
}

/// ` AND state = … AND queue = … AND task = …` for the filter's fields.
fn filter_sql(f: &ListFilter) -> String {
    let mut sql = String::new();
    if let Some(state) = f.state {
        sql.push_str(&format!(" AND state = {}", state.as_u8()));
    }
    if let Some(queue) = &f.queue {
        sql.push_str(&format!(" AND queue = {}", text_literal(queue)));
    }
    if let Some(task) = &f.task {
        sql.push_str(&format!(" AND task = {}", text_literal(task)));
    }
    sql
}

fn summary(r: &sqlx::mysql::MySqlRow) -> Result<JobSummary> {
    Ok(JobSummary {
        id: JobId(r.try_get(0)?),
        task: r.try_get(1)?,
        queue: r.try_get(2)?,
        priority: r.try_get(3)?,
        state: JobState::from_u8(r.try_get(4)?).unwrap_or(JobState::Dead),
        attempts: r.try_get(5)?,
        max_attempts: r.try_get(6)?,
        run_at: crate::time::stored(r, 7)?,
        created_at: crate::time::stored(r, 8)?,
        updated_at: crate::time::stored(r, 9)?,
        last_error: r.try_get(10)?,
    })
}

impl Store {
    /// Adds `tally` to `queue_throughput` in a statement of its own.
    pub(crate) async fn add_throughput(&self, tally: &Tally) -> Result<()> {
        if let Some(sql) = tally.upsert_sql() {
            retry_deadlocks(|| async {
                sqlx::raw_sql(AssertSqlSafe(self.limited(&sql)))
                    .execute(&self.pool)
                    .await?;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// [`Store::complete`], adding `tally` to `queue_throughput` in the
    /// same transaction (one round trip: the DELETE, the counts, COMMIT).
    pub(crate) async fn complete_tallied(
        &self,
        done: &[(JobId, u32)],
        tally: &Tally,
    ) -> Result<u64> {
        let Some(upsert) = tally.upsert_sql() else {
            return self.complete(done).await;
        };
        let (first, rest) = done.split_at(done.len().min(super::outcome::FENCE_CHUNK));
        let sql = format!(
            "{}; {}; {}; {}",
            self.begin_sql(),
            self.limited(&format!(
                "DELETE FROM queue_jobs WHERE {}",
                super::fence(first)
            )),
            self.limited(&upsert),
            self.commit_sql()
        );
        let delete_at = self.begin_results();
        let n = retry_deadlocks(|| async {
            let mut conn = self.pool.acquire().await?;
            let mut deleted = 0;
            let result = async {
                use futures_util::TryStreamExt;
                let mut results = sqlx::raw_sql(AssertSqlSafe(sql.clone())).fetch_many(&mut *conn);
                // One result per statement: the begin's, the DELETE, ….
                let mut i = 0;
                while let Some(item) = results.try_next().await? {
                    if let sqlx::Either::Left(done) = item {
                        if i == delete_at {
                            deleted = done.rows_affected();
                        }
                        i += 1;
                    }
                }
                Ok::<_, crate::error::Error>(())
            }
            .await;
            if result.is_err() {
                self.roll_back_or_close(&mut conn).await;
            }
            result.map(|()| deleted)
        })
        .await?;
        Ok(n + if rest.is_empty() {
            0
        } else {
            self.complete(rest).await?
        })
    }

    /// Registers a runtime, or refreshes its row (its heartbeat and jobs
    /// in flight): one upsert.
    pub(crate) async fn beat_runtime(&self, row: &RuntimeRow) -> Result<()> {
        self.q(
            "INSERT INTO queue_runtimes (owner, host, pid, queues, concurrency, in_flight, started_at, heartbeat_at, node) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
             in_flight = VALUES(in_flight), heartbeat_at = VALUES(heartbeat_at), node = VALUES(node)",
        )
        .bind(&row.owner)
        .bind(&row.host)
        .bind(row.pid)
        .bind(row.queues.join(","))
        .bind(row.concurrency)
        .bind(row.in_flight)
        .bind(At(row.started_at))
        .bind(At(row.heartbeat_at))
        .bind(row.node.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The Galera nodes that runtimes with a heartbeat since `since` claim
    /// through (each once).
    pub(crate) async fn claiming_nodes(&self, since: DateTime<Utc>) -> Result<Vec<String>> {
        Ok(self
            .q("SELECT DISTINCT node FROM queue_runtimes WHERE node IS NOT NULL AND heartbeat_at > ?")
            .bind(At(since))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?)
    }

    /// Removes a runtime's row (its clean shutdown).
    pub(crate) async fn unregister_runtime(&self, owner: &str) -> Result<()> {
        self.q("DELETE FROM queue_runtimes WHERE owner = ?")
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes registry rows without a heartbeat since `before`, and
    /// per-minute counts older than `counts_before`. Returns how many rows.
    pub(crate) async fn prune_operator_rows(
        &self,
        before: DateTime<Utc>,
        counts_before: DateTime<Utc>,
    ) -> Result<u64> {
        let a = self
            .q("DELETE FROM queue_runtimes WHERE heartbeat_at < ? LIMIT 1000")
            .bind(At(before))
            .execute(&self.pool)
            .await?
            .rows_affected();
        let b = self
            .q("DELETE FROM queue_throughput WHERE minute < ? LIMIT 10000")
            .bind(At(counts_before))
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(a + b)
    }

    /// The runtimes with a heartbeat at or after `since`, oldest first.
    pub(crate) async fn runtimes(&self, since: DateTime<Utc>) -> Result<Vec<RuntimeRow>> {
        self.q(
            "SELECT owner, host, pid, queues, concurrency, in_flight, started_at, heartbeat_at, node \
             FROM queue_runtimes WHERE heartbeat_at >= ? ORDER BY started_at, owner LIMIT 10000",
        )
        .bind(At(since))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let queues: String = r.try_get(3)?;
            Ok(RuntimeRow {
                owner: r.try_get(0)?,
                host: r.try_get(1)?,
                pid: r.try_get(2)?,
                queues: queues
                    .split(',')
                    .filter(|q| !q.is_empty())
                    .map(str::to_owned)
                    .collect(),
                concurrency: r.try_get(4)?,
                in_flight: r.try_get(5)?,
                started_at: crate::time::stored(r, 6)?,
                heartbeat_at: crate::time::stored(r, 7)?,
                node: r.try_get(8)?,
            })
        })
        .collect()
    }

    /// Counts per minute from `since` on (of one queue, if given), summed
    /// over tasks (and queues): the minutes that have counts, oldest first.
    pub(crate) async fn throughput(
        &self,
        since: DateTime<Utc>,
        queue: Option<&str>,
    ) -> Result<Vec<MinuteRow>> {
        let sql = format!(
            "SELECT minute, CAST(SUM(started) AS UNSIGNED), CAST(SUM(succeeded) AS UNSIGNED), \
             CAST(SUM(failed) AS UNSIGNED), CAST(SUM(dead) AS UNSIGNED) FROM queue_throughput \
             WHERE minute >= ?{} GROUP BY minute ORDER BY minute",
            if queue.is_some() {
                " AND queue = ?"
            } else {
                ""
            }
        );
        let mut q = self.q(&sql).bind(At(since));
        if let Some(queue) = queue {
            q = q.bind(queue);
        }
        let sum = |r: &sqlx::mysql::MySqlRow, i: usize| -> Result<u64> { Ok(r.try_get(i)?) };
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(MinuteRow {
                    minute: crate::time::stored(r, 0)?,
                    counts: Counts {
                        started: sum(r, 1)?,
                        succeeded: sum(r, 2)?,
                        failed: sum(r, 3)?,
                        dead: sum(r, 4)?,
                    },
                })
            })
            .collect()
    }

    /// A page of jobs, newest first, and the id to continue below (the
    /// page is full and more may follow, or the scan's budget ran out).
    pub(crate) async fn list_jobs(&self, f: &ListFilter) -> Result<(Vec<JobSummary>, Option<u64>)> {
        let high = match f.before {
            Some(h) => h,
            None => {
                let max: Option<u64> = sqlx::raw_sql(AssertSqlSafe(
                    self.limited("SELECT MAX(id) FROM queue_jobs"),
                ))
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?;
                match max {
                    Some(m) => m.saturating_add(1),
                    None => return Ok((Vec::new(), None)),
                }
            }
        };
        if high == 0 {
            return Ok((Vec::new(), None));
        }
        if let Some(page) = self.list_by_state_index(f, high).await? {
            return Ok(page);
        }
        let min: Option<u64> = sqlx::raw_sql(AssertSqlSafe(
            self.limited("SELECT MIN(id) FROM queue_jobs"),
        ))
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        let Some(min) = min else {
            return Ok((Vec::new(), None));
        };
        let mut jobs = Vec::new();
        let mut upper = high;
        let stop = high.saturating_sub(LIST_BUDGET);
        while upper > min {
            let low = upper.saturating_sub(LIST_WINDOW).max(min);
            let sql = list_window_sql(f, low, upper, f.limit - jobs.len());
            for r in sqlx::raw_sql(AssertSqlSafe(self.limited(&sql)))
                .fetch_all(&self.pool)
                .await?
            {
                jobs.push(summary(&r)?);
            }
            if jobs.len() >= f.limit {
                let next = jobs.last().map(|j| j.id.0);
                return Ok((jobs, next));
            }
            upper = low;
            if upper <= stop && upper > min {
                // The budget is spent: a short page, and where to go on.
                return Ok((jobs, Some(upper)));
            }
        }
        Ok((jobs, None))
    }

    /// A page read through the state's own index, when the filter names a
    /// state that has one and it holds at most [`LIST_INDEX_CAP`] jobs
    /// below `high`; `None` otherwise.
    async fn list_by_state_index(
        &self,
        f: &ListFilter,
        high: u64,
    ) -> Result<Option<(Vec<JobSummary>, Option<u64>)>> {
        let Some(sql) = f.state.and_then(|s| list_index_sql(s, high)) else {
            return Ok(None);
        };
        let mut ids: Vec<u64> = sqlx::raw_sql(AssertSqlSafe(self.limited(&sql)))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        if ids.len() > LIST_INDEX_CAP {
            return Ok(None);
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let mut jobs = Vec::new();
        for (i, chunk) in ids.chunks(500).enumerate() {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM queue_jobs WHERE id IN ({}){} ORDER BY id DESC LIMIT {}",
                inline_list(chunk),
                filter_sql(f),
                f.limit - jobs.len()
            );
            for r in sqlx::raw_sql(AssertSqlSafe(self.limited(&sql)))
                .fetch_all(&self.pool)
                .await?
            {
                jobs.push(summary(&r)?);
            }
            if jobs.len() >= f.limit {
                let last = jobs.last().map_or(0, |j| j.id.0);
                // More below the last one listed?
                let more = ids[i * 500..].iter().any(|&id| id < last);
                return Ok(Some((jobs, more.then_some(last))));
            }
        }
        Ok(Some((jobs, None)))
    }

    /// Makes a scheduled job due now: ready, into the claim index by the
    /// path every dispatch takes (a slot of its concurrency key first, or
    /// blocked when the key is full). A reserved rate-window start is given
    /// up: the claim checks its rate limit again. Returns whether a
    /// scheduled job had this id.
    pub(crate) async fn run_now(&self, id: JobId, now: DateTime<Utc>) -> Result<bool> {
        self.make_ready(
            id,
            JobState::Scheduled,
            "scheduled_at = NULL, rate_window = NULL",
            now,
        )
        .await
    }

    /// Puts dead jobs (of `task`, if given) back to ready, attempts reset,
    /// 500 per transaction, through the claim index's usual way in.
    /// Returns how many.
    pub(crate) async fn retry_dead_all(
        &self,
        task: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let mut total = 0;
        loop {
            let n = retry_deadlocks(|| async {
                let mut tx = self.begin().await?;
                let sql = format!(
                    "SELECT id FROM queue_jobs FORCE INDEX (queue_jobs_dead) \
                     WHERE dead_at IS NOT NULL AND state = ?{} ORDER BY dead_at, id LIMIT 500 \
                     FOR UPDATE SKIP LOCKED",
                    if task.is_some() { " AND task = ?" } else { "" }
                );
                let mut q = self.q(&sql).bind(JobState::Dead.as_u8());
                if let Some(task) = task {
                    q = q.bind(task);
                }
                let ids: Vec<u64> = q
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                if ids.is_empty() {
                    tx.rollback().await?;
                    return Ok(0);
                }
                let sql = format!(
                    "UPDATE queue_jobs SET state = ?, attempts = 0, dead_at = NULL, run_at = ?, \
                     updated_at = ? WHERE id IN ({}) AND state = ?",
                    placeholders(ids.len())
                );
                let q = self
                    .q(&sql)
                    .bind(JobState::Ready.as_u8())
                    .bind(At(now))
                    .bind(At(now));
                bind_ids(q, &ids)
                    .bind(JobState::Dead.as_u8())
                    .execute(&mut *tx)
                    .await?;
                self.index_ready_by_id(&mut tx, &ids, ReadyOrder::Id)
                    .await?;
                tx.commit().await?;
                Ok(ids.len() as u64)
            })
            .await?;
            total += n;
            if n < 500 {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_per_minute_queue_and_task_and_writes_rows_in_key_order() {
        let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 59).unwrap();
        let mut tally = Tally::default();
        assert!(tally.upsert_sql().is_none());
        tally.add(t0, "q", "b", Event::Started);
        tally.add(t0, "q", "b", Event::Succeeded);
        tally.add(t0 + chrono::Duration::seconds(1), "q", "a", Event::Dead);
        tally.add(t0, "q", "a", Event::Failed);
        let mut other = Tally::default();
        other.add(t0, "q", "b", Event::Started);
        tally.merge(other);
        let sql = tally.upsert_sql().unwrap();
        // 'q' is 71, 'a' 61, 'b' 62.
        let a = sql
            .find("'2026-03-01 10:00:00.000000', _utf8mb4 X'71', _utf8mb4 X'61', 0, 0, 1, 0")
            .unwrap();
        let b = sql
            .find("'2026-03-01 10:00:00.000000', _utf8mb4 X'71', _utf8mb4 X'62', 2, 1, 0, 0")
            .unwrap();
        let c = sql
            .find("'2026-03-01 10:01:00.000000', _utf8mb4 X'71', _utf8mb4 X'61', 0, 0, 0, 1")
            .unwrap();
        assert!(a < b && b < c, "{sql}");
        assert!(sql.ends_with("dead = dead + VALUES(dead)"));
    }

    #[test]
    fn listing_statements_inline_only_numbers_and_hex() {
        let f = ListFilter {
            state: Some(JobState::Dead),
            queue: Some("mail".into()),
            task: Some("x' OR 1=1 --".into()),
            before: None,
            limit: 50,
        };
        let sql = list_window_sql(&f, 10, 20, 50);
        assert!(
            sql.contains("id >= 10 AND id < 20 AND state = 3 AND queue = _utf8mb4 X'6D61696C'"),
            "{sql}"
        );
        assert!(!sql.contains("OR 1=1"), "{sql}");
        assert!(sql.ends_with("ORDER BY id DESC LIMIT 50"));
        assert_eq!(
            list_index_sql(JobState::Dead, 99).unwrap(),
            "SELECT id FROM queue_jobs FORCE INDEX (queue_jobs_dead) WHERE dead_at IS NOT NULL AND id < 99 LIMIT 10001"
        );
        assert!(list_index_sql(JobState::Ready, 99).is_none());
    }
}
