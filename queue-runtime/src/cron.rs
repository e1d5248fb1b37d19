//! Recurring tasks: `#[task(cron = "...")]`.
//!
//! Each recurring task has one row in `queue_cron` holding the last tick
//! that fired. Every runtime computes the latest due tick from its clock and
//! tries to move `last_tick` forward to it with a conditional UPDATE
//! (`WHERE last_tick < tick`) in the same transaction that enqueues the
//! tick's job. The row lock makes the UPDATEs of competing runtimes
//! serialise, and only one of them finds `last_tick < tick` still true: each
//! tick fires once cluster-wide, by construction, whatever the timers do.
//!
//! A runtime fires the recurring tasks whose queue it serves; run at least
//! one runtime per such queue with cron enabled.
//!
//! After downtime the latest missed tick fires once (`CatchUp::Latest`, the
//! default), or missed ticks are skipped (`CatchUp::Skip`): `last_tick` moves
//! forward without a job.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use queue_core::{CatchUp, Schedule};
use sqlx::Row;

use crate::client::Client;
use crate::error::Result;
use crate::registry::TaskRegistration;
use crate::runtime::Shared;
use crate::store::NewJob;
use crate::time::At;

/// How late a tick may be noticed and still count as on time for
/// `CatchUp::Skip`.
const ON_TIME: Duration = Duration::from_secs(5);

/// A recurring task as the database knows it.
#[derive(Clone, Debug)]
pub struct RecurringTask {
    /// The task's stored name.
    pub task: String,
    /// The cron expression (seconds first).
    pub expression: String,
    /// The IANA time zone it is evaluated in.
    pub timezone: String,
    /// The last tick that fired (or, for a task never fired, when it was
    /// first registered).
    pub last_tick: DateTime<Utc>,
    /// The next tick after now, by this client's clock.
    pub next_tick: Option<DateTime<Utc>>,
}

impl Client {
    /// Every recurring task registered in the database, with its next fire time.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub async fn recurring(&self) -> Result<Vec<RecurringTask>> {
        let rows = sqlx::query(
            self.store()
                .sql("SELECT task, expression, timezone, last_tick FROM queue_cron ORDER BY task"),
        )
        .fetch_all(self.pool())
        .await?;
        let now = self.now();
        rows.iter()
            .map(|r| {
                let expression: String = r.try_get(1)?;
                let timezone: String = r.try_get(2)?;
                let next_tick = Schedule::parse(&expression, Some(&timezone))
                    .ok()
                    .and_then(|s| s.next_after(now));
                Ok(RecurringTask {
                    task: r.try_get(0)?,
                    expression,
                    timezone,
                    last_tick: crate::time::stored(r, 3)?,
                    next_tick,
                })
            })
            .collect()
    }
}

struct CronTask {
    reg: &'static TaskRegistration,
    schedule: Schedule,
}

