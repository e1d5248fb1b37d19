//! The claim path: per-(queue, priority) cursors over `queue_ready`.
//!
//! Rows leave `queue_ready` at the head of each (queue, priority) range and
//! enter at its tail (`seq` is AUTO_INCREMENT). Every claimed row leaves a
//! delete-marked record behind until InnoDB purges it, and purge stalls while
//! any session holds an old read view. A claim that starts at the head of the
//! range walks all of that garbage; this one starts after the last row this
//! runtime claimed in each priority, so it walks only what other claimers
//! took since (bounded by their batch sizes), however much garbage exists.
//!
//! A row can still appear *behind* a cursor: its inserting transaction
//! committed after a later row was claimed, or another claimer locked it and
//! rolled back. A non-locking probe (see [`Cursors::probe_ranges`]) looks
//! behind the cursors — the last second's worth of range often, the whole
//! range rarely — and the rows it finds are claimed by primary key, so the
//! cursor itself never moves back.

use chrono::{DateTime, Utc};
use queue_core::{JobId, JobState, Priority};
use sqlx::{AssertSqlSafe, Row};

use super::limits::{LimitTable, LimitedPlan};
use super::{
    ReadyOrder, Store, bind_ids, inline_list, placeholders, repeated, sql_time, value_rows,
};
use crate::error::Result;
use crate::time::At;

pub(crate) const LEVELS: usize = Priority::LEVELS as usize;

/// Rows one probe reports at most.
const PROBE_LIMIT: usize = 200;

/// A job claimed by this runtime.
#[derive(Debug, Clone)]
pub(crate) struct ClaimedJob {
    pub id: JobId,
    pub task: String,
    pub queue: String,
    /// 0 (most urgent) to 4: prefetched jobs wait for a slot in this order.
    pub priority: u8,
    pub payload: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub deadline_ms: Option<u64>,
    /// When the job was due: enqueue-to-start latency is measured from it.
    pub run_at: DateTime<Utc>,
    /// The concurrency key whose slot the job holds while it runs.
    pub slot: Option<Vec<u8>>,
}

/// What a claim brought back.
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    /// The jobs, in claim order.
    pub(crate) jobs: Vec<ClaimedJob>,
    /// The `(priority, seq)` keys of the claim-index rows taken (more than
    /// the jobs when some rows' jobs were cancelled).
    pub(crate) keys: Vec<(u8, u64)>,
    /// How many of the successes the claim carried it deleted.
    pub(crate) acked: u64,
}

/// A lane of the claim index: the rows with `(seq DIV LANE_WIDTH) MOD of =
/// is`. On a Galera cluster whose runtimes claim through several nodes, the
/// runtimes of each node claim their node's lane first, so that claims on
/// different nodes take disjoint rows instead of racing for the head of the
/// index and losing at certification (docs/scaling.md, "Claim lanes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lane {
    /// How many lanes (nodes with live runtimes).
    pub(crate) of: u32,
    /// This runtime's.
    pub(crate) is: u32,
}

/// Consecutive `seq`s per stretch of a lane: the stretches of the lanes
/// alternate along the index (so each lane holds every priority and run
/// time), and `seq`s that step by a Galera node's
/// `auto_increment_increment` still spread over them.
pub(crate) const LANE_WIDTH: u64 = 8;

impl Lane {
    /// The lanes of runtimes claiming through `nodes` (the nodes with live
    /// runtimes), for one claiming through `mine`: none with fewer than two
    /// nodes (one node, or off Galera: the index is claimed as one), or if
    /// `mine` is not among them (not registered yet).
    pub(crate) fn of_nodes(nodes: &[String], mine: &str) -> Option<Lane> {
        let mut nodes: Vec<&String> = nodes.iter().collect();
        nodes.sort();
        nodes.dedup();
        let is = nodes.iter().position(|n| n.as_str() == mine)?;
        (nodes.len() >= 2).then(|| Lane {
            of: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
            is: u32::try_from(is).unwrap_or(0),
        })
    }

    /// The condition on `queue_ready.seq` that keeps a read to this lane.
    fn condition(self) -> String {
        format!(" AND (seq DIV {LANE_WIDTH}) MOD {} = {}", self.of, self.is)
    }
}

