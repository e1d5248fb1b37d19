//! Recurring tasks: `#[task(cron = "...")]`.
//!
//! Each recurring task has one row in `queue_cron` holding the last tick
//! that fired. Every runtime computes the latest due tick from its clock and
//! tries to move `last_tick` forward to it with a conditional UPDATE
//! (`WHERE last_tick < tick`) in the same transaction that enqueues the
//! tick's job (`Store::fire_cron_tick`). The row lock makes the UPDATEs of
//! competing runtimes serialise, and only one of them finds
//! `last_tick < tick` still true: each tick fires once cluster-wide, by
//! construction, whatever the timers do.
//!
//! A runtime fires the recurring tasks whose queue it serves; run at least
//! one runtime per such queue with cron enabled.
//!
//! After downtime the latest missed tick fires once (`CatchUp::Latest`, the
//! default), or missed ticks are skipped (`CatchUp::Skip`): `last_tick` moves
//! forward without a job.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use queue_core::{CatchUp, Schedule};

use super::Shared;
use super::outage::Failures;
use crate::client::Client;
use crate::error::Result;
use crate::registry::{Registry, TaskRegistration};

/// How late a tick may be noticed and still count as on time for
/// `CatchUp::Skip`.
const ON_TIME: Duration = Duration::from_secs(5);

struct CronTask {
    reg: &'static TaskRegistration,
    schedule: Schedule,
}

/// A tick that fired: its task and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FiredTick {
    pub(crate) task: &'static str,
    pub(crate) tick: DateTime<Utc>,
}

/// The recurring tasks of `registry` that `serves` a queue of.
fn cron_tasks(registry: &Registry, serves: impl Fn(&str) -> bool) -> Vec<CronTask> {
    registry
        .iter()
        .filter(|reg| serves(reg.options.queue))
        .filter_map(|reg| {
            let expr = reg.options.cron?;
            // Validated by Registry::collect.
            let schedule = Schedule::parse(expr, reg.options.tz).ok()?;
            Some(CronTask { reg, schedule })
        })
        .collect()
}

/// Registers every recurring task of `registry` (a new one starts from the
/// client's now) and fires their due ticks once, as the scheduler's loop
/// does; returns the ticks fired. For `queue_runtime::testing`.
#[cfg(feature = "testing")]
pub(crate) async fn fire_all_due(client: &Client, registry: &Registry) -> Result<Vec<FiredTick>> {
    let tasks = cron_tasks(registry, |_| true);
    register(client, &tasks).await?;
    Ok(fire_due(client, &tasks).await?.1)
}

/// The next tick after `after` of each recurring task of `registry`.
#[cfg(feature = "testing")]
pub(crate) fn next_ticks(registry: &Registry, after: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    cron_tasks(registry, |_| true)
        .iter()
        .filter_map(|t| t.schedule.next_after(after))
        .collect()
}

/// Registers the program's recurring tasks and fires their ticks until the
/// runtime stops.
pub(crate) async fn scheduler(shared: Arc<Shared>) {
    // A runtime fires the recurring tasks of the queues it serves.
    let tasks = cron_tasks(&shared.registry, |queue| {
        shared.queues.iter().any(|q| q == queue)
    });
    if tasks.is_empty() {
        return;
    }
    let client = shared.client.clone();
    let mut clock_rx = client.inner.clock.watch();
    let mut registered = false;
    let mut failures = Failures::default();
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
            Ok(fire_due(&client, &tasks).await?.0)
        };
        let stepped = step.await;
        shared.outage.track("cron", sent, &stepped);
        match stepped {
            Ok(next) => {
                failures.reset();
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
                wait = failures.next_wait();
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
        client
            .store()
            .register_cron(
                t.reg.options.name,
                t.schedule.expression(),
                t.schedule.timezone().name(),
                t.schedule.next_after(now),
                now,
            )
            .await?;
    }
    Ok(())
}

/// Fires every due tick once; returns the earliest next tick and the
/// ticks this call fired.
async fn fire_due(
    client: &Client,
    tasks: &[CronTask],
) -> Result<(Option<DateTime<Utc>>, Vec<FiredTick>)> {
    let now = client.now();
    let last = client.store().last_ticks().await?;
    let mut earliest: Option<DateTime<Utc>> = None;
    let mut fired = Vec::new();
    for t in tasks {
        let name = t.reg.options.name;
        let Some(&last_tick) = last.get(name) else {
            continue;
        };
        if let Some(tick) = t.schedule.latest_at_or_before(now, last_tick) {
            let on_time = (now - tick).to_std().map_or(true, |late| late <= ON_TIME);
            let enqueue = on_time || t.reg.options.catch_up == CatchUp::Latest;
            if fire(client, t, tick, last_tick, enqueue, now).await? && enqueue {
                fired.push(FiredTick { task: name, tick });
            }
        }
        if let Some(next) = t.schedule.next_after(now) {
            earliest = Some(earliest.map_or(next, |e| e.min(next)));
        }
    }
    Ok((earliest, fired))
}

async fn fire(
    client: &Client,
    t: &CronTask,
    tick: DateTime<Utc>,
    last_tick: DateTime<Utc>,
    enqueue: bool,
    now: DateTime<Utc>,
) -> Result<bool> {
    let o = &t.reg.options;
    let job = if enqueue {
        // A fired tick is an ordinary job of the task, with no payload.
        let job = crate::enqueue::EnqueueBuilder::new(*o, ()).run_at(tick.min(now));
        // Without overlap, a tick whose predecessor's job is still pending
        // finds it by this key and enqueues nothing.
        let job = if o.overlap {
            job
        } else {
            job.unique_key("cron")
        };
        Some(job.into_new_job(now)?)
    } else {
        None
    };
    let fired = client
        .store()
        .fire_cron_tick(o.name, tick, t.schedule.next_after(tick), job, now)
        .await?;
    if !fired {
        // Another runtime fired this tick.
        return Ok(false);
    }
    if enqueue {
        tracing::info!(task = t.reg.options.name, tick = %tick, missed_since = %last_tick, "cron tick fired");
        client.wake_ready();
    } else {
        tracing::info!(task = t.reg.options.name, tick = %tick, "cron ticks missed while no runtime ran were skipped");
    }
    Ok(true)
}
