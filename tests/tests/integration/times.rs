//! Times: every instant the database can store (1000-01-01 to 9999-12-31)
//! goes in and comes out exactly; earlier run times run at once, later ones
//! are refused; a clock past 2038 works; a zero date read back panics
//! nothing and strands nothing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use proptest::prelude::*;
use queue_runtime::{Error, JobState, ManualClock, Runtime, TaskContext, TaskError, task};
use queue_tests::wait_until;

use crate::{insert_raw_job, setup, wait_for_state};

#[task(queue = "times", name = "tests.times.noop")]
async fn noop(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

static RAN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[task(queue = "times_run", name = "tests.times.record")]
async fn record(n: u32) -> Result<(), TaskError> {
    RAN.lock().unwrap().push(n);
    Ok(())
}

fn micros(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, us: u32) -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(y, mo, d)
        .and_then(|d| d.and_hms_micro_opt(h, mi, s, us))
        .unwrap()
        .and_utc()
}

/// The exact boundary instants, and their neighbours.
fn boundaries() -> Vec<DateTime<Utc>> {
    vec![
        micros(1000, 1, 1, 0, 0, 0, 0),
        micros(1000, 1, 1, 0, 0, 0, 1),
        micros(1969, 12, 31, 23, 59, 59, 999_999),
        micros(1970, 1, 1, 0, 0, 0, 0),
        micros(1970, 1, 1, 0, 0, 1, 0),
        micros(2038, 1, 19, 3, 14, 7, 0),
        micros(2038, 1, 19, 3, 14, 7, 999_999),
        micros(2038, 1, 19, 3, 14, 8, 0),
        micros(2039, 1, 1, 0, 0, 0, 0),
        micros(2100, 1, 1, 0, 0, 0, 0),
        micros(9999, 12, 31, 23, 59, 59, 999_998),
        micros(9999, 12, 31, 23, 59, 59, 999_999),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_storable_run_time_round_trips_exactly() {
    let (db, client) = setup().await;
    let now = client.now();
    for t in boundaries() {
        let id = noop::with(1)
            .run_at(t)
            .enqueue(&client)
            .await
            .unwrap_or_else(|e| panic!("run_at {t}: {e}"));
        let job = client.job(id).await.unwrap().expect("stored");
        assert_eq!(job.run_at, t, "run_at {t} stored as {}", job.run_at);
        let expected = if t <= now {
            JobState::Ready
        } else {
            JobState::Scheduled
        };
        assert_eq!(job.state, expected, "run_at {t}");
        let (created, scheduled): (DateTime<Utc>, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT created_at, scheduled_at FROM queue_jobs WHERE id = ?")
                .bind(id.0)
                .fetch_one(client.pool())
                .await
                .unwrap();
        assert!(created <= client.now());
        assert_eq!(scheduled, (t > now).then_some(t), "scheduled_at of {t}");
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_time_before_the_range_runs_at_once() {
    let (db, client) = setup().await;
    let runtime = Runtime::builder(client.clone())
        .queues(["times_run"])
        .start()
        .await
        .unwrap();
    let long_ago = [
        Utc.with_ymd_and_hms(999, 12, 31, 23, 59, 59).unwrap(),
        Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
        DateTime::<Utc>::MIN_UTC,
    ];
    for (i, t) in long_ago.into_iter().enumerate() {
        let n = 7000 + i as u32;
        let id = record::with(n).run_at(t).enqueue(&client).await.unwrap();
        wait_until(
            Duration::from_secs(10),
            &format!("job {id} ran"),
            || async { RAN.lock().unwrap().contains(&n) },
        )
        .await;
    }
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_time_after_the_range_is_refused_by_name() {
    let (db, client) = setup().await;
    let after = [
        micros(9999, 12, 31, 23, 59, 59, 999_999) + chrono::TimeDelta::microseconds(1),
        Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
        DateTime::<Utc>::MAX_UTC,
    ];
    for t in after {
        let err = noop::with(1).run_at(t).enqueue(&client).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("9999-12-31") && m.contains("1000-01-01")),
            "{t}: {err}"
        );
        let err = noop::enqueue_many(&client, [1, 2]).await.map(|_| ());
        assert!(err.is_ok(), "a good batch still goes: {err:?}");
    }
    // A delay that reaches past the range, up to Duration::MAX.
    for d in [
        Duration::from_secs(8000 * 366 * 86_400),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ] {
        let err = noop::with(1).delay(d).enqueue(&client).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{d:?}: {err}");
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(
        stats.total.total(),
        2 * 3,
        "only the good batches were stored"
    );
    db.drop_db().await;
}

static HELD: AtomicUsize = AtomicUsize::new(0);
static RELEASE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[task(queue = "times_clock", name = "tests.times.hold", retries = 0)]
async fn hold(fail: bool) -> Result<(), TaskError> {
    HELD.fetch_add(1, Ordering::SeqCst);
    RELEASE.notified().await;
    if fail {
        Err(TaskError::permanent(TaskError::msg("failed on purpose")))
    } else {
        Ok(())
    }
}

/// A clock reading past 2038: every time the runtime writes (created and
/// updated, leases, dead, purge cut-off) is stored exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clock_past_2038_writes_exact_times() {
    for start in [
        micros(2039, 1, 1, 0, 0, 0, 250_000),
        micros(2100, 6, 1, 12, 0, 0, 1),
    ] {
        let (db, client) = setup().await;
        let clock = ManualClock::new(start);
        let client = client.with_clock(clock.clone());
        let lease = Duration::from_secs(30);
        HELD.store(0, Ordering::SeqCst);
        // Enqueued before the runtime starts: its claim writes updated_at.
        let id = hold::enqueue(&client, true).await.unwrap();
        let (created, updated): (DateTime<Utc>, DateTime<Utc>) =
            sqlx::query_as("SELECT created_at, updated_at FROM queue_jobs WHERE id = ?")
                .bind(id.0)
                .fetch_one(client.pool())
                .await
                .unwrap();
        assert_eq!((created, updated), (start, start));
        let runtime = Runtime::builder(client.clone())
            .queues(["times_clock"])
            .lease(lease)
            .heartbeat(Duration::from_secs(5))
            .start()
            .await
            .unwrap();
        wait_until(Duration::from_secs(10), "the job started", || async {
            HELD.load(Ordering::SeqCst) == 1
        })
        .await;
        let (owner, expires): (Option<String>, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT lease_owner, lease_expires_at FROM queue_jobs WHERE id = ?")
                .bind(id.0)
                .fetch_one(client.pool())
                .await
                .unwrap();
        assert_eq!(owner.as_deref(), Some(runtime.owner()));
        // Each claim of a runtime writes a `now` later than the last one's
        // by at least a microsecond (under a clock that stands still, the
        // earlier claims that found nothing moved it a few).
        let lease_from_start = start + chrono::Duration::from_std(lease).unwrap();
        let expires = expires.expect("leased");
        assert!(
            expires >= lease_from_start
                && expires - lease_from_start < chrono::Duration::milliseconds(1),
            "lease until {expires}, expected {lease_from_start} (+ a few µs)"
        );
        RELEASE.notify_one();
        wait_for_state(&client, id, JobState::Dead, Duration::from_secs(10)).await;
        let dead = client.dead_jobs(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].died_at, start, "dead_at");

        // The purge cut-off: not yet a second old, then older.
        assert_eq!(client.purge_dead(Duration::from_secs(1)).await.unwrap(), 0);
        assert_eq!(client.purge_dead(Duration::MAX).await.unwrap(), 0);
        clock.advance(Duration::from_secs(2));
        assert_eq!(client.purge_dead(Duration::from_secs(1)).await.unwrap(), 1);
        runtime.shutdown(Duration::from_secs(5)).await.unwrap();
        db.drop_db().await;
    }
}

static TICKS_2100: AtomicUsize = AtomicUsize::new(0);

#[task(
    cron = "* * * * * *",
    queue = "times_cron",
    name = "tests.times.cron_2100"
)]
async fn every_second_in_2100(ctx: TaskContext) -> Result<(), TaskError> {
    let _ = ctx;
    TICKS_2100.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_ticks_after_2038_are_stored_exactly() {
    let (db, client) = setup().await;
    let start = micros(2100, 1, 1, 0, 0, 0, 0);
    let clock = ManualClock::new(start);
    let client = client.with_clock(clock.clone());
    let runtime = Runtime::builder(client.clone())
        .queues(["times_cron"])
        .start()
        .await
        .unwrap();
    let last_tick = |client: queue_runtime::Client| async move {
        client
            .recurring()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.task == "tests.times.cron_2100")
            .map(|r| (r.last_tick, r.next_tick))
    };
    wait_until(Duration::from_secs(10), "the task registered", || {
        let c = client.clone();
        async move { last_tick(c).await.is_some() }
    })
    .await;
    let tick = start + chrono::Duration::seconds(1);
    clock.set(tick);
    wait_until(Duration::from_secs(10), "the 2100 tick fired", || {
        let c = client.clone();
        async move { last_tick(c).await.map(|t| t.0) == Some(tick) }
    })
    .await;
    let (_, next) = last_tick(client.clone()).await.unwrap();
    assert_eq!(next, Some(tick + chrono::Duration::seconds(1)));
    wait_until(Duration::from_secs(10), "the tick's job ran", || async {
        TICKS_2100.load(Ordering::SeqCst) >= 1
    })
    .await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_outside_the_range_fails_enqueue_clearly() {
    let (db, client) = setup().await;
    for t in [
        Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(999, 1, 1, 0, 0, 0).unwrap(),
    ] {
        let c = client.with_clock(ManualClock::new(t));
        let err = noop::enqueue(&c, 1).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("clock")),
            "{t}: {err}"
        );
        let err = noop::enqueue_many(&c, [1]).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{t}: {err}");
    }
    // ManualClock::advance saturates instead of overflowing.
    let clock = ManualClock::new(Utc::now());
    clock.advance(Duration::MAX);
    clock.advance(Duration::MAX);
    assert_eq!(
        queue_runtime::Clock::now(&clock),
        queue_runtime::time::latest()
    );
    db.drop_db().await;
}

/// Rows written by SQL from outside the runtime with a zero date (MariaDB
/// stores one where strict mode is off) read without a panic, and claim
/// with the rest of their batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_dates_read_and_run_without_stranding_a_batch() {
    let (db, client) = setup().await;
    let mut ids = Vec::new();
    for n in [9001u32, 9002, 9003] {
        ids.push(
            insert_raw_job(
                &client,
                "tests.times.record",
                "times_run",
                &n.to_string(),
                None,
            )
            .await,
        );
    }
    let mut conn = client.pool().acquire().await.unwrap();
    sqlx::query("SET SESSION sql_mode = ''")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE queue_jobs SET run_at = '0000-00-00 00:00:00' WHERE id = ?")
        .bind(ids[1].0)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SET SESSION sql_mode = DEFAULT")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let zero: Option<String> =
        sqlx::query_scalar("SELECT CAST(run_at AS CHAR) FROM queue_jobs WHERE id = ?")
            .bind(ids[1].0)
            .fetch_one(client.pool())
            .await
            .unwrap();
    assert_eq!(zero.as_deref(), Some("0000-00-00 00:00:00.000000"));
    let job = client
        .job(ids[1])
        .await
        .expect("a zero date reads")
        .unwrap();
    assert_eq!(job.run_at, queue_runtime::time::earliest());

    let runtime = Runtime::builder(client.clone())
        .queues(["times_run"])
        .prefetch(3)
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "all three ran", || async {
        let ran = RAN.lock().unwrap();
        [9001, 9002, 9003].iter().all(|n| ran.contains(n))
    })
    .await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any instant in the supported range, to the microsecond, is stored
    /// and read back unchanged.
    #[test]
    fn any_supported_instant_round_trips(
        us in queue_runtime::time::earliest().timestamp_micros()
            ..=queue_runtime::time::latest().timestamp_micros()
    ) {
        let t = DateTime::<Utc>::from_timestamp_micros(us).unwrap();
        let stored = PROPERTY.block_on(async {
            let client = property_client().await;
            let id = noop::with(1).run_at(t).enqueue(client).await.unwrap();
            let job = client.job(id).await.unwrap().unwrap();
            client.cancel(id).await.unwrap();
            job.run_at
        });
        prop_assert_eq!(stored, t);
    }
}

/// One runtime and one database for every case of the property.
static PROPERTY: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
});

async fn property_client() -> &'static queue_runtime::Client {
    static CLIENT: tokio::sync::OnceCell<(queue_tests::TestDb, queue_runtime::Client)> =
        tokio::sync::OnceCell::const_new();
    &CLIENT.get_or_init(setup).await.1
}
