//! The bench's tasks and what they record.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use queue_runtime::{TaskError, task};

/// Microseconds since the Unix epoch (the clock every process of the bench
/// shares, being on one machine).
pub(crate) fn now_us() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros(),
    )
    .unwrap_or(u64::MAX)
}

/// No-op jobs finished.
pub(crate) static DONE: AtomicU64 = AtomicU64::new(0);
/// When the first no-op job of a run started (µs since epoch; 0: none yet).
pub(crate) static FIRST_US: AtomicU64 = AtomicU64::new(0);
/// Enqueue-to-start latencies of `timed` jobs, ms.
pub(crate) static LAT_MS: Mutex<Vec<f64>> = Mutex::new(Vec::new());
/// Burst jobs of the churn scenario finished.
pub(crate) static BULK_DONE: AtomicU64 = AtomicU64::new(0);
/// Enqueue-to-start latencies of the churn scenario's priority-0 jobs, ms.
pub(crate) static URGENT_MS: Mutex<Vec<f64>> = Mutex::new(Vec::new());
/// Held jobs (memory scenario) return once this is set.
pub(crate) static RELEASE: AtomicBool = AtomicBool::new(false);

/// Resets every counter and sink.
pub(crate) fn reset() {
    DONE.store(0, Ordering::SeqCst);
    FIRST_US.store(0, Ordering::SeqCst);
    BULK_DONE.store(0, Ordering::SeqCst);
    RELEASE.store(false, Ordering::SeqCst);
    LAT_MS.lock().unwrap().clear();
    URGENT_MS.lock().unwrap().clear();
    DUE_MS.lock().unwrap().clear();
}

fn lag_ms(sent_us: u64) -> f64 {
    now_us().saturating_sub(sent_us) as f64 / 1e3
}

/// Does nothing: the throughput scenarios measure the runtime, not the work.
#[task(queue = "bench", name = "bench.noop")]
pub(crate) async fn noop() -> Result<(), TaskError> {
    if DONE.load(Ordering::Relaxed) == 0 {
        let _ = FIRST_US.compare_exchange(0, now_us(), Ordering::SeqCst, Ordering::SeqCst);
    }
    DONE.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// A no-op limited to 50 at once across every runtime.
#[task(queue = "bench", name = "bench.noop_limited", concurrency = 50)]
pub(crate) async fn noop_limited() -> Result<(), TaskError> {
    noop().await
}

/// A no-op limited to 1 at once per key.
#[task(queue = "bench", name = "bench.noop_keyed", concurrency = 1, concurrency_key = |k: &u32| *k)]
pub(crate) async fn noop_keyed(key: u32) -> Result<(), TaskError> {
    let _ = key;
    noop().await
}

/// 20 ms of work, limited to 2 at once: a backlog that drains slowly.
#[task(queue = "bench", name = "bench.slow_limited", concurrency = 2)]
pub(crate) async fn slow_limited() -> Result<(), TaskError> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(())
}

/// Like `timed`, on the queue of the limited backlog.
#[task(queue = "bench", name = "bench.timed_bench")]
pub(crate) async fn timed_bench(sent_us: u64) -> Result<(), TaskError> {
    timed(sent_us).await
}

/// Records the time from its enqueue (the payload: µs since epoch, taken
/// just before the enqueue call) to its start.
#[task(queue = "bench_lat", name = "bench.timed")]
pub(crate) async fn timed(sent_us: u64) -> Result<(), TaskError> {
    let ms = lag_ms(sent_us);
    LAT_MS.lock().unwrap().push(ms);
    Ok(())
}

/// The churn scenario's burst: priority 4, no work.
#[task(queue = "bench_churn", priority = 4, name = "bench.bulk")]
pub(crate) async fn bulk() -> Result<(), TaskError> {
    BULK_DONE.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The churn scenario's priority-0 arrivals: records enqueue-to-start.
#[task(queue = "bench_churn", priority = 0, name = "bench.urgent")]
pub(crate) async fn urgent(sent_us: u64) -> Result<(), TaskError> {
    let ms = lag_ms(sent_us);
    URGENT_MS.lock().unwrap().push(ms);
    Ok(())
}

/// Holds its slot until [`RELEASE`] (memory scenario: keeps the queue full
/// while the runtime serves it).
#[task(queue = "bench_mem", name = "bench.hold")]
pub(crate) async fn hold() -> Result<(), TaskError> {
    while !RELEASE.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Signed time from a delayed job's run time to its start, ms (negative:
/// it started early).
pub(crate) static DUE_MS: Mutex<Vec<f64>> = Mutex::new(Vec::new());

/// A delayed job: its payload is its run time (µs since epoch); records how
/// long after that it started.
#[task(queue = "bench_delay", name = "bench.delayed")]
pub(crate) async fn delayed(due_us: u64) -> Result<(), TaskError> {
    let late_us = i128::from(now_us()) - i128::from(due_us);
    DUE_MS.lock().unwrap().push(late_us as f64 / 1e3);
    Ok(())
}
