//! What the cluster agent's HTTP API may use of the agent: one narrow handle, not the agent.

use std::sync::Arc;

use super::{Agent, ApiAccess};
use crate::backup::{list_backups, BackupInfo, Sentinel};
use crate::cluster::metrics::Metrics;
use crate::cluster::pitr::Restarts;
use crate::cluster::{LeaderStatus, Leadership};
use crate::error::Result;
use crate::wal::WalContext;

/// The API's handle on the agent: its access rules, its health and status, and the few things
/// a request may ask it to do.
#[derive(Clone)]
pub struct ApiHandle(Arc<Agent>);

impl std::fmt::Debug for ApiHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ApiHandle").field(&self.0).finish()
    }
}

impl ApiHandle {
    pub(super) fn new(agent: Arc<Agent>) -> ApiHandle {
        ApiHandle(agent)
    }

    /// Who may call the API, and where it listens.
    pub fn access(&self) -> &ApiAccess {
        &self.0.cfg.api
    }

    /// This member's name.
    pub fn member(&self) -> &str {
        self.0.me()
    }

    /// Is the startup check done?
    pub fn is_ready(&self) -> bool {
        *self.0.ready.borrow()
    }

    /// The duties that failed and are restarting.
    pub fn duties_down(&self) -> Vec<String> {
        self.0.supervisor.down()
    }

    /// What `GET /status` shows.
    pub async fn status(&self) -> serde_json::Value {
        self.0.status().await
    }

    /// Who holds the leader key, asked of etcd now.
    pub async fn leader_status(&self) -> Result<LeaderStatus> {
        self.0.etcd.leader_status().await
    }

    /// The archive's backups, listed now.
    pub async fn list_backups(&self) -> Result<Vec<BackupInfo>> {
        list_backups(&self.0.archive.store).await
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Takes a base backup if this member leads (see the agent's backup duty).
    pub async fn backup(&self, why: &str) -> Result<Sentinel> {
        self.0.backup(why).await
    }

    /// A WAL context for the local data directory.
    pub fn wal_context(&self) -> Result<Arc<WalContext>> {
        self.0.wal_context()
    }

    /// A fresh leadership check against etcd.
    pub fn leadership(&self) -> Leadership {
        self.0.leadership()
    }

    /// Point-in-time restarts: start one, look one up.
    pub fn restarts(&self) -> &Restarts {
        &self.0.restarts
    }
}
