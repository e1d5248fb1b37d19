//! Extends the leases of the jobs in flight.

use super::outage::Failures;
use super::*;
use crate::clock::add;
use queue_core::JobId;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) async fn heartbeat(shared: Arc<Shared>) {
    let mut wait = shared.heartbeat;
    let mut failures = Failures::default();
    loop {
        // Beats go on during a shutdown's drain; shutdown aborts this task last.
        tokio::time::sleep(wait).await;
        let repeated = wait.is_zero();
        wait = shared.heartbeat;
        let jobs: Vec<(JobId, u32)> = {
            let map = shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(id, f)| (*id, f.attempt)).collect()
        };
        if jobs.is_empty() {
            continue;
        }
        let now = shared.client.now();
        let sent = Instant::now();
        let beat = shared
            .client
            .store()
            .heartbeat(&shared.owner, &jobs, add(now, shared.lease), now)
            .await;
        shared.outage.track("heartbeat", sent, &beat);
        match beat {
            Ok(n) => {
                failures.reset();
                if !repeated && sent.elapsed() > shared.heartbeat / 2 {
                    // The beat waited (for a connection, through an outage):
                    // its list of jobs is old, and jobs claimed since have
                    // not been renewed. Beat again now (once: a server
                    // that is merely slow gets no extra load).
                    wait = Duration::ZERO;
                }
                // A job that is not matched either lost its lease or had its
                // outcome written meanwhile (a success deletes it). Discount
                // every job whose outcome is queued or written by now, so a
                // busy runtime does not cry wolf; a job truly lost keeps
                // missing the fence at every beat while it runs, and its
                // outcome is reported as not recorded when it ends.
                let unmatched = jobs.len().saturating_sub(n as usize);
                let settled = if unmatched == 0 {
                    0
                } else {
                    let map = shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                    jobs.iter()
                        .filter(|(id, a)| map.get(id).is_none_or(|f| f.attempt != *a || f.reported))
                        .count()
                };
                let lost = unmatched.saturating_sub(settled);
                if lost > 0 {
                    tracing::warn!(
                        lost,
                        "some running jobs lost their lease (taken back after it expired); their outcomes will not be recorded"
                    );
                }
            }
            Err(_) => {
                // Try again soon: the leases run out meanwhile.
                wait = failures.next_wait().min(shared.heartbeat);
            }
        }
    }
}