/// Registers the program's recurring tasks and fires their ticks until the
/// runtime stops.
pub(crate) async fn scheduler(shared: Arc<Shared>) {
    let tasks: Vec<CronTask> = shared
        .registry
        .iter()
        // A runtime fires the recurring tasks of the queues it serves.
        .filter(|reg| shared.queues.iter().any(|q| q == reg.options.queue))
        .filter_map(|reg| {
            let expr = reg.options.cron?;
            // Validated by Registry::collect.
            let schedule = Schedule::parse(expr, reg.options.tz).ok()?;
            Some(CronTask { reg, schedule })
        })
        .collect();
    if tasks.is_empty() {
        return;
    }
    let client = shared.client.clone();
    let mut clock_rx = client.inner.clock.watch();
    let mut registered = false;
    let mut failures = 0;
    loop {
        let mut wait = shared
            .poll_interval
            .max(Duration::from_millis(100))
            .min(Duration::from_secs(1));
        let sent = std::time::Instant::now();
        let step = async {
            if !registered {
                register(&client, &tasks).await?;
                registered = true;
            }
            fire_due(&client, &tasks).await
        };
        let stepped = step.await;
        shared.outage.track("cron", sent, &stepped);
        match stepped {
            Ok(next) => {
                failures = 0;
                let now = client.now();
                if let Some(next) = next {
                    if let Ok(d) = (next - now).to_std() {
                        wait = wait.min(d + Duration::from_millis(1));
                    } else {
                        wait = Duration::from_millis(1);
                    }
                }
            }
            Err(_) => {
                failures += 1;
                wait = crate::runtime::Outage::backoff(failures);
            }
        }
        let mut stop = shared.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::clock::moved(&mut clock_rx) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Inserts a `queue_cron` row for each task that has none; a new task
/// starts from now, so its first tick is the next one.
async fn register(client: &Client, tasks: &[CronTask]) -> Result<()> {
    let now = client.now();
    for t in tasks {
        sqlx::query(client.store().sql(
            "INSERT INTO queue_cron (task, expression, timezone, last_tick, next_tick, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE expression = VALUES(expression), timezone = VALUES(timezone), \
             updated_at = VALUES(updated_at)",
        ))
        .bind(t.reg.options.name)
        .bind(t.schedule.expression())
        .bind(t.schedule.timezone().name())
        .bind(At(now))
        .bind(crate::time::opt(t.schedule.next_after(now)))
        .bind(At(now))
        .execute(client.pool())
        .await?;
    }
    Ok(())
}

/// Fires every due tick once; returns the earliest next tick.
async fn fire_due(client: &Client, tasks: &[CronTask]) -> Result<Option<DateTime<Utc>>> {
    let now = client.now();
    let rows = sqlx::query(client.store().sql("SELECT task, last_tick FROM queue_cron"))
        .fetch_all(client.pool())
        .await?;
    let last: HashMap<String, DateTime<Utc>> = rows
        .iter()
        .map(|r| Ok((r.try_get::<String, _>(0)?, crate::time::stored(r, 1)?)))
        .collect::<Result<_>>()?;
    let mut earliest: Option<DateTime<Utc>> = None;
    for t in tasks {
        let name = t.reg.options.name;
        let Some(&last_tick) = last.get(name) else {
            continue;
        };
        if let Some(tick) = t.schedule.latest_at_or_before(now, last_tick) {
            let on_time = (now - tick).to_std().map_or(true, |late| late <= ON_TIME);
            let enqueue = on_time || t.reg.options.catch_up == CatchUp::Latest;
            fire(client, t, tick, last_tick, enqueue, now).await?;
        }
        if let Some(next) = t.schedule.next_after(now) {
            earliest = Some(earliest.map_or(next, |e| e.min(next)));
        }
    }
    Ok(earliest)
}

async fn fire(
    client: &Client,
    t: &CronTask,
    tick: DateTime<Utc>,
    last_tick: DateTime<Utc>,
    enqueue: bool,
    now: DateTime<Utc>,
) -> Result<()> {
    let store = client.store();
    let mut tx = store.begin().await?;
    let moved = sqlx::query(store.sql(
        "UPDATE queue_cron SET last_tick = ?, next_tick = ?, updated_at = ? WHERE task = ? AND last_tick < ?",
    ))
    .bind(At(tick))
    .bind(crate::time::opt(t.schedule.next_after(tick)))
    .bind(At(now))
    .bind(t.reg.options.name)
    .bind(At(tick))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved == 0 {
        // Another runtime fired this tick.
        tx.rollback().await?;
        return Ok(());
    }
    if enqueue {
        let o = &t.reg.options;
        let job = NewJob {
            task: o.name.to_owned(),
            queue: o.queue.to_owned(),
            priority: o.priority.get(),
            payload: "null".to_owned(),
            max_attempts: o.max_attempts(),
            deadline_ms: o
                .deadline
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            run_at: tick.min(now),
            // Without overlap, a tick whose predecessor's job is still
            // pending finds it by this key and enqueues nothing.
            unique_key: (!o.overlap).then(|| crate::store::stored_unique_key(o.name, "cron")),
        };
        store.insert_jobs_in(&mut tx, &[job], now, 1).await?;
    }
    tx.commit().await?;
    if enqueue {
        tracing::info!(task = t.reg.options.name, tick = %tick, missed_since = %last_tick, "cron tick fired");
        client.inner.ready_gen.send_modify(|g| *g += 1);
    } else {
        tracing::info!(task = t.reg.options.name, tick = %tick, "cron ticks missed while no runtime ran were skipped");
    }
    Ok(())
}
