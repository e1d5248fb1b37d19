//! Flow control in one process: what a job waiting for a limit looks like
//! from `job()` and `stats()`, cancelling such a job, and keys at enqueue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use queue_runtime::{Error, JobState, LimitKind, Runtime, TaskError, Waiting, task};
use queue_tests::wait_until;

use crate::setup;

static RELEASE: AtomicBool = AtomicBool::new(false);

/// Holds its slot until released.
#[task(
    queue = "limits_inproc",
    name = "tests.limits.held",
    concurrency = 1,
    concurrency_key = |t: &String| t.clone()
)]
async fn held(tenant: String) -> Result<(), TaskError> {
    let _ = tenant;
    while !RELEASE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[task(queue = "limits_rate", name = "tests.limits.rated", rate = "2/1h")]
async fn rated(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

#[task(queue = "limits_rate", name = "tests.limits.plain")]
async fn plain(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_jobs_are_visible_cancellable_and_get_the_slot_in_order() {
    let (db, client) = setup().await;
    let first = held::enqueue(&client, "acme".into()).await.unwrap();
    let second = held::enqueue(&client, "acme".into()).await.unwrap();
    let third = held::enqueue(&client, "acme".into()).await.unwrap();
    let other = held::enqueue(&client, "globex".into()).await.unwrap();
    let runtime = Runtime::builder(client.clone())
        .queues(["limits_inproc"])
        .concurrency(10)
        .start()
        .await
        .unwrap();
    let state = |id| {
        let client = client.clone();
        async move { client.job(id).await.unwrap().map(|j| (j.state, j.waiting)) }
    };
    // Blocked at enqueue (the first job of "acme" took its one slot); the
    // two holders start once the runtime claims them.
    assert_eq!(client.stats().await.unwrap().total.blocked, 2);
    wait_until(
        Duration::from_secs(20),
        "the slot holders to run",
        || async {
            state(first).await.map(|s| s.0) == Some(JobState::Running)
                && state(other).await.map(|s| s.0) == Some(JobState::Running)
        },
    )
    .await;
    assert_eq!(state(first).await.unwrap().0, JobState::Running);
    assert_eq!(
        state(other).await.unwrap().0,
        JobState::Running,
        "another key is not held up"
    );
    assert_eq!(
        state(second).await.unwrap(),
        (
            JobState::Blocked,
            Some(Waiting::Concurrency {
                key: Some("acme".into())
            })
        )
    );
    let stats = client.stats().await.unwrap();
    let acme = stats
        .limits
        .iter()
        .find(|l| l.key.as_deref() == Some("acme"))
        .expect("the acme limit is listed");
    assert_eq!(
        (
            acme.task.as_str(),
            acme.kind,
            acme.limit,
            acme.active,
            acme.waiting
        ),
        ("tests.limits.held", LimitKind::Concurrency, 1, 1, 2)
    );
    // A blocked job can be cancelled; the next one in line gets the slot.
    assert!(client.cancel(second).await.unwrap());
    assert!(client.job(second).await.unwrap().is_none());
    RELEASE.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(20), "every job to finish", || async {
        client.stats().await.unwrap().total.total() == 0
    })
    .await;
    assert!(client.job(third).await.unwrap().is_none(), "the third ran");
    let held: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(running), 0) AS SIGNED) FROM queue_semaphores",
    )
    .fetch_one(client.pool())
    .await
    .unwrap();
    assert_eq!(held, 0, "every slot came back");
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_job_waits_scheduled_for_its_window_and_others_flow() {
    let (db, client) = setup().await;
    let ids = rated::enqueue_many(&client, 0..5u32).await.unwrap();
    let free = plain::enqueue_many(&client, 0..5u32).await.unwrap();
    let runtime = Runtime::builder(client.clone())
        .queues(["limits_rate"])
        .start()
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the unlimited jobs and 2 rated ones to run",
        || async {
            let t = client.stats().await.unwrap().total;
            t.total() == 3 && t.rate_limited == 3
        },
    )
    .await;
    for id in free {
        assert!(client.job(id).await.unwrap().is_none());
    }
    let mut waiting = 0;
    for id in ids {
        if let Some(job) = client.job(id).await.unwrap() {
            assert_eq!(job.state, JobState::Scheduled);
            match job.waiting {
                Some(Waiting::Rate { key: None, window }) => {
                    assert!(window > chrono::Utc::now(), "a later window: {window}");
                    assert_eq!(window, job.run_at);
                }
                other => panic!("waits for its rate window: {other:?}"),
            }
            waiting += 1;
        }
    }
    assert_eq!(waiting, 3, "2 of 5 started in this hour's window");
    let stats = client.stats().await.unwrap();
    let rate = stats
        .limits
        .iter()
        .find(|l| l.task == "tests.limits.rated")
        .expect("the rate is listed");
    assert!(matches!(rate.kind, LimitKind::Rate { per, .. } if per == Duration::from_secs(3600)));
    assert_eq!((rate.limit, rate.waiting), (2, 3));
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_at_enqueue_are_checked() {
    let (db, client) = setup().await;
    let e = plain::with(1)
        .concurrency_key("k")
        .enqueue(&client)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("no concurrency limit")),
        "{e}"
    );
    let e = rated::with(1)
        .rate_key("")
        .enqueue(&client)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("1 to 191")),
        "{e}"
    );
    let e = held::with("t".into())
        .concurrency_key("x".repeat(192))
        .enqueue(&client)
        .await
        .unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(_)), "{e}");
    assert_eq!(
        client.stats().await.unwrap().total.total(),
        0,
        "nothing stored"
    );
    db.drop_db().await;
}