/// One claim's inputs, taken from a queue's cursors (`runtime::cursors`).
#[derive(Debug)]
pub(crate) struct ClaimTicket {
    pub(crate) queue: String,
    /// Claim after these `seq`s, per priority.
    pub(crate) last: [u64; LEVELS],
    /// Claim-index rows found behind the cursors, claimed by key.
    pub(crate) stragglers: Vec<(u8, u64)>,
    /// At most this many jobs.
    pub(crate) limit: usize,
    /// This runtime's lane, claimed first (the claim tops up from the whole
    /// index when its lane has fewer rows than the limit).
    pub(crate) lane: Option<Lane>,
}

impl Store {
    /// Makes sure each (queue, priority) range of the claim index starts with
    /// a sentinel row (`seq = 0`, `job_id = 0`) that is never claimed or
    /// deleted.
    ///
    /// InnoDB skips delete-marked records *before* it checks whether a
    /// record is past the end of the scanned range. Without a sentinel, the
    /// claim's range for an empty priority (say 0) ends by walking into the
    /// head of the next priority's range — exactly where the delete-marked
    /// records of claimed jobs pile up while purge is held back — and walks
    /// all of them on every claim. A live sentinel at the head of every range
    /// stops that walk at once. Measured on MariaDB 10.11 with 15,000
    /// delete-marked rows under a held read view: an empty-range locking read
    /// took 1.05 ms without sentinels, 0.14 ms with them.
    pub(crate) async fn ensure_sentinels(&self, queues: &[String]) -> Result<()> {
        if queues.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        // An explicit 0 in an AUTO_INCREMENT column means "generate" unless
        // NO_AUTO_VALUE_ON_ZERO is set: set it for this statement only.
        sqlx::query(
            "SET @queue_saved_sql_mode = @@SESSION.sql_mode, \
             SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',NO_AUTO_VALUE_ON_ZERO')",
        )
        .execute(&mut *conn)
        .await?;
        let sql = format!(
            "INSERT IGNORE INTO queue_ready (queue, priority, seq, job_id) VALUES {}",
            value_rows("(?, ?, 0, 0)", queues.len() * LEVELS)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for queue in queues {
            for p in 0..LEVELS as u8 {
                q = q.bind(queue).bind(p);
            }
        }
        let inserted = q.execute(&mut *conn).await;
        let restored = sqlx::query("SET SESSION sql_mode = @queue_saved_sql_mode")
            .execute(&mut *conn)
            .await;
        if restored.is_err() {
            // Never hand back a connection with a changed sql_mode.
            conn.close_on_drop();
        }
        inserted?;
        restored?;
        Ok(())
    }

    /// Non-locking look behind the cursors. Returns rows that are in the
    /// claim index at or below a cursor: committed late, or released.
    /// In `lane` only, when given: the other lanes' rows behind the cursor
    /// are their runtimes' to claim.
    pub(crate) async fn probe(
        &self,
        queue: &str,
        ranges: &[(u8, u64, u64)],
        lane: Option<Lane>,
    ) -> Result<Vec<(u8, u64)>> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT priority, seq FROM queue_ready FORCE INDEX (PRIMARY) WHERE queue = ? AND ({}){} \
             ORDER BY priority, seq LIMIT {PROBE_LIMIT}",
            repeated(
                "(priority = ? AND seq > ? AND seq <= ?)",
                ranges.len(),
                " OR "
            ),
            lane.map_or(String::new(), Lane::condition)
        );
        let mut q = self.q(&sql).bind(queue);
        for (p, low, high) in ranges {
            q = q.bind(*p).bind(*low).bind(*high);
        }
        Ok(q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| (r.get::<u8, _>(0), r.get::<u64, _>(1)))
            .collect())
    }

    /// Claims up to `ticket.limit` ready jobs of its queue in order of
    /// priority, then `seq` (run time, then enqueue order), and leases them
    /// to `owner` until `lease_until`; each claim counts an attempt.
    /// [`Cursors::settle`] then records the result. Several tickets of one queue may be in
    /// flight at once: each skips the rows the others hold locked.
    pub(crate) async fn claim_ticket(
        &self,
        ticket: &ClaimTicket,
        owner: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
        limits: &LimitTable,
        acks: &[(JobId, u32)],
    ) -> Result<Claimed> {
        if ticket.limit == 0 && acks.is_empty() {
            return Ok(Claimed::default());
        }
        super::retry_deadlocks(|| self.try_claim(ticket, owner, lease_until, now, limits, acks))
            .await
    }

    /// One claim transaction in two round trips, as multi-statement text
    /// queries whose values are inlined literals (integers, a validated
    /// queue name, this runtime's owner id, times formatted here):
    ///
    /// 1. `SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION;
    ///    SELECT … FOR UPDATE SKIP LOCKED`
    /// 2. `DELETE` the claimed rows from `queue_ready`; `UPDATE` their jobs to
    ///    running; `SELECT` the jobs; `COMMIT`
    ///
    /// On any error the transaction is rolled back, and a connection whose
    /// state is unknown is closed instead of returned to the pool. On a
    /// Galera node the begin and the `COMMIT` are the guarded ones
    /// (`store::galera`): a claim aborted by another node's write set fails
    /// with 1213 and is retried, never half committed.
    async fn try_claim(
        &self,
        ticket: &ClaimTicket,
        owner: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
        limits: &LimitTable,
        acks: &[(JobId, u32)],
    ) -> Result<Claimed> {
        let mut conn = self.pool.acquire().await?;
        let result = self
            .claim_on(&mut conn, ticket, owner, (lease_until, now), (limits, acks))
            .await;
        if result.is_err() {
            self.roll_back_or_close(&mut conn).await;
        }
        result
    }

    async fn claim_on(
        &self,
        conn: &mut sqlx::MySqlConnection,
        ticket: &ClaimTicket,
        owner: &str,
        (lease_until, now): (DateTime<Utc>, DateTime<Utc>),
        (limits, acks): (&LimitTable, &[(JobId, u32)]),
    ) -> Result<Claimed> {
        let queue = ticket.queue.as_str();
        // Successes that ride in this transaction (one commit less for
        // them): deleted first, fenced by their attempt as the acker does.
        let ack_delete = (!acks.is_empty()).then(|| {
            self.limited(&format!(
                "DELETE FROM queue_jobs WHERE {}",
                super::fence(acks)
            ))
        });
        let pick = claim_sql_in(
            queue,
            &ticket.last,
            &ticket.stragglers,
            ticket.limit,
            ticket.lane,
        );
        let first = format!("{}; {}", self.begin_sql(), self.limited(&pick));
        let mut rows = sqlx::raw_sql(AssertSqlSafe(first))
            .fetch_all(&mut *conn)
            .await?;
        if ticket.lane.is_some() && rows.len() < ticket.limit {
            // The lane is short (its runtimes are ahead, or the queue is
            // running dry): top up from the whole index, in the same
            // transaction. The rows already locked come back and are
            // counted once.
            let whole = claim_sql(queue, &ticket.last, &ticket.stragglers, ticket.limit);
            let more = sqlx::raw_sql(AssertSqlSafe(self.limited(&whole)))
                .fetch_all(&mut *conn)
                .await?;
            rows = top_up(rows, more, ticket.limit)?;
        }
        if rows.is_empty() {
            let acked = match &ack_delete {
                Some(d) => {
                    // The DELETE's count: the first result (a Galera
                    // commit's own statements count rows too).
                    use futures_util::TryStreamExt;
                    let text = format!("{d}; {}", self.commit_sql());
                    let mut results = sqlx::raw_sql(AssertSqlSafe(text)).fetch_many(&mut *conn);
                    let mut acked = None;
                    while let Some(item) = results.try_next().await? {
                        if let sqlx::Either::Left(done) = item {
                            acked.get_or_insert(done.rows_affected());
                        }
                    }
                    acked.unwrap_or(0)
                }
                None => {
                    sqlx::raw_sql(self.commit_sql()).execute(&mut *conn).await?;
                    0
                }
            };
            return Ok(Claimed {
                acked,
                ..Claimed::default()
            });
        }
        let keys: Vec<(u8, u64)> = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let mut ids: Vec<u64> = Vec::with_capacity(rows.len());
        let mut limited: Vec<u64> = Vec::new();
        for r in &rows {
            let id: u64 = r.try_get(2)?;
            if r.try_get::<u8, _>(3)? != 0 {
                limited.push(id);
            } else {
                ids.push(id);
            }
        }
        // Jobs with a limit to check: decided (and locked) in a round trip
        // of their own; batches without them take none.
        let plan = if limited.is_empty() {
            LimitedPlan::default()
        } else {
            self.plan_limited(&mut *conn, &limited, limits, now).await?
        };
        ids.extend(&plan.run);
        let order: Vec<u64> = rows
            .iter()
            .filter_map(|r| r.try_get::<u64, _>(2).ok())
            .collect();

        // Delete by primary key, priority by priority.
        let levels: Vec<String> = (0..LEVELS as u8)
            .filter_map(|p| {
                let mut seqs = keys.iter().filter(|k| k.0 == p).map(|k| k.1).peekable();
                seqs.peek()?;
                Some(format!(
                    "(priority = {p} AND seq IN ({}))",
                    inline_list(seqs)
                ))
            })
            .collect();
        let delete = format!(
            "DELETE FROM queue_ready WHERE queue = '{queue}' AND ({})",
            levels.join(" OR ")
        );
        let (running, ready) = (JobState::Running.as_u8(), JobState::Ready.as_u8());
        let mut second: Vec<String> = ack_delete.iter().cloned().collect();
        second.push(self.limited(&delete));
        second.extend(plan.statements.iter().map(|s| self.limited(s)));
        if !ids.is_empty() {
            let list = inline_list(&ids);
            // `updated_at` is this claim's own `now` (claims of one runtime
            // get distinct ones), which `release_lost_claim` and the
            // SELECT below recognise the claim by.
            let update = format!(
                "UPDATE queue_jobs SET state = {running}, attempts = attempts + 1, \
                 lease_expires_at = '{lease}', lease_owner = '{owner}', updated_at = '{now}', \
                 rate_window = NULL \
                 WHERE id IN ({list}) AND state = {ready}",
                lease = sql_time(lease_until),
                now = sql_time(now),
            );
            let select = format!(
                "SELECT id, task, queue, priority, payload, attempts, max_attempts, deadline_ms, run_at, \
                 IF(slot = 1, concurrency_key, NULL) \
                 FROM queue_jobs WHERE id IN ({list}) AND state = {running} AND lease_owner = '{owner}' \
                 AND updated_at = '{now}'",
                now = sql_time(now),
            );
            second.push(self.limited(&update));
            second.push(self.limited(&select));
        }
        second.push(self.commit_sql().to_owned());
        let second = second.join("; ");
        let mut rows = Vec::new();
        let mut acked = None;
        {
            use futures_util::TryStreamExt;
            let mut results = sqlx::raw_sql(AssertSqlSafe(second)).fetch_many(&mut *conn);
            while let Some(item) = results.try_next().await? {
                match item {
                    sqlx::Either::Left(done) => {
                        // The first statement's count is the successes'.
                        if ack_delete.is_some() && acked.is_none() {
                            acked = Some(done.rows_affected());
                        }
                    }
                    sqlx::Either::Right(row) => rows.push(row),
                }
            }
        }
        // The claim has committed: a row that cannot be decoded must not
        // fail the batch (its job stays leased and the rescuer takes it
        // back when the lease expires); the others run.
        let mut jobs: Vec<ClaimedJob> = rows
            .iter()
            .filter_map(|r| match decode_claimed(r) {
                Ok(job) => Some(job),
                Err(e) => {
                    let id = r.try_get::<u64, _>(0).ok();
                    tracing::error!(job.id = ?id, error = %e, "a claimed job's row cannot be decoded; left to its lease");
                    None
                }
            })
            .collect();
        // Keep claim order (priority, seq).
        jobs.sort_by_key(|j| order.iter().position(|&i| i == j.id.0));
        Ok(Claimed {
            jobs,
            keys,
            acked: acked.unwrap_or(0),
        })
    }

    /// Hands back the jobs that the claim of `owner` made at `claimed_at`
    /// (leasing them until `lease_until`) still holds: back to ready, the
    /// attempt not spent. For a claim that failed on a connection error
    /// after its COMMIT may have reached the server: its jobs were leased
    /// but never started. Heartbeats and outcomes change `updated_at` or
    /// the lease of every job that did start. Returns how many.
    pub(crate) async fn release_lost_claim(
        &self,
        owner: &str,
        claimed_at: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        super::retry_deadlocks(|| async {
            let mut tx = self.begin().await?;
            let rows = self
                .q(
                    "SELECT id, IF(slot = 1, concurrency_key, NULL) FROM queue_jobs \
                     FORCE INDEX (queue_jobs_lease) \
                     WHERE lease_expires_at = ? AND lease_owner = ? AND state = ? AND updated_at = ? \
                     FOR UPDATE",
                )
                .bind(At(lease_until))
                .bind(owner)
                .bind(JobState::Running.as_u8())
                .bind(At(claimed_at))
                .fetch_all(&mut *tx)
                .await?;
            let ids: Vec<u64> = rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            let mut freed: std::collections::BTreeMap<Vec<u8>, u32> = Default::default();
            for r in &rows {
                if let Some(key) = r.try_get::<Option<Vec<u8>>, _>(1)? {
                    *freed.entry(key).or_insert(0) += 1;
                }
            }
            if ids.is_empty() {
                tx.rollback().await?;
                return Ok(0);
            }
            let list = placeholders(ids.len());
            let sql = format!(
                "UPDATE queue_jobs SET state = ?, lease_expires_at = NULL, lease_owner = NULL, \
                 attempts = attempts - 1, run_at = ?, updated_at = ?, slot = 0, \
                 last_error = 'handed back: the claim that leased it lost its reply' \
                 WHERE id IN ({list})"
            );
            let q = self
                .q(&sql)
                .bind(JobState::Ready.as_u8())
                .bind(At(now))
                .bind(At(now));
            bind_ids(q, &ids).execute(&mut *tx).await?;
            self.index_ready_by_id(&mut tx, &ids, ReadyOrder::Id)
                .await?;
            self.release_slots(&mut tx, &freed, now).await?;
            tx.commit().await?;
            Ok(ids.len() as u64)
        })
        .await
    }
}

