//! The cluster's system identifier: read from pg_control, recorded once in the archive.

use super::Agent;
use crate::error::{Error, Result};
use crate::wal::SYSID_KEY;

impl Agent {
    /// The system identifier from pg_control (its first 8 bytes).
    fn local_sysid(&self) -> Result<u64> {
        let path = self.cfg.pgdata.join("global/pg_control");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let head: [u8; 8] = bytes
            .get(0..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::Corrupt {
                key: path.display().to_string(),
                msg: "too short".into(),
            })?;
        Ok(u64::from_le_bytes(head))
    }

    pub(super) async fn upload_sysid(&self) -> Result<()> {
        let sysid = self.local_sysid()?.to_string();
        match self.archive.store.get_bytes(SYSID_KEY).await {
            Ok(b) if String::from_utf8_lossy(&b).trim() == sysid => Ok(()),
            Ok(b) => {
                tracing::error!(
                    archived = %String::from_utf8_lossy(&b).trim(),
                    local = sysid,
                    "the archive belongs to another cluster (system identifiers differ)"
                );
                Ok(())
            }
            Err(Error::NotFound { .. }) => {
                if !self.etcd.leader_status().await?.is_leader {
                    return Ok(());
                }
                match self
                    .archive
                    .store
                    .put_bytes(SYSID_KEY, sysid.clone().into())
                    .await
                {
                    Ok(_) => {
                        tracing::info!(
                            system_identifier = sysid,
                            "recorded the system identifier in the archive"
                        );
                        Ok(())
                    }
                    Err(Error::Storage {
                        source: object_store::Error::AlreadyExists { .. },
                        ..
                    }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}
