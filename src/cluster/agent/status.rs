//! What `GET /status` shows: role, leader, the local archiver, the last backup.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use super::Agent;
use crate::backup::pg;
use crate::error::Result;

impl Agent {
    /// What `/status` shows.
    pub(super) async fn status(&self) -> serde_json::Value {
        let view = self.view.borrow().clone();
        let role = if !view.connected {
            "unknown"
        } else if view.leader.as_deref() == Some(self.me()) {
            "leader"
        } else {
            "replica"
        };
        let archiver =
            match tokio::time::timeout(Duration::from_secs(3), self.archiver_status()).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => json!({ "error": e.to_string() }),
                Err(_) => json!({ "error": "PostgreSQL did not answer within 3 s" }),
            };
        if let Some(lag) = archiver.get("archive_lag_bytes").and_then(|l| l.as_i64()) {
            self.metrics.archive_lag_bytes.set(lag);
        }
        let last_backup = self
            .backups
            .lock()
            .ok()
            .and_then(|b| b.as_ref().and_then(|l| l.last().cloned()))
            .map(|b| {
                json!({
                    "name": b.name,
                    "finish_time": b.end_time().to_rfc3339(),
                    "age_seconds": (Utc::now() - b.end_time()).num_seconds(),
                    "finish_lsn": b.finish_lsn.to_string(),
                    "timeline": b.timeline,
                })
            });
        let paused = view
            .config
            .as_ref()
            .and_then(|c| c.get("pause"))
            .and_then(|p| p.as_bool())
            .unwrap_or(false);
        json!({
            "member": self.me(),
            "scope": self.cluster.scope,
            "role": role,
            "leader": view.leader,
            "etcd_connected": view.connected,
            "paused": paused,
            "archive": self.archive.store.description,
            "archiver": archiver,
            "last_backup": last_backup,
            "restart_running": self.pitr_running(),
            "unhealable_segments": self.metrics.unhealable_segments.get(),
        })
    }

    /// The local server's archiver: last archived segment and how far archiving lags.
    async fn archiver_status(&self) -> Result<serde_json::Value> {
        let client = pg::connect(&self.local.pg_config()?).await?;
        let a = pg::archiver_status(&client).await?;
        Ok(json!({
            "last_archived_wal": a.last_archived_wal,
            "last_archived_time": a.last_archived_time,
            "failed_count": a.failed_count,
            "last_failed_wal": a.last_failed_wal,
            "in_recovery": a.in_recovery,
            "archive_lag_bytes": a.lag_bytes(),
        }))
    }
}
