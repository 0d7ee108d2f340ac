//! Scheduled and requested base backups, on the leader only.

use super::Agent;
use crate::backup::push::{backup_push, PushOptions};
use crate::backup::Sentinel;
use crate::error::{Error, Result};

impl Agent {
    /// Takes a base backup if this member holds the leader key, then enforces retention and
    /// publishes the list.
    pub(super) async fn backup(&self, why: &str) -> Result<Sentinel> {
        let _one = self.backup_lock.lock().await;
        let status = self.etcd.leader_status().await?;
        if !status.is_leader {
            return Err(Error::NotLeader(format!(
                "backup ({why}) skipped: {} holds the leader key, not {}",
                status.leader.as_deref().unwrap_or("nobody"),
                self.me()
            )));
        }
        tracing::info!(reason = why, "base backup starting");
        let opts = PushOptions::scheduled(
            self.cfg.pgdata.clone(),
            self.cfg.connstring.clone(),
            &self.settings.backup,
        );
        let result = backup_push(self.archive.clone(), opts).await;
        match &result {
            Ok(s) => {
                self.metrics.backups_ok.inc();
                let corrupt = s.page_checksums.as_ref().map_or(0, |c| c.corrupt_pages);
                self.metrics.backup_corrupt_pages.set(corrupt as i64);
                tracing::info!(finish_lsn = %s.finish_lsn, "base backup done");
            }
            Err(e) => {
                self.metrics.backups_failed.inc();
                tracing::error!(error = %e, "base backup failed");
            }
        }
        if result.is_ok() {
            if let Err(e) = self.retention().await {
                tracing::error!(error = %e, "retention failed");
            }
        }
        drop(_one);
        self.publish_backup_list().await;
        result
    }
}
