//! Moves scheduled jobs that came due into the claim index.

use super::outage::Failures;
use super::*;
use crate::error::Error;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) async fn dispatcher(shared: Arc<Shared>) {
    let client = &shared.client;
    let mut scheduled_rx = client.inner.scheduled_gen.subscribe();
    let mut clock_rx = client.inner.clock.watch();
    let mut last_ok: Option<DateTime<Utc>> = None;
    let mut last_full = Instant::now();
    let mut failures = Failures::default();
    loop {
        let now = client.now();
        let since = match last_ok {
            Some(t) if last_full.elapsed() < Duration::from_secs(300) => {
                Some(crate::clock::sub(t, Duration::from_secs(600)))
            }
            _ => {
                last_full = Instant::now();
                None
            }
        };
        let mut wait = shared.poll_interval;
        // One cheap non-locking look at the earliest scheduled time; the
        // locking dispatch only when something is due.
        let store = client.store();
        let sent = Instant::now();
        let step = async {
            match store.next_scheduled(since).await? {
                Some(t) if t <= now => {
                    let n = store.dispatch_due(now, since).await?;
                    Ok((n, store.next_scheduled(Some(now)).await?))
                }
                next => Ok::<_, Error>((0, next)),
            }
        };
        let stepped = step.await;
        shared
            .outage
            .track("dispatching scheduled jobs", sent, &stepped);
        match stepped {
            Ok((n, next)) => {
                failures.reset();
                last_ok = Some(now);
                if n > 0 {
                    client.inner.ready_gen.send_modify(|g| *g += 1);
                }
                if let Some(next) = next {
                    wait = wait.min((next - now).to_std().unwrap_or(Duration::ZERO));
                }
            }
            Err(_) => {
                wait = failures.next_wait();
            }
        }
        let mut stop = shared.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = scheduled_rx.changed() => {}
            _ = crate::clock::moved(&mut clock_rx) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
