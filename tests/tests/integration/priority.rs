//! Priority order: a priority-0 job overtakes a backlog of priority-4 jobs.

use std::sync::Mutex;
use std::time::Duration;

use queue_runtime::{Runtime, TaskError, task};
use queue_tests::wait_until;

use crate::setup;

static LOG: Mutex<Vec<(u8, u32)>> = Mutex::new(Vec::new());

#[task(queue = "prio", priority = 4)]
async fn prio_job(n: (u8, u32)) -> Result<(), TaskError> {
    LOG.lock().unwrap().push(n);
    tokio::time::sleep(Duration::from_millis(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_zero_overtakes_a_priority_four_backlog() {
    let (db, client) = setup().await;
    prio_job::enqueue_many(&client, (0..300).map(|i| (4u8, i)))
        .await
        .unwrap();
    let runtime = Runtime::builder(client.clone())
        .concurrency(2)
        .queues(["prio"])
        .start()
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "part of the backlog ran",
        || async { LOG.lock().unwrap().len() >= 20 },
    )
    .await;
    prio_job::with((0, 0))
        .priority(0)
        .enqueue(&client)
        .await
        .unwrap();
    // Jobs started by the time the enqueue returned: an upper bound on
    // those started before the job was visible.
    let before = LOG.lock().unwrap().len();
    wait_until(
        Duration::from_secs(10),
        "the priority-0 job ran",
        || async { LOG.lock().unwrap().iter().any(|e| e.0 == 0) },
    )
    .await;
    let log = LOG.lock().unwrap().clone();
    let pos = log.iter().position(|e| e.0 == 0).unwrap();
    // Jobs the runtime held when it arrived (running, or coming back from a
    // claim in flight; prefetched ones waiting for a slot start after it
    // once it is claimed) may start first: at most concurrency + prefetch,
    // and the adaptive prefetch is at most 16 × concurrency: 2 + 32 = 34
    // (about 25 ms of these jobs at the runtime's pace).
    assert!(
        pos <= before + 34,
        "priority-0 job ran at position {pos}, backlog had run {before}"
    );
    assert!(log.len() < 300, "it did not wait for the backlog");
    // Within priority 4, enqueue order is kept up to one claim's batch:
    // two run at once, and with a backlog two claims may be in flight, the
    // later one's jobs (at most concurrency + prefetch = 34) starting first.
    let p4: Vec<u32> = log.iter().filter(|e| e.0 == 4).map(|e| e.1).collect();
    for (k, v) in p4.iter().enumerate() {
        let k = k as u32;
        assert!(
            v.abs_diff(k) <= 34,
            "priority-4 job {v} ran at position {k}: {p4:?}"
        );
    }
    runtime.shutdown(Duration::from_secs(10)).await.unwrap();
    db.drop_db().await;
}
