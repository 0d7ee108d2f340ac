//! `walkeeper agent`: the daemon beside Patroni, and its run loop.
//!
//! It follows the cluster's keys in etcd and always knows whether this member holds the leader
//! key. Only while it does, it takes scheduled base backups, enforces retention, uploads the
//! system identifier and publishes the backup list into etcd; when it gains the key it heals
//! the archive's gaps from the failover. Before Patroni starts, it arranges a restore from the
//! archive when the cluster is gone but its backups are not. The HTTP API is served by the
//! `agent` command, through the narrow [`ApiHandle`]; point-in-time restarts get theirs
//! ([`Restarts`]).
//!
//! One file per duty: [`schedule`], [`config`], `disaster.rs` (the startup check), `follow.rs`
//! (etcd), `duties.rs` (the loop), `healing.rs`, `sysid.rs`, `backups.rs`, `retention.rs`,
//! `publish.rs` (the list in etcd), `status.rs`, `signals.rs`, `handle.rs` (the API's handle).

mod backups;
pub mod config;
mod disaster;
mod duties;
mod follow;
mod handle;
mod healing;
mod publish;
mod retention;
pub mod schedule;
mod signals;
mod status;
mod sysid;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::archive::Archive;
use crate::backup::BackupInfo;
use crate::cluster::etcd::Etcd;
use crate::cluster::local::LocalServer;
use crate::cluster::metrics::Metrics;
use crate::cluster::patroni::Patroni;
use crate::cluster::pitr::{self, Restarts};
use crate::cluster::supervise::Supervisor;
use crate::cluster::{ClusterView, Leadership};
use crate::config::{ClusterSettings, Settings};
use crate::error::{Error, Result};
use crate::wal::WalContext;

pub use config::{AgentConfig, ApiAccess};
pub use handle::ApiHandle;
pub use schedule::{due_from_archive, Schedule};

/// How often every member looks for gaps it can close, and the leader rechecks an open one.
const HEAL_INTERVAL: Duration = Duration::from_secs(15);
/// How long the leader waits for other members to close a gap before it takes a base backup.
const GAP_GRACE: Duration = Duration::from_secs(45);

/// The running agent, shared by its tasks. Its parts are its own: the API and the restarts
/// reach it through their handles.
pub struct Agent {
    cfg: AgentConfig,
    settings: Settings,
    cluster: ClusterSettings,
    archive: Arc<Archive>,
    etcd: Etcd,
    local: LocalServer,
    view: watch::Receiver<ClusterView>,
    view_tx: watch::Sender<ClusterView>,
    metrics: Arc<Metrics>,
    /// The last good backup listing.
    backups: Mutex<Option<Vec<BackupInfo>>>,
    /// One backup (or retention run) at a time.
    backup_lock: tokio::sync::Mutex<()>,
    /// Point-in-time restarts: the jobs and what they need.
    restarts: Restarts,
    /// Is the startup check done (the agent is ready for Patroni)?
    ready: watch::Sender<bool>,
    /// Wakes the duty loop early.
    wake: Arc<tokio::sync::Notify>,
    /// Restarts failed duties and tells `/health` which are down.
    supervisor: Arc<Supervisor>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("member", &self.cluster.name)
            .field("pgdata", &self.cfg.pgdata)
            .finish()
    }
}

