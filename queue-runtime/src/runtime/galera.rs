//! Watches the Galera node the runtime's pool reaches: while it is not
//! Synced in the primary component (a donor, desynced, joining, or cut off
//! from the majority), the producer claims nothing.

use super::*;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the node's state is read (one `SHOW GLOBAL STATUS`).
pub(super) const GALERA_EVERY: Duration = Duration::from_secs(1);

/// Reads the node's state every [`GALERA_EVERY`]; started only when the
/// server was a Galera node at start. A read that fails (the node is away:
/// the pool's next connection may reach another one) leaves the last state.
pub(super) async fn watcher(shared: Arc<Shared>) {
    loop {
        if shared.sleep_or_stop(GALERA_EVERY).await {
            return;
        }
        if let Some(status) = shared.client.store().galera_status().await {
            shared.set_galera(status);
        }
    }
}

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

    /// Whether the producer may claim: always off Galera; on a Galera node
    /// while it is Synced in the primary component.
    pub(super) fn galera_synced(&self) -> bool {
        self.galera_synced.load(Ordering::SeqCst)
    }
}
