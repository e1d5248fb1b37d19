//! Per-queue concurrency inside one runtime: a slow queue cannot take
//! every slot from the others.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use queue_runtime::{Runtime, TaskError, task};
use queue_tests::wait_until;

use crate::setup;

static SLOW_NOW: AtomicUsize = AtomicUsize::new(0);
static SLOW_MAX: AtomicUsize = AtomicUsize::new(0);
static SLOW_DONE: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
static FAST_DONE: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[task(queue = "limited_slow", name = "tests.queue_limits.slow")]
async fn slow(n: u32) -> Result<(), TaskError> {
    let _ = n;
    let now = SLOW_NOW.fetch_add(1, Ordering::SeqCst) + 1;
    SLOW_MAX.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    SLOW_NOW.fetch_sub(1, Ordering::SeqCst);
    SLOW_DONE.lock().unwrap().push(Instant::now());
    Ok(())
}

#[task(queue = "limited_fast", name = "tests.queue_limits.fast")]
async fn fast(n: u32) -> Result<(), TaskError> {
    let _ = n;
    FAST_DONE.lock().unwrap().push(Instant::now());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_limit_caps_its_jobs_and_leaves_slots_to_the_others() {
    let (db, client) = setup().await;
    // The slow queue's backlog is enqueued first: without a limit it would
    // take all ten slots (and the prefetch) before a fast job got one.
    slow::enqueue_many(&client, 0..24u32).await.unwrap();
    fast::enqueue_many(&client, 0..60u32).await.unwrap();
    let started = Instant::now();
    let runtime = Runtime::builder(client.clone())
        .queues(["limited_slow", "limited_fast"])
        .concurrency(10)
        .queue_concurrency("limited_slow", 3)
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "every job ran", || async {
        SLOW_DONE.lock().unwrap().len() == 24 && FAST_DONE.lock().unwrap().len() == 60
    })
    .await;
    assert_eq!(
        SLOW_MAX.load(Ordering::SeqCst),
        3,
        "the slow queue ran exactly up to its limit at once"
    );
    // 24 jobs of 150 ms, 3 at a time: about 1.2 s. The fast queue's jobs
    // get the other slots meanwhile: all done long before the slow ones.
    let fast_end = *FAST_DONE.lock().unwrap().iter().max().unwrap();
    let slow_end = *SLOW_DONE.lock().unwrap().iter().max().unwrap();
    assert!(
        slow_end.duration_since(started) >= Duration::from_millis(1_100),
        "the slow queue kept to 3 at a time: done after {:?}",
        slow_end.duration_since(started)
    );
    assert!(
        fast_end < slow_end && slow_end.duration_since(fast_end) > Duration::from_millis(500),
        "the fast queue was not held behind the slow one: fast done {:?}, slow done {:?}",
        fast_end.duration_since(started),
        slow_end.duration_since(started)
    );
    runtime.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limits_are_checked_at_start() {
    let (db, client) = setup().await;
    let start = |b: queue_runtime::RuntimeBuilder| async move {
        b.start().await.map(|_| ()).unwrap_err().to_string()
    };
    let base = || Runtime::builder(client.clone()).queues(["limited_fast"]);
    let e = start(base().queue_concurrency("elsewhere", 2)).await;
    assert!(e.contains("does not serve"), "{e}");
    let e = start(base().queue_concurrency("limited_fast", 0)).await;
    assert!(
        e.contains("must be at least 1") && e.contains("pause_queue"),
        "{e}"
    );
    let e = start(
        base()
            .queue_concurrency("limited_fast", 2)
            .queue_concurrency("limited_fast", 3),
    )
    .await;
    assert!(e.contains("set twice"), "{e}");
    // A limit not below the runtime's concurrency starts (with a warning).
    let r = base()
        .concurrency(4)
        .queue_concurrency("limited_fast", 4)
        .start()
        .await
        .unwrap();
    r.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}