impl Agent {
    pub async fn new(
        settings: Settings,
        self_exec: crate::selfexec::SelfExec,
    ) -> Result<Arc<Agent>> {
        let cluster = settings.cluster.clone().ok_or_else(|| {
            Error::Config(
                "the agent needs cluster settings: WALKEEPER_SCOPE, WALKEEPER_NAME and WALKEEPER_ETCD_HOSTS (or PATRONI_*, or `cluster:` in the config file)"
                    .into(),
            )
        })?;
        let cfg = AgentConfig::resolve(&settings)?;
        let archive = Arc::new(Archive::open(settings.clone())?);
        let etcd = Etcd::connect(&cluster).await?;
        let patroni = Patroni::new(&cfg.patroni_url, cfg.patroni_auth.clone())?;
        let (view_tx, view) = watch::channel(ClusterView::default());
        let (ready, _) = watch::channel(false);
        let metrics = Arc::new(Metrics::new());
        let supervisor = Arc::new(Supervisor::new(metrics.duty_failures.clone()));
        let local = LocalServer::new(
            cfg.pgdata.clone(),
            cfg.pg_bin_dir.clone(),
            cfg.connstring.clone(),
            settings.vars.clone(),
        );
        let wake = Arc::new(tokio::sync::Notify::new());
        let restarts = Restarts::new(pitr::RestartParts {
            member: cluster.name.clone(),
            local: local.clone(),
            archive: archive.clone(),
            etcd: etcd.clone(),
            patroni,
            view: view.clone(),
            metrics: metrics.clone(),
            wake: wake.clone(),
            self_exec,
            hold_after: cfg.hold_restart_at.clone(),
        });
        Ok(Arc::new(Agent {
            cfg,
            settings,
            cluster,
            archive,
            etcd,
            local,
            view,
            view_tx,
            metrics,
            backups: Mutex::new(None),
            backup_lock: tokio::sync::Mutex::new(()),
            restarts,
            ready,
            wake,
            supervisor,
        }))
    }

    /// The narrow handle the HTTP API serves from.
    pub fn api(self: &Arc<Self>) -> ApiHandle {
        ApiHandle::new(self.clone())
    }

    fn me(&self) -> &str {
        &self.cluster.name
    }

    /// Does the watched view say this member leads?
    fn view_says_leader(&self) -> bool {
        let v = self.view.borrow();
        v.connected && v.leader.as_deref() == Some(self.me())
    }

    /// A fresh leadership check against etcd (for uploads made by the agent itself).
    fn leadership(&self) -> Leadership {
        Leadership::with_etcd(self.cluster.clone(), self.etcd.clone())
    }

    /// A WAL context for the local data directory.
    fn wal_context(&self) -> Result<Arc<WalContext>> {
        Ok(Arc::new(WalContext::new(
            self.settings.clone(),
            Some(&self.cfg.pgdata),
        )?))
    }

    /// Is a point-in-time restart running? It holds the leader duties.
    fn pitr_running(&self) -> bool {
        self.restarts.jobs().running().is_some()
    }

    /// The address the agent's HTTP API listens on.
    pub fn listen(&self) -> std::net::SocketAddr {
        self.cfg.api.listen
    }

    /// Runs the agent's duties until the process is told to stop. The HTTP API is the caller's
    /// to serve (the `agent` command starts it first, on [`Agent::listen`], with [`Agent::api`]).
    pub async fn run(self: Arc<Self>) -> Result<()> {
        tracing::info!(
            member = self.me(),
            scope = self.cluster.scope,
            api = %self.cfg.api.listen,
            archive = self.archive.store.description,
            "agent starting"
        );
        // A restart the previous agent was stopped in is finished or rolled back first; while
        // it runs, the startup check and the leader duties wait.
        pitr::recover_interrupted(&self.restarts);
        self.startup().await;
        self.ready.send_replace(true);
        let me = self.clone();
        let etcd_task = self.supervisor.spawn("follow-etcd", move || {
            let me = me.clone();
            async move {
                me.follow_etcd().await;
                Ok(())
            }
        });
        let me = self.clone();
        let duties_task = self.supervisor.spawn("leader-duties", move || {
            let me = me.clone();
            async move {
                me.duties().await;
                Ok(())
            }
        });
        signals::shutdown_signal().await;
        let running = self.restarts.jobs().running_steps();
        if running.is_empty() {
            tracing::info!("agent stopping");
        } else {
            tracing::warn!(
                restarts = running.join(", "),
                "agent stopping during a point-in-time restart: Patroni may stay paused until the agent starts again, which finishes or rolls the restart back (its journal is {})",
                pitr::journal_path(&self.cfg.pgdata).display()
            );
        }
        duties_task.abort();
        etcd_task.abort();
        Ok(())
    }
}
