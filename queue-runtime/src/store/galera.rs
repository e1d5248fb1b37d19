//! What a MariaDB Galera node says of itself: `wsrep_on`, the cluster's
//! size and this node's state (docs/scaling.md).

use sqlx::Row;

use super::Store;
use crate::admin::GaleraStatus;

impl Store {
    /// The Galera status of the node a pooled connection reaches, or `None`
    /// when the server is no Galera node (MySQL, or MariaDB with
    /// `wsrep_on = OFF`) or cannot say. One statement on the server's
    /// status variables.
    pub(crate) async fn galera_status(&self) -> Option<GaleraStatus> {
        // `@@wsrep_on` is unknown to MySQL (error 1193): not Galera.
        let on: i64 = sqlx::query_scalar("SELECT @@GLOBAL.wsrep_on + 0")
            .fetch_one(&self.pool)
            .await
            .ok()?;
        if on == 0 {
            return None;
        }
        let rows = sqlx::query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN \
             ('wsrep_cluster_size', 'wsrep_local_state_comment', 'wsrep_cluster_status', \
             'wsrep_local_cert_failures', 'wsrep_local_bf_aborts')",
        )
        .fetch_all(&self.pool)
        .await
        .ok()?;
        let mut status = GaleraStatus::default();
        for r in &rows {
            let (name, value): (String, String) = (r.try_get(0).ok()?, r.try_get(1).ok()?);
            match name.to_ascii_lowercase().as_str() {
                "wsrep_cluster_size" => status.cluster_size = value.parse().unwrap_or(0),
                "wsrep_local_state_comment" => status.local_state = value,
                "wsrep_cluster_status" => status.cluster_status = value,
                "wsrep_local_cert_failures" => status.cert_failures = value.parse().unwrap_or(0),
                "wsrep_local_bf_aborts" => status.bf_aborts = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        Some(status)
    }
}
