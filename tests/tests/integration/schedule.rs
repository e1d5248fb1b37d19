//! Delays, run-at and cron, with an injected clock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use queue_runtime::{Client, ManualClock, Runtime, TaskContext, TaskError, task};
use queue_tests::wait_until;
use sqlx::Row;

use crate::setup;

async fn last_tick(client: &Client, task: &str) -> Option<DateTime<Utc>> {
    sqlx::query("SELECT last_tick FROM queue_cron WHERE task = ?")
        .bind(task)
        .fetch_optional(client.pool())
        .await
        .unwrap()
        .map(|r| r.get(0))
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

static DELAYED_STARTS: AtomicUsize = AtomicUsize::new(0);

#[task(queue = "delayed")]
async fn delayed_job() -> Result<(), TaskError> {
    DELAYED_STARTS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_does_not_start_early_and_starts_when_due() {
    let (db, client) = setup().await;
    let clock = ManualClock::new(at(2026, 1, 5, 12, 0, 0));
    let client = client.with_clock(clock.clone());
    let runtime = Runtime::builder(client.clone())
        .queues(["delayed"])
        .poll_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let id = delayed_job::with(())
        .delay(Duration::from_secs(60))
        .enqueue(&client)
        .await
        .unwrap();
    let past = delayed_job::with(())
        .run_at(at(2026, 1, 5, 11, 0, 0))
        .enqueue(&client)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the job due in the past ran",
        || {
            let client = client.clone();
            async move { client.job(past).await.unwrap().is_none() }
        },
    )
    .await;
    assert_eq!(DELAYED_STARTS.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_secs(59));
    // The runtime polls every 50 ms: give it many chances to start too early.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        DELAYED_STARTS.load(Ordering::SeqCst),
        1,
        "started before its time"
    );
    assert_eq!(client.stats().await.unwrap().queues["delayed"].scheduled, 1);
    clock.advance(Duration::from_secs(1));
    wait_until(Duration::from_secs(10), "the delayed job ran", || async {
        DELAYED_STARTS.load(Ordering::SeqCst) == 2
    })
    .await;
    // The handler counts before the runtime records the outcome.
    wait_until(Duration::from_secs(10), "the delayed job was acked", || {
        let client = client.clone();
        async move { client.job(id).await.unwrap().is_none() }
    })
    .await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

static TICKS: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

#[task(
    cron = "* * * * * *",
    queue = "cron_every_second",
    name = "tests.cron.every_second"
)]
async fn every_second(ctx: TaskContext) -> Result<(), TaskError> {
    TICKS
        .lock()
        .unwrap()
        .push((ctx.attempt(), ctx.job_id().to_string()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runtimes_fire_each_second_once() {
    let (db, client) = setup().await;
    let start = at(2026, 2, 1, 10, 0, 0);
    let clock = ManualClock::new(start);
    let a = client.with_clock(clock.clone());
    let b = Client::connect(&db.url)
        .await
        .unwrap()
        .with_clock(clock.clone());
    let ra = Runtime::builder(a.clone())
        .queues(["cron_every_second"])
        .start()
        .await
        .unwrap();
    let rb = Runtime::builder(b.clone())
        .queues(["cron_every_second"])
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the task registered", || {
        let a = a.clone();
        async move { last_tick(&a, "tests.cron.every_second").await.is_some() }
    })
    .await;
    for s in 1..=10u32 {
        clock.set(start + chrono::Duration::seconds(i64::from(s)));
        let expected = start + chrono::Duration::seconds(i64::from(s));
        wait_until(Duration::from_secs(10), "the tick fired", || {
            let a = a.clone();
            async move { last_tick(&a, "tests.cron.every_second").await == Some(expected) }
        })
        .await;
        // Both schedulers look at this second more than once.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until(Duration::from_secs(10), "every tick's job ran", || async {
        TICKS.lock().unwrap().len() >= 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ticks = TICKS.lock().unwrap().clone();
    assert_eq!(ticks.len(), 10, "one job per second: {ticks:?}");
    let mut ids: Vec<&String> = ticks.iter().map(|t| &t.1).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10);
    ra.shutdown(Duration::from_secs(5)).await.unwrap();
    rb.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

static FIVE_FIELD: AtomicUsize = AtomicUsize::new(0);

#[task(
    cron = "*/5 * * * *",
    queue = "cron_five_field",
    name = "tests.cron.five_field"
)]
async fn every_five_minutes() -> Result<(), TaskError> {
    FIVE_FIELD.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_field_expression_fires_on_its_minutes() {
    let (db, client) = setup().await;
    let clock = ManualClock::new(at(2026, 2, 1, 10, 3, 0));
    let client = client.with_clock(clock.clone());
    let rt = Runtime::builder(client.clone())
        .queues(["cron_five_field"])
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "registered", || {
        let c = client.clone();
        async move { last_tick(&c, "tests.cron.five_field").await.is_some() }
    })
    .await;
    let rec = client.recurring().await.unwrap();
    let me = rec
        .iter()
        .find(|r| r.task == "tests.cron.five_field")
        .unwrap();
    assert_eq!(me.next_tick, Some(at(2026, 2, 1, 10, 5, 0)));
    assert_eq!(me.timezone, "UTC");
    clock.set(at(2026, 2, 1, 10, 4, 59));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(FIVE_FIELD.load(Ordering::SeqCst), 0);
    clock.set(at(2026, 2, 1, 10, 5, 0));
    wait_until(Duration::from_secs(10), "10:05 fired", || async {
        FIVE_FIELD.load(Ordering::SeqCst) == 1
    })
    .await;
    // Acked before the clock jumps past the job's lease (the rescuer reads
    // the same clock).
    wait_until(Duration::from_secs(10), "the 10:05 job acked", || async {
        matches!(client.stats().await, Ok(s) if s.total.total() == 0)
    })
    .await;
    clock.set(at(2026, 2, 1, 10, 9, 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(FIVE_FIELD.load(Ordering::SeqCst), 1);
    clock.set(at(2026, 2, 1, 10, 10, 0));
    wait_until(Duration::from_secs(10), "10:10 fired", || async {
        FIVE_FIELD.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(
        last_tick(&client, "tests.cron.five_field").await,
        Some(at(2026, 2, 1, 10, 10, 0))
    );
    rt.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

#[task(
    cron = "0 0 9 * * *",
    tz = "Europe/Berlin",
    queue = "cron_berlin",
    name = "tests.cron.berlin"
)]
async fn nine_in_berlin() -> Result<(), TaskError> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_is_followed_across_daylight_saving() {
    let (db, client) = setup().await;
    // 2026-03-29 is the spring-forward day in Berlin: 09:00 local is 08:00Z
    // the day before and 07:00Z from that day on.
    let clock = ManualClock::new(at(2026, 3, 28, 7, 0, 0));
    let client = client.with_clock(clock.clone());
    let rt = Runtime::builder(client.clone())
        .queues(["cron_berlin"])
        .start()
        .await
        .unwrap();
    let tick = |c: Client| async move { last_tick(&c, "tests.cron.berlin").await };
    wait_until(Duration::from_secs(10), "registered", || {
        let c = client.clone();
        async move { tick(c).await.is_some() }
    })
    .await;
    for (now, expected) in [
        (at(2026, 3, 28, 8, 0, 0), at(2026, 3, 28, 8, 0, 0)),
        (at(2026, 3, 29, 7, 0, 0), at(2026, 3, 29, 7, 0, 0)),
        (at(2026, 3, 30, 7, 0, 0), at(2026, 3, 30, 7, 0, 0)),
    ] {
        // One second before: nothing new fires.
        clock.set(now - chrono::Duration::seconds(1));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(tick(client.clone()).await < Some(expected));
        clock.set(now);
        wait_until(
            Duration::from_secs(10),
            "the 09:00 Berlin tick fired",
            || {
                let c = client.clone();
                async move { tick(c).await == Some(expected) }
            },
        )
        .await;
    }
    let rec = client.recurring().await.unwrap();
    let me = rec.iter().find(|r| r.task == "tests.cron.berlin").unwrap();
    assert_eq!(me.timezone, "Europe/Berlin");
    assert_eq!(me.next_tick, Some(at(2026, 3, 31, 7, 0, 0)));
    rt.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

static CATCH_UP: AtomicUsize = AtomicUsize::new(0);
static SKIP: AtomicUsize = AtomicUsize::new(0);

#[task(
    cron = "0 * * * * *",
    queue = "cron_catch_up",
    name = "tests.cron.catch_up"
)]
async fn every_minute_catching_up() -> Result<(), TaskError> {
    CATCH_UP.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[task(
    cron = "0 * * * * *",
    catch_up = "skip",
    queue = "cron_catch_up",
    name = "tests.cron.skip"
)]
async fn every_minute_skipping() -> Result<(), TaskError> {
    SKIP.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_downtime_the_latest_missed_tick_fires_once() {
    let (db, client) = setup().await;
    let clock = ManualClock::new(at(2026, 4, 1, 12, 0, 30));
    let client = client.with_clock(clock.clone());
    let rt = Runtime::builder(client.clone())
        .queues(["cron_catch_up"])
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "registered", || {
        let c = client.clone();
        async move {
            last_tick(&c, "tests.cron.skip").await.is_some()
                && last_tick(&c, "tests.cron.catch_up").await.is_some()
        }
    })
    .await;
    clock.set(at(2026, 4, 1, 12, 1, 0));
    wait_until(Duration::from_secs(10), "12:01 fired for both", || async {
        CATCH_UP.load(Ordering::SeqCst) == 1 && SKIP.load(Ordering::SeqCst) == 1
    })
    .await;
    rt.shutdown(Duration::from_secs(5)).await.unwrap();

    // Down for ten minutes: ticks 12:02 … 12:11 are missed.
    clock.set(at(2026, 4, 1, 12, 11, 30));
    let rt = Runtime::builder(client.clone())
        .queues(["cron_catch_up"])
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the missed tick fired", || async {
        CATCH_UP.load(Ordering::SeqCst) == 2
    })
    .await;
    wait_until(
        Duration::from_secs(10),
        "the skipping task moved on",
        || {
            let c = client.clone();
            async move { last_tick(&c, "tests.cron.skip").await == Some(at(2026, 4, 1, 12, 11, 0)) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        CATCH_UP.load(Ordering::SeqCst),
        2,
        "one catch-up run, not ten"
    );
    assert_eq!(SKIP.load(Ordering::SeqCst), 1, "missed ticks skipped");
    assert_eq!(
        last_tick(&client, "tests.cron.catch_up").await,
        Some(at(2026, 4, 1, 12, 11, 0))
    );
    // Back on time: both fire at 12:12.
    clock.set(at(2026, 4, 1, 12, 12, 0));
    wait_until(Duration::from_secs(10), "12:12 fired for both", || async {
        CATCH_UP.load(Ordering::SeqCst) == 3 && SKIP.load(Ordering::SeqCst) == 2
    })
    .await;
    rt.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

static LONG_RUNS: AtomicUsize = AtomicUsize::new(0);
static LONG_RELEASE: AtomicBool = AtomicBool::new(false);

#[task(
    cron = "* * * * * *",
    overlap = false,
    queue = "cron_no_overlap",
    name = "tests.cron.no_overlap"
)]
async fn long_tick() -> Result<(), TaskError> {
    LONG_RUNS.fetch_add(1, Ordering::SeqCst);
    while !LONG_RELEASE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `overlap = false`: while a tick's job runs, later ticks enqueue nothing;
/// once it is done, the next tick runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_overlap_a_tick_waits_for_the_previous_run() {
    let (db, client) = setup().await;
    let runtime = Runtime::builder(client.clone())
        .queues(["cron_no_overlap"])
        .start()
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the first tick's job to run",
        || async { LONG_RUNS.load(Ordering::SeqCst) == 1 },
    )
    .await;
    // Three more ticks while it runs.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    assert_eq!(
        LONG_RUNS.load(Ordering::SeqCst),
        1,
        "no second run meanwhile"
    );
    let stats = client.stats().await.unwrap();
    assert_eq!(
        stats.total.total(),
        1,
        "no job queued behind the running one: {stats:?}"
    );
    LONG_RELEASE.store(true, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(10),
        "a later tick to run again",
        || async { LONG_RUNS.load(Ordering::SeqCst) >= 2 },
    )
    .await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}