#[task(
    queue = "limits_plan",
    name = "tests.limits.planned",
    concurrency = 1,
    concurrency_key = |k: &u32| *k
)]
async fn planned(key: u32) -> Result<(), TaskError> {
    let _ = key;
    Ok(())
}

/// The pick of the next blocked jobs, run by every release, reads
/// `queue_blocked` by its primary key, in order: no filesort, no scan of
/// other keys' rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pick_of_blocked_jobs_reads_the_primary_key_without_filesort() {
    let (db, client) = setup().await;
    // 50 keys with one slot each: 50 jobs take them, 4,950 are blocked.
    planned::enqueue_many(&client, (0..5_000u32).map(|i| i % 50))
        .await
        .unwrap();
    assert_eq!(client.stats().await.unwrap().total.blocked, 4_950);
    for table in ["queue_blocked", "queue_semaphores", "queue_jobs"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE TABLE {table}")))
            .execute(client.pool())
            .await
            .unwrap();
    }
    let key = |k: u32| format!("tests.limits.planned\u{1f}{k}").into_bytes();
    let (k1, k2, k3, k4, k5) = (key(1), key(2), key(3), key(4), key(5));
    // The first blocked job of key 1 (cursors read past it).
    let first: u64 =
        sqlx::query_scalar("SELECT MIN(job_id) FROM queue_blocked WHERE concurrency_key = ?")
            .bind(&k1)
            .fetch_one(client.pool())
            .await
            .unwrap();
    let ones = vec![
        (&k1[..], 1u32),
        (&k2[..], 1),
        (&k3[..], 1),
        (&k4[..], 1),
        (&k5[..], 1),
    ];
    for (freed, after) in [
        (vec![(&k1[..], 1u32)], vec![]),
        (vec![(&k1[..], 3)], vec![]),
        (vec![(&k1[..], 1), (&k2[..], 1), (&k3[..], 2)], vec![]),
        (vec![(&k1[..], 0)], vec![]),
        // The fast path: past a cursor, and many keys in one statement.
        (vec![(&k1[..], 3)], vec![(&k1[..], 2u8, first)]),
        (ones.clone(), vec![]),
    ] {
        let sql = if after.is_empty() && freed.len() < 5 {
            queue_runtime::__private::pick_blocked_sql(&freed)
        } else {
            queue_runtime::__private::pick_blocked_fast_sql(&freed, &after)
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_all(client.pool())
            .await
            .unwrap();
        let want: usize = freed
            .iter()
            .map(|(_, n)| if *n == 0 { 99 } else { *n as usize })
            .sum();
        assert_eq!(
            rows.len(),
            want,
            "the first blocked jobs of each key: {sql}"
        );
        let plan: String =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN FORMAT=JSON {sql}")))
                .fetch_one(client.pool())
                .await
                .unwrap();
        assert!(!plan.to_lowercase().contains("filesort"), "no sort: {plan}");
        // MariaDB prints the key's U+001F raw inside the JSON's strings.
        let json: serde_json::Value = serde_json::from_str(&plan.replace('\u{1f}', " ")).unwrap();
        let mut tables = Vec::new();
        collect_tables(&json, &mut tables);
        for t in tables.iter().filter(|t| t["table_name"] == "b") {
            assert_eq!(t["key"], "PRIMARY", "{plan}");
            assert_ne!(t["access_type"], "ALL", "{plan}");
        }
        assert!(tables.iter().any(|t| t["table_name"] == "b"), "{plan}");
    }
    db.drop_db().await;
}

