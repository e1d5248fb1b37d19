//! The operator's API: paged listings (and their plans), the runtime
//! registry, run-now, delete, retry of every dead job, the error history
//! and the per-minute counts.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use queue_runtime::testing;
use queue_runtime::{Error, JobFilter, JobId, JobState, ManualClock, Runtime, TaskError, task};
use queue_tests::wait_until;
use sqlx::{AssertSqlSafe, Row};

use crate::setup;

#[task(queue = "ops", name = "tests.ops.listed")]
async fn listed(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

#[task(queue = "ops2", name = "tests.ops.other")]
async fn other(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

/// Marks jobs dead by SQL, as if their attempts were spent.
async fn kill(client: &queue_runtime::Client, ids: &[JobId]) {
    for id in ids {
        sqlx::query(
            "UPDATE queue_jobs SET state = 3, dead_at = UTC_TIMESTAMP(6), last_error = 'boom' WHERE id = ?",
        )
        .bind(id.0)
        .execute(client.pool())
        .await
        .unwrap();
        sqlx::query("DELETE FROM queue_ready WHERE job_id = ?")
            .bind(id.0)
            .execute(client.pool())
            .await
            .unwrap();
    }
}

/// Every page of `filter`, in order.
async fn all_pages(client: &queue_runtime::Client, mut filter: JobFilter) -> Vec<JobId> {
    let mut ids = Vec::new();
    for _ in 0..1000 {
        let page = client.jobs(&filter).await.unwrap();
        assert!(page.jobs.len() <= filter.limit.max(1) as usize || filter.limit == 0);
        ids.extend(page.jobs.iter().map(|j| j.id));
        match page.next {
            Some(next) => filter.after = Some(next),
            None => return ids,
        }
    }
    panic!("paging did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_listed_newest_first_filtered_and_paged_by_id() {
    let (db, client) = setup().await;
    let a = listed::enqueue_many(&client, 0..120).await.unwrap();
    let b = other::enqueue_many(&client, 0..30).await.unwrap();
    let later = listed::with(999)
        .delay(Duration::from_secs(3600))
        .enqueue(&client)
        .await
        .unwrap();
    kill(&client, &a[10..15]).await;

    let first = client.jobs(&JobFilter::default()).await.unwrap();
    assert_eq!(first.jobs.len(), 50, "the default page");
    assert_eq!(first.jobs[0].id, later);
    assert!(first.jobs.windows(2).all(|w| w[0].id > w[1].id));
    assert_eq!(first.next, Some(first.jobs[49].id));
    assert_eq!(first.jobs[0].state, JobState::Scheduled);
    assert_eq!(first.jobs[0].task, "tests.ops.listed");

    // Every page of 7 covers every job once, newest first.
    let every = all_pages(
        &client,
        JobFilter {
            limit: 7,
            ..Default::default()
        },
    )
    .await;
    let mut expected: Vec<JobId> = a.iter().chain(&b).copied().chain([later]).collect();
    expected.sort_unstable_by(|x, y| y.cmp(x));
    assert_eq!(every, expected);

    let dead = client
        .jobs(&JobFilter {
            state: Some(JobState::Dead),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut dead_ids: Vec<JobId> = a[10..15].to_vec();
    dead_ids.reverse();
    assert_eq!(dead.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), dead_ids);
    assert_eq!(dead.jobs[0].last_error.as_deref(), Some("boom"));
    assert_eq!(dead.next, None);
    // The same through two pages of the dead index.
    let paged = all_pages(
        &client,
        JobFilter {
            state: Some(JobState::Dead),
            limit: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(paged, dead_ids);

    let in_ops2 = all_pages(
        &client,
        JobFilter {
            queue: Some("ops2".into()),
            limit: 1000,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(in_ops2.len(), 30);
    let by_task = all_pages(
        &client,
        JobFilter {
            task: Some("tests.ops.listed".into()),
            state: Some(JobState::Ready),
            limit: 100_000, // cut to 1,000
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_task.len(), 115);
    let scheduled = client
        .jobs(&JobFilter {
            state: Some(JobState::Scheduled),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        scheduled.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [later]
    );
    let nothing = client
        .jobs(&JobFilter {
            after: Some(JobId(0)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(nothing.jobs.is_empty() && nothing.next.is_none());

    // Bad filters are errors, not panics.
    for bad in [
        JobFilter {
            queue: Some("no spaces".into()),
            ..Default::default()
        },
        JobFilter {
            task: Some(String::new()),
            ..Default::default()
        },
        JobFilter {
            task: Some("t".repeat(256)),
            ..Default::default()
        },
    ] {
        assert!(
            matches!(client.jobs(&bad).await, Err(Error::InvalidArgument(_))),
            "{bad:?}"
        );
    }
    db.drop_db().await;
}

/// A sparse filter over many ids returns short pages with a `next` until
/// the ids run out, never a page that misses a match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_filter_is_paged_with_bounded_scans() {
    let (db, client) = setup().await;
    // 120,000 ready jobs by SQL (faster than the API), 3 of another task.
    sqlx::query(
        "INSERT INTO queue_jobs (task, queue, priority, state, payload, attempts, max_attempts, run_at, created_at, updated_at) \
         SELECT 'bulk', 'ops', 2, 0, '1', 0, 4, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) FROM seq_1_to_120000",
    )
    .execute(client.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE queue_jobs SET task = 'rare' WHERE id IN (7, 60000, 119999)")
        .execute(client.pool())
        .await
        .unwrap();
    let filter = JobFilter {
        task: Some("rare".into()),
        ..Default::default()
    };
    let page = client.jobs(&filter).await.unwrap();
    assert_eq!(
        page.jobs.iter().map(|j| j.id.0).collect::<Vec<_>>(),
        [119_999]
    );
    assert!(page.next.is_some(), "more ids to look at");
    assert_eq!(
        all_pages(&client, filter).await,
        [JobId(119_999), JobId(60_000), JobId(7)]
    );
    db.drop_db().await;
}

fn find_tables(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(t) = m.get("table") {
                out.push(t.clone());
            }
            m.values().for_each(|x| find_tables(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| find_tables(x, out)),
        _ => {}
    }
}

/// The listing's statements read a range of an index, never the whole
/// table, and never sort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_statements_read_index_ranges_without_sorting() {
    let (db, client) = setup().await;
    sqlx::query(
        "INSERT INTO queue_jobs (task, queue, priority, state, payload, attempts, max_attempts, run_at, created_at, updated_at, dead_at) \
         SELECT 'bulk', 'ops', 2, IF(seq % 100 = 0, 3, 0), '1', 0, 4, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), \
         IF(seq % 100 = 0, UTC_TIMESTAMP(6), NULL) FROM seq_1_to_50000",
    )
    .execute(client.pool())
    .await
    .unwrap();
    sqlx::query("ANALYZE TABLE queue_jobs")
        .execute(client.pool())
        .await
        .unwrap();
    let filters = [
        JobFilter::default(),
        JobFilter {
            state: Some(JobState::Ready),
            queue: Some("ops".into()),
            task: Some("bulk".into()),
            ..Default::default()
        },
        JobFilter {
            state: Some(JobState::Dead),
            ..Default::default()
        },
    ];
    for filter in &filters {
        let (window, index) = queue_runtime::__private::list_jobs_sql(filter, 40_000, 45_000);
        let pool = client.pool().clone();
        let explain = |sql: String| {
            let pool = pool.clone();
            async move {
                let plan: String = sqlx::query(AssertSqlSafe(format!("EXPLAIN FORMAT=JSON {sql}")))
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    .get(0);
                plan
            }
        };
        let plan = explain(window).await;
        let json: serde_json::Value = serde_json::from_str(&plan).unwrap();
        let mut tables = Vec::new();
        find_tables(&json, &mut tables);
        assert_eq!(tables.len(), 1, "{plan}");
        assert_eq!(tables[0]["key"], "PRIMARY", "{plan}");
        assert_eq!(tables[0]["access_type"], "range", "{plan}");
        assert!(!plan.to_lowercase().contains("filesort"), "{plan}");
        if let Some(index) = index {
            let plan = explain(index).await;
            let json: serde_json::Value = serde_json::from_str(&plan).unwrap();
            let mut tables = Vec::new();
            find_tables(&json, &mut tables);
            assert_eq!(tables[0]["key"], "queue_jobs_dead", "{plan}");
            assert_eq!(tables[0]["access_type"], "range", "{plan}");
            assert_eq!(tables[0]["using_index"], true, "index only: {plan}");
        }
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtimes_register_at_start_and_leave_at_shutdown() {
    let (db, client) = setup().await;
    assert!(client.runtimes().await.unwrap().is_empty());
    let runtime = Runtime::builder(client.clone())
        .queues(["ops", "ops2"])
        .concurrency(3)
        .start()
        .await
        .unwrap();
    let live = client.runtimes().await.unwrap();
    assert_eq!(live.len(), 1);
    let r = &live[0];
    assert_eq!(r.owner, runtime.owner());
    assert_eq!(r.pid, std::process::id());
    assert_eq!(r.queues, ["ops", "ops2"]);
    assert_eq!(r.concurrency, 3);
    assert!(!r.host.is_empty());
    assert!(r.heartbeat_at >= r.started_at);

    // A runtime whose heartbeat is old is not live.
    let later = client.with_clock(ManualClock::new(
        Utc::now() + chrono::Duration::seconds(120),
    ));
    assert!(later.runtimes().await.unwrap().is_empty());

    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(client.runtimes().await.unwrap().is_empty());
    db.drop_db().await;
}

#[task(queue = "ops_limited", name = "tests.ops.limited", concurrency = 1)]
async fn limited(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

/// `run_now` takes the dispatch's path into the claim index, slots
/// included; `delete_job` frees the slot a job held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_goes_through_the_slots_and_delete_job_releases_them() {
    let (db, client) = setup().await;
    let holder = limited::enqueue(&client, 1).await.unwrap();
    let later = limited::with(2)
        .delay(Duration::from_secs(3600))
        .enqueue(&client)
        .await
        .unwrap();
    let state = |id| {
        let client = client.clone();
        async move { client.job(id).await.unwrap().map(|j| j.state) }
    };
    assert_eq!(state(holder).await, Some(JobState::Ready));
    assert_eq!(state(later).await, Some(JobState::Scheduled));
    assert!(!client.run_now(holder).await.unwrap(), "not scheduled");
    assert!(!client.run_now(JobId(u64::MAX)).await.unwrap());
    assert!(client.run_now(later).await.unwrap());
    assert_eq!(
        state(later).await,
        Some(JobState::Blocked),
        "the limit's one slot is the holder's"
    );
    assert!(client.delete_job(holder).await.unwrap());
    assert_eq!(state(holder).await, None);
    assert_eq!(
        state(later).await,
        Some(JobState::Ready),
        "the freed slot went to the blocked job"
    );
    let drained = testing::drain(&client).await.unwrap();
    assert_eq!(drained.succeeded(), 1);
    assert_eq!(drained.attempts()[0].id, later);

    // An unlimited job runs at once.
    let plain = listed::with(5)
        .delay(Duration::from_secs(3600))
        .enqueue(&client)
        .await
        .unwrap();
    assert!(client.run_now(plain).await.unwrap());
    assert_eq!(state(plain).await, Some(JobState::Ready));
    assert_eq!(testing::drain(&client).await.unwrap().succeeded(), 1);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_job_takes_any_job_that_is_not_running() {
    let (db, client) = setup().await;
    let ids = listed::enqueue_many(&client, 0..4).await.unwrap();
    let scheduled = listed::with(9)
        .delay(Duration::from_secs(60))
        .enqueue(&client)
        .await
        .unwrap();
    kill(&client, &ids[..1]).await;
    sqlx::query("UPDATE queue_jobs SET state = 2, lease_owner = 'rt-x', lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR WHERE id = ?")
        .bind(ids[1].0)
        .execute(client.pool())
        .await
        .unwrap();
    assert!(client.delete_job(ids[0]).await.unwrap(), "dead");
    assert!(!client.delete_job(ids[1]).await.unwrap(), "running");
    assert!(client.delete_job(ids[2]).await.unwrap(), "ready");
    assert!(client.delete_job(scheduled).await.unwrap(), "scheduled");
    assert!(!client.delete_job(ids[2]).await.unwrap(), "gone");
    assert!(!client.cancel(ids[1]).await.unwrap());
    let left: Vec<JobId> = client
        .jobs(&JobFilter::default())
        .await
        .unwrap()
        .jobs
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(left, [ids[3], ids[1]]);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_dead_all_puts_back_every_dead_job_or_one_tasks() {
    let (db, client) = setup().await;
    let a = listed::enqueue_many(&client, 0..1200).await.unwrap();
    let b = other::enqueue_many(&client, 0..3).await.unwrap();
    kill(&client, &a[..1100]).await;
    kill(&client, &b).await;
    assert_eq!(client.stats().await.unwrap().total.dead, 1103);
    assert_eq!(
        client
            .retry_dead_all(Some("tests.ops.other"))
            .await
            .unwrap(),
        3
    );
    assert_eq!(client.retry_dead_all(Some("nobody")).await.unwrap(), 0);
    assert!(matches!(
        client.retry_dead_all(Some("")).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(client.retry_dead_all(None).await.unwrap(), 1100);
    let s = client.stats().await.unwrap();
    assert_eq!((s.total.dead, s.total.ready), (0, 1203));
    let job = client.job(a[0]).await.unwrap().unwrap();
    assert_eq!(job.attempts, 0);
    // They run: every one is in the claim index.
    assert_eq!(testing::drain(&client).await.unwrap().succeeded(), 1203);
    db.drop_db().await;
}

#[task(
    queue = "ops_fail",
    name = "tests.ops.always_fails",
    retries = 24,
    backoff = "constant(1ms)"
)]
async fn always_fails(n: u32) -> Result<(), TaskError> {
    Err(TaskError::msg(format!("failure of {n}")))
}

#[task(
    queue = "ops_fail",
    name = "tests.ops.fails_twice",
    retries = 3,
    backoff = "constant(1ms)"
)]
async fn fails_twice(ctx: queue_runtime::TaskContext, n: u32) -> Result<(), TaskError> {
    if ctx.attempt() <= 2 {
        return Err(TaskError::msg(format!("attempt {} of {n}", ctx.attempt())));
    }
    Ok(())
}

/// Every failed attempt's error is kept, oldest first, the last 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_history_keeps_the_last_twenty_attempts() {
    let (db, client) = setup().await;
    // A manual clock, moved by hand (a TestClock would fire the cron
    // tasks of the other tests' modules).
    let clock = ManualClock::new(Utc::now());
    let client = &client.with_clock(clock.clone());
    let doomed = always_fails::enqueue(client, 7).await.unwrap();
    let flaky = fails_twice::enqueue(client, 8).await.unwrap();
    let mut dead = 0;
    for _ in 0..30 {
        dead += testing::drain(client).await.unwrap().dead();
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(dead, 1);

    let job = client.job(doomed).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Dead);
    assert_eq!(job.errors.len(), 20, "bounded");
    let attempts: Vec<u32> = job.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(
        attempts,
        (6..=25).collect::<Vec<_>>(),
        "the last 20, oldest first"
    );
    assert!(job.errors.iter().all(|e| e.error == "failure of 7"));
    assert!(job.errors.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(job.last_error.as_deref(), Some("failure of 7"));

    // A job that succeeded is gone with its history; one retried keeps it.
    assert!(client.job(flaky).await.unwrap().is_none());
    let retried = fails_twice::enqueue(client, 9).await.unwrap();
    testing::drain(client).await.unwrap();
    let job = client.job(retried).await.unwrap().unwrap();
    assert_eq!(job.errors.len(), 1);
    assert_eq!(job.errors[0].attempt, 1);
    assert_eq!(job.errors[0].error, "attempt 1 of 9");
    assert_eq!(job.errors[0].at, client.now().duration_trunc_micros());
    db.drop_db().await;
}

trait TruncMicros {
    fn duration_trunc_micros(self) -> Self;
}

impl TruncMicros for chrono::DateTime<Utc> {
    fn duration_trunc_micros(self) -> Self {
        use chrono::DurationRound;
        self.duration_trunc(chrono::TimeDelta::microseconds(1))
            .unwrap()
    }
}

#[task(
    queue = "ops_count",
    name = "tests.ops.counted",
    retries = 1,
    backoff = "constant(10s)"
)]
async fn counted(ctx: queue_runtime::TaskContext, fail: u8) -> Result<(), TaskError> {
    match fail {
        0 => Ok(()),
        1 if ctx.attempt() == 1 => Err(TaskError::msg("once")),
        1 => Ok(()),
        _ => Err(TaskError::permanent(TaskError::msg("never"))),
    }
}

/// Attempts are counted per minute, by the clock of the runtime that ran them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_counts_attempts_per_minute() {
    let (db, client) = setup().await;
    let t0 = Utc.with_ymd_and_hms(2031, 5, 6, 7, 8, 30).unwrap();
    let clock = ManualClock::new(t0);
    let client = &client.with_clock(clock.clone());
    counted::enqueue_many(client, [0, 0, 0, 1, 2])
        .await
        .unwrap();
    // 5 starts, 4 successes... one failure (retried 10 s later), one death.
    let first = testing::drain(client).await.unwrap();
    assert_eq!(first.len(), 5);
    clock.advance(Duration::from_secs(60));
    assert_eq!(testing::drain(client).await.unwrap().succeeded(), 1);

    let minutes = client.throughput(Duration::from_secs(600)).await.unwrap();
    assert_eq!(minutes.len(), 10);
    assert!(
        minutes
            .windows(2)
            .all(|w| w[1].minute - w[0].minute == chrono::TimeDelta::minutes(1))
    );
    let last = minutes[9];
    let before = minutes[8];
    assert_eq!(
        last.minute,
        Utc.with_ymd_and_hms(2031, 5, 6, 7, 9, 0).unwrap()
    );
    assert_eq!(
        (before.started, before.succeeded, before.failed, before.dead),
        (5, 3, 1, 1)
    );
    assert_eq!(
        (last.started, last.succeeded, last.failed, last.dead),
        (1, 1, 0, 0)
    );
    assert!(
        minutes[..8]
            .iter()
            .all(|m| m.started + m.succeeded + m.failed + m.dead == 0)
    );

    let of_queue = client
        .throughput_of("ops_count", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(of_queue.len(), 2);
    assert_eq!(of_queue[0].started, 5);
    let elsewhere = client
        .throughput_of("ops2", Duration::from_secs(120))
        .await
        .unwrap();
    assert!(elsewhere.iter().all(|m| m.started == 0));
    assert!(matches!(
        client
            .throughput_of("bad queue", Duration::from_secs(60))
            .await,
        Err(Error::InvalidArgument(_))
    ));
    // Past what is kept: one day's minutes.
    assert_eq!(
        client
            .throughput(Duration::from_secs(365 * 86_400))
            .await
            .unwrap()
            .len(),
        1440
    );
    assert_eq!(client.throughput(Duration::ZERO).await.unwrap().len(), 1);
    db.drop_db().await;
}

/// A runtime writes its counts without being asked, within about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_writes_its_counts_as_it_goes() {
    let (db, client) = setup().await;
    let runtime = Runtime::builder(client.clone())
        .queues(["ops"])
        .start()
        .await
        .unwrap();
    listed::enqueue_many(&client, 0..40).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "40 starts and successes counted",
        || {
            let client = client.clone();
            async move {
                let m = client.throughput(Duration::from_secs(120)).await.unwrap();
                let started: u64 = m.iter().map(|m| m.started).sum();
                let succeeded: u64 = m.iter().map(|m| m.succeeded).sum();
                started == 40 && succeeded == 40
            }
        },
    )
    .await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue_throughput")
        .fetch_one(client.pool())
        .await
        .unwrap();
    assert!(
        (1..=2).contains(&rows),
        "one row per minute, queue and task: {rows}"
    );
    let names: BTreeSet<String> = sqlx::query_scalar("SELECT task FROM queue_throughput")
        .fetch_all(client.pool())
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(names, BTreeSet::from(["tests.ops.listed".to_owned()]));
    db.drop_db().await;
}

/// Past 10,000 jobs, `stats()` counts from indexes with caps, and says
/// which counts are lower bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_of_a_big_table_are_capped_and_say_so() {
    let (db, client) = setup().await;
    let small = client.stats().await.unwrap();
    assert!(small.exact && small.estimated_jobs.is_none());
    sqlx::query(
        "INSERT INTO queue_jobs (task, queue, priority, state, payload, attempts, max_attempts, run_at, created_at, updated_at) \
         SELECT 'bulk', 'big', 2, 0, '1', 0, 4, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) FROM seq_1_to_30000",
    )
    .execute(client.pool())
    .await
    .unwrap();
    sqlx::query("INSERT INTO queue_ready (queue, priority, job_id) SELECT 'big', 2, id FROM queue_jobs ORDER BY id")
        .execute(client.pool())
        .await
        .unwrap();
    listed::with(1)
        .queue("small")
        .enqueue(&client)
        .await
        .unwrap();
    let dead = listed::enqueue_many(&client, 0..3).await.unwrap();
    kill(&client, &dead).await;
    for n in 0..5 {
        listed::with(n)
            .queue("small")
            .delay(Duration::from_secs(600))
            .enqueue(&client)
            .await
            .unwrap();
    }
    crate::insert_raw_job(&client, "ghost.task", "small", "1", None).await;

    let s = client.stats().await.unwrap();
    assert!(!s.exact);
    assert!(s.estimated_jobs.is_some());
    let big = s.queues["big"];
    assert_eq!((big.ready, big.at_least.ready), (10_000, true));
    assert!(!big.at_least.scheduled && !big.at_least.dead);
    let small = s.queues["small"];
    assert_eq!(
        (
            small.ready,
            small.scheduled,
            small.running,
            small.dead,
            small.at_least.any()
        ),
        (2, 5, 0, 0, false)
    );
    assert_eq!(s.queues["ops"].dead, 3);
    assert_eq!(s.total.ready, 10_002);
    assert_eq!((s.total.scheduled, s.total.dead), (5, 3));
    assert!(s.total.at_least.ready && !s.total.at_least.dead);
    assert_eq!(s.unknown_tasks.get("ghost.task"), Some(&1));
    assert_eq!(s.unknown_tasks.get("bulk"), Some(&200), "the jobs read");
    db.drop_db().await;
}
