//! Success, retry with backoff, dead, panics and undecodable payloads.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use queue_runtime::{JobState, Runtime, TaskContext, TaskError, task};
use queue_tests::wait_until;
use serde::{Deserialize, Serialize};

use crate::{insert_raw_job, setup, start_runtime, wait_for_dead};

#[derive(Debug, Serialize, Deserialize)]
struct Message {
    id: u32,
    to: String,
}

static ATTEMPTS: Mutex<Option<HashMap<u32, Vec<u32>>>> = Mutex::new(None);
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MAX_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Seed 000: three recipients always fail.
#[task(queue = "outbox20", retries = 2, backoff = "constant(20ms)")]
async fn send_message(ctx: TaskContext, msg: Message) -> Result<(), TaskError> {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    MAX_RUNNING.fetch_max(now, Ordering::SeqCst);
    ATTEMPTS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(msg.id)
        .or_default()
        .push(ctx.attempt());
    tokio::time::sleep(Duration::from_millis(30)).await;
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    if msg.id.is_multiple_of(5) && msg.id <= 15 {
        return Err(TaskError::msg(format!("mailbox {} unavailable", msg.to)));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_messages_three_always_fail() {
    let (db, client) = setup().await;
    let msgs = (1..=20).map(|id| Message {
        id,
        to: format!("user{id}@example.com"),
    });
    let ids = send_message::enqueue_many(&client, msgs).await.unwrap();
    assert_eq!(ids.len(), 20);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order: {ids:?}");

    let runtime = Runtime::builder(client.clone())
        .concurrency(10)
        .queues(["outbox20"])
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "all messages sent or dead", || {
        let client = client.clone();
        async move {
            let s = client.stats().await.unwrap();
            s.total.ready + s.total.scheduled + s.total.running == 0 && s.total.dead == 3
        }
    })
    .await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();

    let attempts = ATTEMPTS.lock().unwrap().clone().unwrap();
    assert_eq!(attempts.len(), 20, "every message was tried");
    for (id, tries) in &attempts {
        if [5, 10, 15].contains(id) {
            assert_eq!(tries, &vec![1, 2, 3], "message {id} tried three times");
        } else {
            assert_eq!(tries, &vec![1], "message {id} sent once");
        }
    }
    let max = MAX_RUNNING.load(Ordering::SeqCst);
    assert!(max <= 10, "at most 10 sends at once, saw {max}");
    assert!(max >= 2, "sends ran concurrently, saw at most {max}");

    let dead = client.dead_jobs(10).await.unwrap();
    assert_eq!(dead.len(), 3);
    for d in &dead {
        assert_eq!(d.attempts, 3);
        assert_eq!(d.task, send_message::NAME);
        assert!(d.last_error.contains("unavailable"), "{}", d.last_error);
        let m: Message = serde_json::from_str(&d.payload).unwrap();
        assert!([5, 10, 15].contains(&m.id));
    }
    // Succeeded jobs are removed.
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.total.total(), 3);
    db.drop_db().await;
}

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    order_id: u64,
}

static DECODE_RAN: AtomicUsize = AtomicUsize::new(0);

#[task(queue = "decode", name = "tests.decode.process_order")]
async fn process_order(order: Order) -> Result<(), TaskError> {
    DECODE_RAN.fetch_add(1, Ordering::SeqCst);
    let _ = order.order_id;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_payload_ends_dead_with_a_clear_error() {
    let (db, client) = setup().await;
    // Stored by raw SQL: valid JSON of the wrong shape, and not JSON at all.
    for payload in [r#"{"order": "x"}"#, "not json"] {
        insert_raw_job(
            &client,
            "tests.decode.process_order",
            "decode",
            payload,
            None,
        )
        .await;
    }
    let runtime = start_runtime(&client, "decode").await;
    wait_for_dead(&client, 2).await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    let dead = client.dead_jobs(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    for d in dead {
        assert_eq!(d.attempts, 1, "a decode failure is not retried");
        assert!(
            d.last_error.starts_with("payload cannot be decoded"),
            "{}",
            d.last_error
        );
        assert!(
            d.payload == "not json" || d.payload.contains("order"),
            "payload kept: {}",
            d.payload
        );
    }
    assert_eq!(DECODE_RAN.load(Ordering::SeqCst), 0);
    db.drop_db().await;
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

#[task(queue = "panics", retries = 1, backoff = "constant(10ms)")]
async fn panicking_task() -> Result<(), TaskError> {
    PANICS.fetch_add(1, Ordering::SeqCst);
    panic!("boom in the handler");
}

static PERMANENT: AtomicUsize = AtomicUsize::new(0);

#[task(queue = "panics", retries = 5, backoff = "constant(10ms)")]
async fn permanent_failure() -> Result<(), TaskError> {
    PERMANENT.fetch_add(1, Ordering::SeqCst);
    Err(TaskError::permanent(std::io::Error::other("card declined")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_are_errors_and_permanent_errors_are_not_retried() {
    let (db, client) = setup().await;
    let p = panicking_task::enqueue(&client, ()).await.unwrap();
    let q = permanent_failure::enqueue(&client, ()).await.unwrap();
    let runtime = start_runtime(&client, "panics").await;
    wait_for_dead(&client, 2).await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    let p = client.job(p).await.unwrap().unwrap();
    assert_eq!(p.state, JobState::Dead);
    assert_eq!(p.attempts, 2);
    assert_eq!(
        p.last_error.as_deref(),
        Some("panicked: boom in the handler")
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 2);
    let q = client.job(q).await.unwrap().unwrap();
    assert_eq!(q.attempts, 1);
    assert_eq!(q.last_error.as_deref(), Some("card declined"));
    assert_eq!(PERMANENT.load(Ordering::SeqCst), 1);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_task_is_handed_back_not_lost() {
    let (db, client) = setup().await;
    let id = insert_raw_job(&client, "no.such.task", "orphans", "null", None).await;
    let runtime = start_runtime(&client, "orphans").await;
    crate::wait_for_state(&client, id, JobState::Scheduled, Duration::from_secs(10)).await;
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    let job = client.job(id).await.unwrap().unwrap();
    assert_eq!(job.attempts, 0, "the hand-back does not spend an attempt");
    assert!(
        job.last_error
            .unwrap()
            .contains("unknown task `no.such.task`")
    );
    assert!(job.run_at > client.now() + chrono::Duration::seconds(30));
    db.drop_db().await;
}
