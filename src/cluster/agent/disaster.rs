//! Before Patroni starts: when the cluster is gone but the archive holds its backups, arrange
//! a restore from the archive (the `initialize` key) instead of a new cluster.

use std::time::Duration;

use super::Agent;
use crate::backup::list_backups;
use crate::error::{Error, Result};
use crate::wal::{history, SYSID_KEY};

impl Agent {
    /// Before Patroni starts: when the cluster is gone (no leader, no `initialize`) and this
    /// member has no data, but the archive holds backups, write the archived system identifier
    /// to `initialize`, so that Patroni restores the first member from the archive (through
    /// create-replica's no-leader path) instead of running initdb.
    pub(super) async fn startup(&self) {
        // During an interrupted restart's recovery the data directory may be moved aside: it
        // is not empty, and the cluster is not gone.
        if !self.cfg.restore_when_empty || !pgdata_is_empty(&self.cfg.pgdata) || self.pitr_running()
        {
            return;
        }
        let mut delay = Duration::from_millis(500);
        loop {
            match self.disaster_restore_check().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "startup check failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn disaster_restore_check(&self) -> Result<()> {
        let view = self.etcd.snapshot().await?;
        if view.leader.is_some() || view.initialize.is_some() {
            return Ok(());
        }
        let backups = list_backups(&self.archive.store).await?;
        if backups.is_empty() {
            tracing::info!(
                "no leader, no initialize key and no backups: Patroni will bootstrap a new cluster"
            );
            return Ok(());
        }
        let sysid = match self.archive.store.get_bytes(SYSID_KEY).await {
            Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
            Err(Error::NotFound { .. }) => {
                let newest = history::fetch_newer(&self.archive, 1)
                    .await?
                    .into_values()
                    .last()
                    .unwrap_or_else(history::History::first);
                backups
                    .iter()
                    .rev()
                    .find(|b| newest.contains(b.timeline, b.finish_lsn.0))
                    .and_then(|b| b.system_identifier)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            }
            Err(e) => return Err(e),
        };
        if sysid.parse::<u64>().is_err() {
            return Err(Error::Corrupt {
                key: SYSID_KEY.into(),
                msg: format!("the archive's system identifier {sysid:?} is not a number"),
            });
        }
        if self.etcd.create_if_absent("initialize", &sysid).await? {
            tracing::warn!(
                system_identifier = sysid,
                backups = backups.len(),
                "the cluster is gone but the archive holds its backups: wrote `initialize`, so Patroni restores from the archive"
            );
        }
        Ok(())
    }
}

/// Has this member no data (no `global/pg_control`)?
fn pgdata_is_empty(pgdata: &std::path::Path) -> bool {
    !pgdata.join("global/pg_control").exists()
}
