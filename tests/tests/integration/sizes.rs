//! Sizes and ids of bulk enqueues: statements cut by bytes as well as rows,
//! payloads too big for the server refused before anything is sent, and
//! ids that name the right job whatever `auto_increment_increment` says.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use queue_runtime::flavor::Flavor;
use queue_runtime::{Client, Error, Runtime, TaskError, task};
use queue_tests::wait_until;
use sqlx::Executor;
use sqlx::mysql::MySqlPoolOptions;

use crate::setup;

#[task(queue = "sizes", name = "tests.sizes.blob")]
async fn blob(text: String) -> Result<(), TaskError> {
    let _ = text;
    Ok(())
}

static BIG_RAN: Mutex<Vec<usize>> = Mutex::new(Vec::new());

#[task(queue = "sizes_run", name = "tests.sizes.big")]
async fn big(text: String) -> Result<(), TaskError> {
    BIG_RAN.lock().unwrap().push(text.len());
    Ok(())
}

static NUMBERED: Mutex<BTreeMap<u32, u32>> = Mutex::new(BTreeMap::new());

#[task(queue = "ids", name = "tests.sizes.numbered")]
async fn numbered(n: u32) -> Result<(), TaskError> {
    *NUMBERED.lock().unwrap().entry(n).or_default() += 1;
    Ok(())
}

/// A payload whose JSON is exactly `bytes` long (a string: two quotes).
fn text_of_json_len(bytes: u64) -> String {
    "x".repeat(usize::try_from(bytes).unwrap() - 2)
}

/// The payload stored for job `id`.
async fn stored_payload(client: &Client, id: u64) -> String {
    sqlx::query_scalar("SELECT payload FROM queue_jobs WHERE id = ?")
        .bind(id)
        .fetch_one(client.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_10kb_payloads_are_cut_to_fit_the_packet() {
    let (db, client) = setup().await;
    let packet: u64 = sqlx::query_scalar("SELECT @@max_allowed_packet")
        .fetch_one(client.pool())
        .await
        .unwrap();
    for n in [1_999usize, 2_001] {
        let payloads: Vec<String> = (0..n)
            .map(|i| format!("{i:05}{}", "p".repeat(10_000)))
            .collect();
        let total: usize = payloads.iter().map(String::len).sum();
        assert!(total as u64 > packet, "the batch must exceed one packet");
        let ids = blob::enqueue_many(&client, payloads).await.unwrap();
        assert_eq!(ids.len(), n);
        for (i, id) in ids.iter().enumerate().step_by(97) {
            let payload = stored_payload(&client, id.0).await;
            assert!(payload.starts_with(&format!("\"{i:05}")), "job {id}");
        }
    }
    assert_eq!(client.stats().await.unwrap().total.ready, 4_000);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_at_the_limit_runs_and_one_byte_more_is_refused() {
    let (db, client) = setup().await;
    let limit = client.payload_limit().await.unwrap();
    let packet: u64 = sqlx::query_scalar("SELECT @@max_allowed_packet")
        .fetch_one(client.pool())
        .await
        .unwrap();
    assert_eq!(limit, packet - 128 * 1024);

    let over = text_of_json_len(limit + 1);
    let err = big::enqueue(&client, over.clone()).await.unwrap_err();
    match &err {
        Error::PayloadTooLarge { size, limit: l, .. } => {
            assert_eq!((*size, *l), (limit + 1, limit));
            let text = err.to_string();
            assert!(text.contains(&limit.to_string()) && text.contains(&(limit + 1).to_string()));
        }
        e => panic!("expected PayloadTooLarge, got {e}"),
    }
    // 20 MB, more than the whole packet: the same clear error, not a reset
    // connection.
    let err = big::enqueue(&client, "y".repeat(20_000_000))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::PayloadTooLarge {
                size: 20_000_002,
                ..
            }
        ),
        "{err}"
    );
    // In a batch, one too big refuses the batch before anything is sent.
    let err = big::enqueue_many(&client, ["small".to_owned(), over.clone()])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
    // Inside the caller's transaction too; the transaction is untouched.
    let mut tx = client.pool().begin().await.unwrap();
    let err = big::with(over)
        .enqueue_in(&client, &mut tx)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
    tx.commit().await.unwrap();
    assert_eq!(
        client.stats().await.unwrap().total.total(),
        0,
        "nothing stored"
    );

    // Exactly the limit: stored, claimed and run whole.
    let at_limit = text_of_json_len(limit);
    let id = big::enqueue(&client, at_limit).await.unwrap();
    let runtime = Runtime::builder(client.clone())
        .queues(["sizes_run"])
        .start()
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        &format!("job {id} ran"),
        || async {
            BIG_RAN
                .lock()
                .unwrap()
                .contains(&(usize::try_from(limit).unwrap() - 2))
        },
    )
    .await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

/// Galera sets `auto_increment_increment` to the cluster size, Group
/// Replication to 7: a bulk enqueue's ids are not consecutive there. Every
/// returned id must be the job with that payload, and every job must run.
/// Run for both the MariaDB statements (INSERT … RETURNING) and the MySQL
/// ones (LAST_INSERT_ID() and the increment), on this MariaDB server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_ids_are_right_with_an_auto_increment_step_of_3() {
    let (db, _client) = setup().await;
    let pool = MySqlPoolOptions::new()
        .max_connections(10)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET time_zone = '+00:00'").await?;
                conn.execute("SET SESSION auto_increment_increment = 3, auto_increment_offset = 2")
                    .await?;
                Ok(())
            })
        })
        .connect(&db.url)
        .await
        .unwrap();
    let stepped = Client::from_pool(pool).await.unwrap();
    assert_eq!(stepped.flavor(), Flavor::MariaDb);
    let mut expected = BTreeMap::new();
    for (round, c) in [stepped.clone(), stepped.with_flavor(Flavor::MySql)]
        .into_iter()
        .enumerate()
    {
        let base = round as u32 * 100_000;
        // A few sizes: one statement, several statement shapes, and a
        // single job (the one-row path).
        for (k, n) in [(0u32, 1u32), (1, 7), (2, 300), (3, 2_500)] {
            let first = base + k * 3_000;
            let payloads: Vec<u32> = (first..first + n).collect();
            let ids = numbered::enqueue_many(&c, payloads.clone()).await.unwrap();
            assert_eq!(ids.len(), payloads.len());
            let mut distinct = ids.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), ids.len(), "ids are distinct");
            if n > 1 {
                assert_eq!((ids[1].0 - ids[0].0) % 3, 0, "the server's step is 3");
            }
            for (id, p) in ids.iter().zip(&payloads) {
                assert_eq!(stored_payload(&c, id.0).await, p.to_string(), "job {id}");
                expected.insert(*p, 1u32);
            }
        }
    }
    let runtime = Runtime::builder(stepped.clone())
        .queues(["ids"])
        .concurrency(20)
        .start()
        .await
        .unwrap();
    let want = expected.len();
    wait_until(
        Duration::from_secs(60),
        &format!("{want} jobs ran"),
        || async { NUMBERED.lock().unwrap().len() >= want },
    )
    .await;
    wait_until(Duration::from_secs(10), "every job acknowledged", || {
        let c = stepped.clone();
        async move { c.stats().await.unwrap().total.total() == 0 }
    })
    .await;
    // (Payloads from 900,000 on belong to the repair test, which shares
    // the task.)
    let mut ran = NUMBERED.lock().unwrap().clone();
    ran.retain(|p, _| *p < 900_000);
    let wrong: Vec<(u32, Option<u32>)> = expected
        .keys()
        .chain(ran.keys())
        .filter(|p| ran.get(p) != Some(&1) || !expected.contains_key(p))
        .map(|p| (*p, ran.get(p).copied()))
        .take(20)
        .collect();
    assert!(
        wrong.is_empty(),
        "each job runs once; (payload, runs): {wrong:?}"
    );
    // Only the claim index's sentinels (job 0) are left.
    let orphans: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue_ready WHERE job_id <> 0")
        .fetch_one(stepped.pool())
        .await
        .unwrap();
    let left: Vec<(u8, u64, u64)> =
        sqlx::query_as("SELECT priority, seq, job_id FROM queue_ready WHERE job_id <> 0 LIMIT 20")
            .fetch_all(stepped.pool())
            .await
            .unwrap();
    assert_eq!(orphans, 0, "no claim-index row left behind: {left:?}");
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