/// The claim statement for `queue` (a validated queue name: no quotes),
/// the cursors `last` and the straggler keys, with every value inlined.
pub(crate) fn claim_sql(
    queue: &str,
    last: &[u64; LEVELS],
    stragglers: &[(u8, u64)],
    limit: usize,
) -> String {
    claim_sql_in(queue, last, stragglers, limit, None)
}

/// [`claim_sql`] kept to `lane`, when given.
pub(crate) fn claim_sql_in(
    queue: &str,
    last: &[u64; LEVELS],
    stragglers: &[(u8, u64)],
    limit: usize,
    lane: Option<Lane>,
) -> String {
    format!(
        "SELECT priority, seq, job_id, limited FROM queue_ready FORCE INDEX (PRIMARY) WHERE {}{} \
         ORDER BY priority, seq LIMIT {limit} FOR UPDATE SKIP LOCKED",
        claim_ranges(queue, last, stragglers),
        lane.map_or(String::new(), Lane::condition)
    )
}

/// A lane's rows topped up with `more` (from the whole index): every row of
/// the lane, then the first others, `limit` in all at most, each once, in
/// `(priority, seq)` order.
fn top_up(
    rows: Vec<sqlx::mysql::MySqlRow>,
    more: Vec<sqlx::mysql::MySqlRow>,
    limit: usize,
) -> Result<Vec<sqlx::mysql::MySqlRow>> {
    let key =
        |r: &sqlx::mysql::MySqlRow| -> Result<(u8, u64)> { Ok((r.try_get(0)?, r.try_get(1)?)) };
    let mut all = Vec::with_capacity(limit);
    for r in rows {
        all.push((key(&r)?, r));
    }
    for r in more {
        if all.len() >= limit {
            break;
        }
        let k = key(&r)?;
        if !all.iter().any(|(seen, _)| *seen == k) {
            all.push((k, r));
        }
    }
    all.sort_by_key(|(k, _)| *k);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

/// `queue = '…' AND (…)`: the ranges after the cursors, and the stragglers.
fn claim_ranges(queue: &str, last: &[u64; LEVELS], stragglers: &[(u8, u64)]) -> String {
    debug_assert!(queue_core::validate_queue_name(queue).is_ok());
    let mut sql = format!("queue = '{queue}' AND (");
    for (p, &cursor) in last.iter().enumerate() {
        if p > 0 {
            sql.push_str(" OR ");
        }
        sql.push_str(&format!("(priority = {p} AND seq > {cursor})"));
        let mut mine = stragglers
            .iter()
            .filter(|s| usize::from(s.0) == p)
            .map(|s| s.1)
            .peekable();
        if mine.peek().is_some() {
            sql.push_str(&format!(
                " OR (priority = {p} AND seq IN ({}))",
                inline_list(mine)
            ));
        }
    }
    sql.push(')');
    sql
}

impl Store {
    /// Whether anything may be claimable for `ticket`: one non-locking
    /// statement, outside any transaction — what an idle runtime sends
    /// instead of a claim transaction. A row another claimer is taking
    /// right now may count (its delete is not yet committed): the claim that
    /// follows then finds nothing, which is harmless.
    pub(crate) async fn has_ready(&self, ticket: &ClaimTicket) -> Result<bool> {
        let sql = format!(
            "SELECT 1 FROM queue_ready FORCE INDEX (PRIMARY) WHERE {} LIMIT 1",
            claim_ranges(&ticket.queue, &ticket.last, &ticket.stragglers)
        );
        Ok(sqlx::raw_sql(AssertSqlSafe(self.limited(&sql)))
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }
}

/// A claimed job from its row (`SELECT id, task, queue, priority, payload,
/// attempts, max_attempts, deadline_ms, run_at`). A zero `run_at`, which
/// only SQL from outside the runtime can store, reads as the earliest time.
pub(crate) fn decode_claimed(r: &sqlx::mysql::MySqlRow) -> crate::error::Result<ClaimedJob> {
    Ok(ClaimedJob {
        id: JobId(r.try_get(0)?),
        task: r.try_get(1)?,
        queue: r.try_get(2)?,
        priority: r.try_get(3)?,
        payload: r.try_get(4)?,
        attempt: r.try_get(5)?,
        max_attempts: r.try_get(6)?,
        deadline_ms: r.try_get(7)?,
        run_at: crate::time::stored(r, 8)?,
        slot: r.try_get(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_one_per_node_with_runtimes_and_none_for_one_node() {
        let nodes = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            Lane::of_nodes(&nodes(&["c", "a", "b"]), "b"),
            Some(Lane { of: 3, is: 1 }),
            "sorted, so every runtime numbers the nodes alike"
        );
        assert_eq!(
            Lane::of_nodes(&nodes(&["a", "a"]), "a"),
            None,
            "one node: the whole index"
        );
        assert_eq!(
            Lane::of_nodes(&nodes(&["a", "b"]), "c"),
            None,
            "not registered yet"
        );
        let sql = claim_sql_in("mail", &[0; LEVELS], &[], 10, Some(Lane { of: 3, is: 2 }));
        assert!(
            sql.contains(
                ") AND (seq DIV 8) MOD 3 = 2 ORDER BY priority, seq LIMIT 10 FOR UPDATE SKIP LOCKED"
            ),
            "{sql}"
        );
        assert_eq!(
            claim_sql_in("mail", &[0; LEVELS], &[], 10, None),
            claim_sql("mail", &[0; LEVELS], &[], 10),
            "no lane: the claim of one server"
        );
    }

    #[test]
    fn claim_sql_orders_by_the_primary_key() {
        let sql = claim_sql("mail", &[0, 5, 0, 0, 9], &[(4, 3), (4, 8)], 10);
        assert_eq!(
            sql,
            "SELECT priority, seq, job_id, limited FROM queue_ready FORCE INDEX (PRIMARY) WHERE queue = 'mail' AND (\
             (priority = 0 AND seq > 0) OR (priority = 1 AND seq > 5) OR (priority = 2 AND seq > 0) OR \
             (priority = 3 AND seq > 0) OR (priority = 4 AND seq > 9) OR (priority = 4 AND seq IN (3, 8))\
             ) ORDER BY priority, seq LIMIT 10 FOR UPDATE SKIP LOCKED"
        );
    }

    #[test]
    fn times_are_datetime6_literals() {
        use chrono::TimeZone;
        let t = Utc.with_ymd_and_hms(2026, 3, 29, 1, 2, 3).unwrap()
            + chrono::Duration::microseconds(45);
        assert_eq!(sql_time(t), "2026-03-29 01:02:03.000045");
    }
}