fn collect_tables<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(t) = m.get("table") {
                out.push(t);
            }
            for x in m.values() {
                collect_tables(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_tables(x, out)),
        _ => {}
    }
}

#[task(
    queue = "limits_drain",
    name = "tests.limits.keyed",
    concurrency = 1,
    concurrency_key = |k: &u32| *k
)]
async fn keyed(key: u32) -> Result<(), TaskError> {
    let _ = key;
    Ok(())
}

/// The invariant behind every release: in any committed state, a key whose
/// semaphore has room has no blocked job (a freed slot goes to the first
/// blocked job, or the count drops only when none waits). Sampled while
/// 4,000 jobs of 200 keys limited to 1 each drain through every release
/// path at once (the fast hand-over, several releases in flight, the
/// locked release when a key's queue empties), each sample one statement,
/// so one consistent read. A slot freed while a job stays blocked would
/// strand that job until the 30 s safety sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_slot_is_freed_while_a_job_of_its_key_is_blocked() {
    let (db, client) = setup().await;
    keyed::enqueue_many(&client, (0..4_000u32).map(|i| i % 200))
        .await
        .unwrap();
    let stranded = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM queue_semaphores s WHERE s.running < s.lim \
             AND EXISTS (SELECT 1 FROM queue_blocked b WHERE b.concurrency_key = s.concurrency_key)",
        )
        .fetch_one(client.pool())
        .await
        .unwrap()
    };
    assert_eq!(stranded().await, 0, "before the drain");
    let runtime = Runtime::builder(client.clone())
        .queues(["limits_drain"])
        .concurrency(10)
        .start()
        .await
        .unwrap();
    let mut samples = 0;
    loop {
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue_jobs")
            .fetch_one(client.pool())
            .await
            .unwrap();
        assert_eq!(
            stranded().await,
            0,
            "a key with room and a blocked job ({left} jobs left)"
        );
        samples += 1;
        if left == 0 {
            break;
        }
        assert!(samples < 3_000, "the drain did not end ({left} jobs left)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        samples > 3,
        "the drain was sampled while it ran ({samples} samples)"
    );
    let running: Option<i64> =
        sqlx::query_scalar("SELECT CAST(SUM(running) AS SIGNED) FROM queue_semaphores")
            .fetch_one(client.pool())
            .await
            .unwrap();
    assert_eq!(running.unwrap_or(0), 0, "every slot released at the end");
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

static HOT_NOW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static HOT_PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static HOT_RUNS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// A task limited to 4 at once, each job taking ~1 ms: its slots turn over
/// fast within one runtime, which passes them to its spares.
#[task(queue = "limits_hot", name = "tests.limits.hot", concurrency = 4)]
async fn hot(n: u32) -> Result<(), TaskError> {
    let now = HOT_NOW.fetch_add(1, Ordering::SeqCst) + 1;
    HOT_PEAK.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1)).await;
    HOT_RUNS.lock().unwrap().push(n);
    HOT_NOW.fetch_sub(1, Ordering::SeqCst);
    Ok(())
}

/// One consistent read of a limited drain's books (`queue_tests::slot_books`).
async fn books(client: &queue_runtime::Client) -> (i64, i64, i64, i64) {
    queue_tests::slot_books(client.pool()).await
}

/// Slots passed to spares in the runtime (a spare starts the moment the
/// job before it ends; a release records the chain later) keep the books:
/// sampled during the drain, each sample one consistent statement, the
/// jobs recorded as holding a slot (`slot = 1`, ready or running) always
/// number exactly what the semaphore counts, and never more than the
/// limit, while spares (running, `slot = 0`) are seen. The first runtime
/// stops halfway (its spares handed back, nothing lost) and a second one
/// finishes. At most 4 run at once and the limit is reached; every job
/// runs exactly once; every slot comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_passed_to_spares_keep_the_limit_and_the_books() {
    let (db, client) = setup().await;
    let n = 600u32;
    hot::enqueue_many(&client, 0..n).await.unwrap();
    let start = || {
        Runtime::builder(client.clone())
            .queues(["limits_hot"])
            .concurrency(10)
            .start()
    };
    let mut runtime = Some(start().await.unwrap());
    let (mut samples, mut spares_seen, mut restarted) = (0, 0, false);
    loop {
        let (left, spares) = queue_tests::check_slot_books(client.pool(), 4).await;
        samples += 1;
        if spares > 0 {
            spares_seen += 1;
        }
        if left == 0 {
            break;
        }
        if !restarted && left < i64::from(n / 2) {
            // Spares held now are handed back; running jobs finish.
            let first = runtime.take().unwrap();
            first.shutdown(Duration::from_secs(5)).await.unwrap();
            let (_, holders, counted, spares) = books(&client).await;
            assert_eq!(
                (holders, spares),
                (counted, 0),
                "after the first runtime stopped"
            );
            runtime = Some(start().await.unwrap());
            restarted = true;
        }
        assert!(samples < 5_000, "the drain did not end ({left} jobs left)");
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    runtime
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        restarted && samples > 3,
        "sampled while it ran ({samples} samples)"
    );
    assert!(
        spares_seen > 0,
        "spares were held during the drain ({samples} samples)"
    );
    assert_eq!(
        HOT_PEAK.load(Ordering::SeqCst),
        4,
        "the limit, reached, never exceeded"
    );
    let mut runs = HOT_RUNS.lock().unwrap().clone();
    runs.sort_unstable();
    assert_eq!(
        runs,
        (0..n).collect::<Vec<_>>(),
        "every job ran exactly once"
    );
    let (_, _, running, _) = books(&client).await;
    assert_eq!(running, 0, "every slot released at the end");
    db.drop_db().await;
}

