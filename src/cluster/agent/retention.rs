//! Retention: the leader deletes what the configured number of backups no longer needs.

use super::Agent;
use crate::backup::delete::{self, Retention};
use crate::error::{Error, Result};

impl Agent {
    pub(super) async fn retention(&self) -> Result<()> {
        let Some(keep) = self.cfg.retain else {
            return Ok(());
        };
        let min_age = chrono::Duration::from_std(self.cfg.retain_min_age)
            .map_err(|e| Error::Config(format!("retain_min_age: {e}")))?;
        let plan =
            delete::plan(&self.archive.store, &Retention::RetainYoung(keep, min_age)).await?;
        if plan.keys.is_empty() {
            return Ok(());
        }
        // Deleting is the leader's alone: ask again right before.
        if !self.etcd.leader_status().await?.is_leader {
            return Err(Error::NotLeader(
                "retention skipped: no longer the leader".into(),
            ));
        }
        let n = delete::execute(&self.archive.store, &plan).await?;
        self.metrics.retention_deleted_objects.inc_by(n as u64);
        tracing::info!(
            kept = plan.kept.join(","),
            deleted_backups = plan.deleted_backups.join(","),
            objects = n,
            "retention"
        );
        Ok(())
    }
}
