//! Watches the Galera node the runtime's pool reaches: while it is not
//! Synced in the primary component (a donor, desynced, joining, or cut off
//! from the majority), the producer claims nothing.

use super::*;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the node's state is read (one `SHOW GLOBAL STATUS`), and the
/// nodes runtimes claim through (one read of the registry).
pub(super) const GALERA_EVERY: Duration = Duration::from_secs(1);

/// A runtime whose registry row was beaten within this long counts as
/// claiming through its node (rows are beaten every 10 s; a runtime that
/// stops cleanly removes its row at once).
pub(super) const LANE_LIVE: Duration = Duration::from_secs(30);

/// Reads the node's state every [`GALERA_EVERY`]; started only when the
/// server was a Galera node at start. A read that fails (the node is away:
/// the pool's next connection may reach another one) leaves the last state.
pub(super) async fn watcher(shared: Arc<Shared>) {
    let started = std::time::Instant::now();
    loop {
        // Runtimes started together find each other's nodes within a
        // fifth of a second at first.
        let every = if started.elapsed() < LANES_SETTLE {
            GALERA_EVERY / 5
        } else {
            GALERA_EVERY
        };
        if shared.sleep_or_stop(every).await {
            return;
        }
        if let Some(status) = shared.client.store().galera_status().await {
            let node = status.node.clone();
            shared.set_galera(status);
            shared.read_lane(&node).await;
        }
    }
}

/// How long after its start a runtime looks for the nodes of the others
/// five times a second.
const LANES_SETTLE: Duration = Duration::from_secs(5);

impl Shared {
    /// Records the node's state, logging a change of whether it serves claims.
    pub(super) fn set_galera(&self, status: crate::admin::GaleraStatus) {
        let synced = status.synced();
        let was = self.galera_synced.swap(synced, Ordering::SeqCst);
        if was && !synced {
            tracing::warn!(
                state = %status.local_state,
                cluster_status = %status.cluster_status,
                cluster_size = status.cluster_size,
                "the Galera node is not Synced in the primary component: not claiming until it is"
            );
        } else if !was && synced {
            tracing::info!(
                cluster_size = status.cluster_size,
                "the Galera node is Synced again: claiming"
            );
        }
        *self.galera.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    /// Reads which nodes live runtimes claim through and sets this
    /// runtime's lane (one per node) for `node`, its own. A failed read
    /// leaves the lane as it was.
    pub(super) async fn read_lane(&self, node: &str) {
        if node.is_empty() {
            return;
        }
        let since = crate::clock::sub(self.client.now(), LANE_LIVE);
        if let Ok(nodes) = self.client.store().claiming_nodes(since).await {
            self.set_lane(crate::store::Lane::of_nodes(&nodes, node));
        }
    }

    /// Sets the lane of the claim index this runtime claims first.
    pub(super) fn set_lane(&self, lane: Option<crate::store::Lane>) {
        let mut now = self.lane.lock().unwrap_or_else(|p| p.into_inner());
        if *now != lane {
            tracing::info!(
                lane = ?lane,
                "Galera nodes with runtimes changed: claiming {}",
                match lane {
                    Some(l) => format!("lane {} of {} first", l.is + 1, l.of),
                    None => "the whole claim index".to_owned(),
                }
            );
            *now = lane;
        }
    }

    /// The lane of the claim index this runtime claims first, if any.
    pub(super) fn lane(&self) -> Option<crate::store::Lane> {
        *self.lane.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the producer may claim: always off Galera; on a Galera node
    /// while it is Synced in the primary component.
    pub(super) fn galera_synced(&self) -> bool {
        self.galera_synced.load(Ordering::SeqCst)
    }
}