static LOSSY_RELEASE: AtomicBool = AtomicBool::new(false);

/// Limited to 4 at once, no retry; job 0 holds its slot until released,
/// the others take 30 ms.
#[task(
    queue = "limits_lossy",
    name = "tests.limits.lossy",
    concurrency = 4,
    retries = 0
)]
async fn lossy(n: u32) -> Result<(), TaskError> {
    if n == 0 {
        while !LOSSY_RELEASE.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    } else {
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    Ok(())
}

/// A slot holder that loses its lease while it runs (taken back by the
/// rescuer, its slot freed and given on; with no retry left it is buried
/// at the same attempt) and then succeeds, passing its slot to a spare: the
/// release finds it no longer running, frees nothing and deletes nothing,
/// and the spare is disinherited (it runs on without a slot, and its end
/// frees none). The books hold throughout: the jobs recorded as holding a
/// slot always number what the semaphore counts, and every slot comes back
/// at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_lost_its_lease_disinherits_its_spare_and_frees_nothing() {
    let (db, client) = setup().await;
    let first = lossy::enqueue(&client, 0).await.unwrap();
    lossy::enqueue_many(&client, 1..160u32).await.unwrap();
    let runtime = Runtime::builder(client.clone())
        .queues(["limits_lossy"])
        .concurrency(10)
        .lease(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "spares passing the other slot",
        || async { runtime.spare_counts().0 >= 5 },
    )
    .await;
    // Job 0 runs; its lease is made another's and left to expire, so the
    // rescuer takes it back (its heartbeat no longer matches).
    let taken = sqlx::query(
        "UPDATE queue_jobs SET lease_owner = 'rt-gone', \
         lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL 200000 MICROSECOND \
         WHERE id = ? AND state = 2",
    )
    .bind(first.0)
    .execute(client.pool())
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(taken, 1, "job 0 was running");
    wait_until(Duration::from_secs(30), "job 0 taken back", || async {
        let owner: Option<String> =
            sqlx::query_scalar("SELECT lease_owner FROM queue_jobs WHERE id = ?")
                .bind(first.0)
                .fetch_optional(client.pool())
                .await
                .unwrap()
                .flatten();
        owner.as_deref() != Some("rt-gone")
    })
    .await;
    // Released with spares at hand, so that its slot passes to one (the
    // three other slots' jobs end every ~10 ms, each replaced by a spare
    // within a release: the pool is rarely empty for long).
    wait_until(Duration::from_secs(30), "two spares held", || async {
        runtime.spare_counts().2 >= 2
    })
    .await;
    LOSSY_RELEASE.store(true, Ordering::SeqCst);
    let mut samples = 0;
    loop {
        let (left, _) = queue_tests::check_slot_books(client.pool(), 4).await;
        samples += 1;
        if left == 0 {
            break;
        }
        assert!(samples < 5_000, "the drain did not end ({left} jobs left)");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (passed, disinherited, _) = runtime.spare_counts();
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(passed > 5, "slots were passed to spares ({passed})");
    assert_eq!(disinherited, 1, "job 0's spare was disinherited");
    let state: u8 = sqlx::query_scalar("SELECT state FROM queue_jobs WHERE id = ?")
        .bind(first.0)
        .fetch_one(client.pool())
        .await
        .unwrap();
    assert_eq!(
        state, 3,
        "job 0 stays buried: its late success deleted nothing"
    );
    let (_, _, running, _) = books(&client).await;
    assert_eq!(running, 0, "every slot released at the end");
    db.drop_db().await;
}
