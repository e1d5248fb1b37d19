//! The claim path: index order without filesort, disjoint concurrent
//! claims, and rows committed behind a cursor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use queue_runtime::{Runtime, TaskError, task};
use queue_tests::wait_until;
use sqlx::{AssertSqlSafe, Row};

use crate::{insert_raw_job, setup};

async fn fill_ready(pool: &sqlx::MySqlPool, queue: &str, n: u64) {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO queue_ready (queue, priority, job_id) SELECT '{queue}', seq % 5, seq FROM seq_1_to_{n}"
    )))
    .execute(pool)
    .await
    .unwrap();
}

fn run_claim(sql: &str) -> sqlx::query::Query<'static, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_reads_the_primary_key_in_order_without_filesort() {
    let (db, client) = setup().await;
    fill_ready(client.pool(), "a", 5000).await;
    fill_ready(client.pool(), "b", 5000).await;
    sqlx::query("ANALYZE TABLE queue_ready")
        .execute(client.pool())
        .await
        .unwrap();
    for (last, stragglers) in [
        ([0u64; 5], vec![]),
        ([100, 0, 2000, 0, 4000], vec![(4u8, 3u64), (1, 7)]),
    ] {
        let sql = queue_runtime::__private::claim_sql("a", &last, &stragglers, 10);
        let explain = format!("EXPLAIN FORMAT=JSON {sql}");
        let row = run_claim(&explain).fetch_one(client.pool()).await.unwrap();
        let plan: String = row.get(0);
        let json: serde_json::Value = serde_json::from_str(&plan).unwrap();
        let text = plan.to_lowercase();
        assert!(!text.contains("filesort"), "claim must not sort: {plan}");
        let table = find_table(&json).expect("a table in the plan");
        assert_eq!(table["key"], "PRIMARY", "{plan}");
        assert_eq!(table["access_type"], "range", "{plan}");
    }
    db.drop_db().await;
}

fn find_table(v: &serde_json::Value) -> Option<&serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(t) = m.get("table") {
                return Some(t);
            }
            m.values().find_map(find_table)
        }
        serde_json::Value::Array(a) => a.iter().find_map(find_table),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_gets_its_own_rows_while_the_first_holds_its_claim() {
    let (db, client) = setup().await;
    fill_ready(client.pool(), "a", 2000).await;
    let sql = queue_runtime::__private::claim_sql("a", &[0; 5], &[], 10);
    let begin = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION";
    let mut a = client.pool().begin_with(begin).await.unwrap();
    let mut b = client.pool().begin_with(begin).await.unwrap();
    let rows_a: Vec<u64> = run_claim(&sql)
        .fetch_all(&mut *a)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(1))
        .collect();
    let locked_a: u64 = sqlx::query_scalar(
        "SELECT trx_rows_locked FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = CONNECTION_ID()",
    )
    .fetch_one(&mut *a)
    .await
    .unwrap();
    let rows_b: Vec<u64> = run_claim(&sql)
        .fetch_all(&mut *b)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(1))
        .collect();
    assert_eq!(rows_a.len(), 10);
    assert_eq!(
        rows_b.len(),
        10,
        "the second worker is not blocked or starved"
    );
    assert!(
        rows_a.iter().all(|r| !rows_b.contains(r)),
        "{rows_a:?} vs {rows_b:?}"
    );
    assert!(
        locked_a <= 11,
        "the first claim locked only what it took: {locked_a} rows"
    );
    a.rollback().await.unwrap();
    b.rollback().await.unwrap();
    db.drop_db().await;
}

static LATE_RAN: AtomicUsize = AtomicUsize::new(0);

