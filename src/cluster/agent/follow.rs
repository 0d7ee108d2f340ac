//! Following the cluster in etcd: the agent's view of who leads, kept current.

use std::sync::Arc;
use std::time::Duration;

use super::Agent;

impl Agent {
    /// Keeps the view current: snapshot, then watch; on any error, mark the view disconnected
    /// and start over (this also resyncs after a compaction).
    pub(super) async fn follow_etcd(self: Arc<Self>) {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.etcd.snapshot().await {
                Ok(view) => {
                    delay = Duration::from_millis(200);
                    self.metrics.etcd_connected.set(1);
                    self.view_tx.send_replace(view.clone());
                    if let Err(e) = self.etcd.watch_into(view, &self.view_tx).await {
                        tracing::warn!(error = %e, "etcd watch ended");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the cluster from etcd"),
            }
            self.metrics.etcd_connected.set(0);
            self.view_tx.send_modify(|v| v.connected = false);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}
