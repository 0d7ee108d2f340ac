//! Cluster awareness: who may upload WAL.
//!
//! wal-push asks [`Leadership`] before any upload. This module ships the "always the leader"
//! check; the etcd-backed check (Patroni's leader key) plugs in here as another variant.

use crate::error::Result;
use crate::wal::names::WalName;

/// What this member may do with a WAL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushDecision {
    /// Upload it.
    Upload,
    /// Do not upload; succeed only if the archive already holds an identical object.
    VerifyOnly { reason: String },
}

#[derive(Debug, Clone, Default)]
pub enum Leadership {
    /// Every caller is the leader: a single server, or archiving without a cluster.
    #[default]
    AlwaysLeader,
}

impl Leadership {
    pub async fn decide(&self, _name: &WalName) -> Result<PushDecision> {
        match self {
            Leadership::AlwaysLeader => Ok(PushDecision::Upload),
        }
    }
}