#[task(queue = "late", name = "tests.claim.late")]
async fn late_job(n: u32) -> Result<(), TaskError> {
    let _ = n;
    LATE_RAN.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_behind_the_cursor_is_still_claimed() {
    let (db, client) = setup().await;
    let runtime = Runtime::builder(client.clone())
        .queues(["late"])
        .start()
        .await
        .unwrap();
    late_job::enqueue_many(&client, 0..50).await.unwrap();
    wait_until(Duration::from_secs(10), "the first jobs ran", || async {
        LATE_RAN.load(Ordering::SeqCst) == 50
    })
    .await;
    // A row that enters the claim index below the cursor, as a transaction
    // that took its AUTO_INCREMENT value early and committed late would.
    insert_raw_job(&client, "tests.claim.late", "late", "7", Some(1)).await;
    wait_until(Duration::from_secs(45), "the late row ran", || async {
        LATE_RAN.load(Ordering::SeqCst) == 51
    })
    .await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

const BACKLOG: usize = 3_000;
static BACKLOG_RUNS: [AtomicUsize; BACKLOG] = [const { AtomicUsize::new(0) }; BACKLOG];
static BACKLOG_NOW: AtomicUsize = AtomicUsize::new(0);
static BACKLOG_MAX: AtomicUsize = AtomicUsize::new(0);

#[task(queue = "backlog", name = "tests.claim.backlog")]
async fn backlog_job(n: usize) -> Result<(), TaskError> {
    let now = BACKLOG_NOW.fetch_add(1, Ordering::SeqCst) + 1;
    BACKLOG_MAX.fetch_max(now, Ordering::SeqCst);
    BACKLOG_RUNS[n].fetch_add(1, Ordering::SeqCst);
    if n.is_multiple_of(7) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    BACKLOG_NOW.fetch_sub(1, Ordering::SeqCst);
    Ok(())
}

/// A backlog of fast jobs, where each runtime keeps two claims in flight:
/// two runtimes in one process, each at concurrency 4, run every job exactly
/// once and never more than 8 at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_runs_once_with_claims_in_flight_side_by_side() {
    let (db, client) = setup().await;
    let ids = backlog_job::enqueue_many(&client, 0..BACKLOG)
        .await
        .unwrap();
    // 3,000 rows go in as INSERTs of 2,000, 512, 256, 128, 64, 32 and 8
    // rows: each returned id is the row of that payload.
    let rows: Vec<(u64, String)> =
        sqlx::query_as("SELECT id, payload FROM queue_jobs WHERE queue = 'backlog' ORDER BY id")
            .fetch_all(client.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), BACKLOG);
    for (n, id) in ids.iter().enumerate() {
        let row = rows.iter().find(|r| r.0 == id.0);
        assert_eq!(
            row.map(|r| r.1.as_str()),
            Some(n.to_string().as_str()),
            "job {n}, id {id}"
        );
    }
    let mut runtimes = Vec::new();
    for _ in 0..2 {
        runtimes.push(
            Runtime::builder(client.clone())
                .queues(["backlog"])
                .concurrency(4)
                .start()
                .await
                .unwrap(),
        );
    }
    wait_until(Duration::from_secs(60), "the backlog to drain", || async {
        matches!(client.stats().await, Ok(s) if s.total.total() == 0)
    })
    .await;
    for rt in runtimes {
        rt.shutdown(Duration::from_secs(5)).await.unwrap();
    }
    let runs: Vec<usize> = BACKLOG_RUNS
        .iter()
        .map(|r| r.load(Ordering::SeqCst))
        .collect();
    let not_once: Vec<(usize, usize)> = runs
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, r)| r != 1)
        .collect();
    assert!(
        not_once.is_empty(),
        "(job, runs) not run exactly once: {not_once:?}"
    );
    let max = BACKLOG_MAX.load(Ordering::SeqCst);
    assert!(
        max <= 8,
        "{max} jobs ran at once; the two runtimes have 8 slots"
    );
    db.drop_db().await;
}

static STALE_RUNS: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];
static STALE_RELEASE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Job 0 runs until the test releases it; job 1 returns at once.
#[task(queue = "stale", name = "tests.claim.stale")]
async fn stale_job(n: usize) -> Result<(), TaskError> {
    STALE_RUNS[n].fetch_add(1, Ordering::SeqCst);
    while n == 0 && !STALE_RELEASE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// A claim delivers only the jobs its own UPDATE leased: a claim-index row
/// left behind for a job this runtime already runs (a lost race on a
/// Galera cluster, a retried claim, a rescue) is taken and dropped, and the
/// running job is not handed to the executor a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_claim_index_row_of_a_running_job_does_not_deliver_it_again() {
    let (db, client) = setup().await;
    let runtime = Runtime::builder(client.clone())
        .queues(["stale"])
        .concurrency(4)
        .start()
        .await
        .unwrap();
    let a = stale_job::enqueue(&client, 0).await.unwrap();
    wait_until(Duration::from_secs(10), "job 0 to start", || async {
        STALE_RUNS[0].load(Ordering::SeqCst) == 1
    })
    .await;
    // The stale row, at the tail of the index: the next claim takes it
    // together with job 1's row.
    sqlx::query("INSERT INTO queue_ready (queue, priority, job_id) SELECT queue, priority, id FROM queue_jobs WHERE id = ?")
        .bind(a.0)
        .execute(client.pool())
        .await
        .unwrap();
    stale_job::enqueue(&client, 1).await.unwrap();
    wait_until(Duration::from_secs(10), "job 1 to run", || async {
        STALE_RUNS[1].load(Ordering::SeqCst) == 1
    })
    .await;
    wait_until(
        Duration::from_secs(10),
        "the stale row to be taken",
        || async {
            let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue_ready WHERE job_id = ?")
                .bind(a.0)
                .fetch_one(client.pool())
                .await
                .unwrap();
            left == 0
        },
    )
    .await;
    assert_eq!(
        STALE_RUNS[0].load(Ordering::SeqCst),
        1,
        "job 0 was delivered again"
    );
    let attempts: u32 = sqlx::query_scalar("SELECT attempts FROM queue_jobs WHERE id = ?")
        .bind(a.0)
        .fetch_one(client.pool())
        .await
        .unwrap();
    assert_eq!(attempts, 1, "the stale row counted an attempt");
    STALE_RELEASE.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(10), "both jobs to end", || async {
        matches!(client.stats().await, Ok(s) if s.total.total() == 0)
    })
    .await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(STALE_RUNS[0].load(Ordering::SeqCst), 1);
    assert_eq!(STALE_RUNS[1].load(Ordering::SeqCst), 1);
    db.drop_db().await;
}