/// What an earlier version's bulk enqueue left on a server whose
/// auto_increment_increment is not 1: ready jobs without a row in the claim
/// index. A runtime finds them at start and runs them; a job made ready
/// just now is left alone (its transaction may not have committed yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_jobs_missing_from_the_claim_index_are_healed() {
    let (db, client) = setup().await;
    for (n, age_s) in [(910_001u32, 120), (910_002, 3_600), (910_003, 0)] {
        sqlx::query(
            "INSERT INTO queue_jobs (task, queue, priority, state, payload, attempts, max_attempts, \
             run_at, created_at, updated_at) VALUES ('tests.sizes.numbered', 'ids_heal', 2, 0, ?, 0, 4, \
             UTC_TIMESTAMP(6) - INTERVAL ? SECOND, UTC_TIMESTAMP(6) - INTERVAL ? SECOND, \
             UTC_TIMESTAMP(6) - INTERVAL ? SECOND)",
        )
        .bind(n.to_string())
        .bind(age_s)
        .bind(age_s)
        .bind(age_s)
        .execute(client.pool())
        .await
        .unwrap();
    }
    let runtime = Runtime::builder(client.clone())
        .queues(["ids_heal"])
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the two old jobs ran", || async {
        let ran = NUMBERED.lock().unwrap();
        ran.contains_key(&910_001) && ran.contains_key(&910_002)
    })
    .await;
    assert!(
        !NUMBERED.lock().unwrap().contains_key(&910_003),
        "a job made ready just now is not given a second claim-index row"
    );
    let indexed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue_ready WHERE job_id <> 0")
        .fetch_one(client.pool())
        .await
        .unwrap();
    assert_eq!(indexed, 0, "the healed rows were claimed");
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}
