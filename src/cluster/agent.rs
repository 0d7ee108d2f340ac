//! `walkeeper agent`: the daemon beside Patroni.
//!
//! It follows the cluster's keys in etcd and always knows whether this member holds the leader
//! key. Only while it does, it takes scheduled base backups, enforces retention, uploads the
//! system identifier and publishes the backup list into etcd; when it gains the key it heals
//! the archive's gaps from the failover. Before Patroni starts, it arranges a restore from the
//! archive when the cluster is gone but its backups are not. It serves the HTTP API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::watch;

use super::etcd::{Etcd, BACKUP_LIST_JSON_KEY, BACKUP_LIST_KEY};
use super::metrics::Metrics;
use super::patroni::Patroni;
use super::pitr::Job;
use super::{heal, ClusterView, Leadership};
use crate::archive::Archive;
use crate::backup::delete::{self, Retention};
use crate::backup::push::{backup_push, PushOptions};
use crate::backup::{list_backups, pg, BackupInfo, Sentinel};
use crate::config::{ClusterSettings, Settings, DEFAULT_AGENT_LISTEN};
use crate::error::{Error, Result};
use crate::wal::history;
use crate::wal::WalContext;

/// Where the archive keeps the cluster's system identifier (as the dingo image did).
pub const SYSID_KEY: &str = "sysids/sysid";
/// How often every member looks for gaps it can close, and the leader rechecks an open one.
const HEAL_INTERVAL: Duration = Duration::from_secs(15);
/// How long the leader waits for other members to close a gap before it takes a base backup.
const GAP_GRACE: Duration = Duration::from_secs(45);

/// When base backups run.
#[derive(Debug, Clone)]
pub enum Schedule {
    Off,
    Every(Duration),
    Cron(Box<croner::Cron>),
}

impl Schedule {
    /// `off`, `every 6h` / `@every 6h` / a duration (`6h`), or a cron expression.
    pub fn parse(text: &str) -> Result<Schedule> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("off") || t.is_empty() {
            return Ok(Schedule::Off);
        }
        let dur = t
            .strip_prefix("every ")
            .or_else(|| t.strip_prefix("@every "))
            .unwrap_or(t);
        if let Ok(d) = humantime::parse_duration(dur.trim()) {
            if d < Duration::from_secs(1) {
                return Err(Error::Config(format!(
                    "backup schedule {t:?} is shorter than a second"
                )));
            }
            return Ok(Schedule::Every(d));
        }
        t.parse::<croner::Cron>()
            .map(|c| Schedule::Cron(Box::new(c)))
            .map_err(|e| {
                Error::Config(format!(
                    "backup schedule {t:?} is neither `off`, a duration (`every 24h`) nor a cron expression: {e}"
                ))
            })
    }

    /// The next run after `now`.
    pub fn next(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Off => None,
            Schedule::Every(d) => chrono::Duration::from_std(*d).ok().map(|d| now + d),
            Schedule::Cron(c) => c.find_next_occurrence(&now, false).ok(),
        }
    }

    /// When the next scheduled backup is due, counted from the newest backup's finish (so an
    /// agent restarted more often than the interval still takes its backups): that finish plus
    /// the interval, or the first cron tick after it. Due now when that is past or the archive
    /// holds no backup. None when backups are off.
    pub fn due(
        &self,
        newest_finish: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if matches!(self, Schedule::Off) {
            return None;
        }
        let Some(finish) = newest_finish else {
            return Some(now);
        };
        // A finish time in the future (a skewed clock) counts as now.
        let at = self.next(finish.min(now))?;
        Some(at.max(now))
    }
}

/// When the next scheduled backup is due, from the archive's newest backup.
pub async fn due_from_archive(
    store: &crate::storage::Store,
    schedule: &Schedule,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>> {
    let newest = list_backups(store).await?.last().map(|b| b.end_time());
    Ok(schedule.due(newest, now))
}

/// The agent's settings, resolved from the environment and the YAML file's `agent:` section.
#[derive(Clone)]
pub struct AgentConfig {
    pub pgdata: PathBuf,
    pub connstring: Option<String>,
    pub pg_bin_dir: PathBuf,
    pub patroni_url: String,
    pub patroni_auth: Option<(String, String)>,
    pub listen: SocketAddr,
    /// Bearer token for mutating endpoints: configured (required when listening beyond
    /// loopback), else made at start.
    pub token: Option<String>,
    /// Where the agent keeps its token (`<state dir>/api-token`, mode 0600), for its own
    /// commands.
    pub token_file: Option<PathBuf>,
    pub schedule: Schedule,
    pub retain: Option<usize>,
    pub retain_min_age: Duration,
    pub backup_list_refresh: Duration,
    pub restore_when_empty: bool,
}

/// Shows no secret: the connection string without its password, no token, no Patroni password.
impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("pgdata", &self.pgdata)
            .field(
                "connstring",
                &crate::security::ScrubbedConnstring(self.connstring.as_deref()),
            )
            .field("patroni_url", &self.patroni_url)
            .field("listen", &self.listen)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

fn parse_duration(key: &str, v: &str) -> Result<Duration> {
    humantime::parse_duration(v.trim())
        .map_err(|e| Error::Config(format!("{key}={v:?} is not a duration (e.g. 30s, 7d): {e}")))
}

impl AgentConfig {
    pub fn resolve(settings: &Settings) -> Result<AgentConfig> {
        let v = &settings.vars;
        let f = &settings.agent_file;
        let pgdata = v
            .get("WALKEEPER_PGDATA")
            .or(v.get("PGDATA"))
            .map(PathBuf::from)
            .or_else(|| f.pgdata.clone())
            .ok_or_else(|| {
                Error::Config("the agent needs the data directory: PGDATA or agent.pgdata".into())
            })?;
        let connstring = v
            .get("WALKEEPER_CONNSTRING")
            .map(String::from)
            .or_else(|| f.connstring.clone());
        let pg_bin_dir = v
            .get("WALKEEPER_PG_BIN_DIR")
            .map(PathBuf::from)
            .or_else(|| f.pg_bin_dir.clone())
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
        let patroni_url = v
            .get("WALKEEPER_PATRONI_URL")
            .map(String::from)
            .or_else(|| f.patroni_url.clone())
            .unwrap_or_else(|| "http://127.0.0.1:8008".into());
        let patroni_auth = match (
            v.get("WALKEEPER_PATRONI_USERNAME"),
            v.get("WALKEEPER_PATRONI_PASSWORD"),
        ) {
            (Some(u), Some(p)) => Some((u.to_string(), p.to_string())),
            _ => None,
        };
        let listen_text = v
            .get("WALKEEPER_API_LISTEN")
            .map(String::from)
            .or_else(|| f.listen.clone())
            .unwrap_or_else(|| DEFAULT_AGENT_LISTEN.into());
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            Error::Config(format!(
                "API listen address {listen_text:?} is not host:port: {e}"
            ))
        })?;
        let state_dir = settings
            .state_dir
            .clone()
            .unwrap_or_else(|| pgdata.join("pg_wal/.walkeeper"));
        let token_source = v.api_token_source(f.api_token_file.as_deref(), &state_dir);
        let configured = token_source.is_configured();
        let (token, _) = token_source.for_agent()?;
        // Also a configured token goes to the state directory (0600): wal-push finds it there
        // when its own environment lacks it.
        let token_file = Some(state_dir.join(crate::security::TOKEN_FILE_NAME));
        let token = (configured || listen.ip().is_loopback()).then_some(token);
        if !listen.ip().is_loopback() && token.is_none() {
            return Err(Error::Config(format!(
                "the API listens on {listen}, beyond loopback: set WALKEEPER_API_TOKEN or WALKEEPER_API_TOKEN_FILE (agent.api_token_file)"
            )));
        }
        let schedule = Schedule::parse(
            v.get("WALKEEPER_BACKUP_SCHEDULE")
                .or(f.backup_schedule.as_deref())
                .unwrap_or("every 24h"),
        )?;
        let retain =
            match v.get("WALKEEPER_RETAIN") {
                Some(n) => Some(n.trim().parse::<usize>().map_err(|_| {
                    Error::Config(format!("WALKEEPER_RETAIN={n:?} is not a number"))
                })?),
                None => f.retain,
            }
            .filter(|n| *n > 0);
        let retain_min_age = match v
            .get("WALKEEPER_RETAIN_MIN_AGE")
            .map(String::from)
            .or_else(|| f.retain_min_age.clone())
        {
            Some(t) => parse_duration("retain_min_age", &t)?,
            None => Duration::ZERO,
        };
        let backup_list_refresh = match v
            .get("WALKEEPER_BACKUP_LIST_REFRESH")
            .map(String::from)
            .or_else(|| f.backup_list_refresh.clone())
        {
            Some(t) => parse_duration("backup_list_refresh", &t)?,
            None => Duration::from_secs(60),
        };
        let restore_when_empty = match v.get("WALKEEPER_RESTORE_WHEN_EMPTY") {
            Some(t) => !matches!(
                t.trim().to_ascii_lowercase().as_str(),
                "0" | "false" | "no" | "off"
            ),
            None => f.restore_when_empty.unwrap_or(true),
        };
        Ok(AgentConfig {
            pgdata,
            connstring,
            pg_bin_dir,
            patroni_url,
            patroni_auth,
            listen,
            token,
            token_file,
            schedule,
            retain,
            retain_min_age,
            backup_list_refresh,
            restore_when_empty,
        })
    }
}

/// The running agent, shared by its tasks and the API.
pub struct Agent {
    pub cfg: AgentConfig,
    pub settings: Settings,
    pub cluster: ClusterSettings,
    pub archive: Arc<Archive>,
    pub etcd: Etcd,
    pub view: watch::Receiver<ClusterView>,
    view_tx: watch::Sender<ClusterView>,
    pub patroni: Patroni,
    pub metrics: Metrics,
    /// The last good backup listing.
    pub backups: Mutex<Option<Vec<BackupInfo>>>,
    /// One backup (or retention run) at a time.
    pub backup_lock: tokio::sync::Mutex<()>,
    /// Point-in-time restarts, by id.
    pub jobs: Mutex<BTreeMap<String, Arc<Job>>>,
    /// Global command line options (`--config`, `--envdir`), for commands it runs.
    pub self_exec: crate::selfexec::SelfExec,
    /// Is the startup check done (the agent is ready for Patroni)?
    pub ready: watch::Sender<bool>,
    /// Wakes the duty loop early.
    pub wake: tokio::sync::Notify,
    /// Restarts failed duties and tells `/health` which are down.
    pub supervisor: Arc<super::supervise::Supervisor>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("member", &self.cluster.name)
            .field("pgdata", &self.cfg.pgdata)
            .finish()
    }
}

fn pgdata_is_empty(pgdata: &Path) -> bool {
    !pgdata.join("global/pg_control").exists()
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
        let metrics = Metrics::new();
        let supervisor = Arc::new(super::supervise::Supervisor::new(
            metrics.duty_failures.clone(),
        ));
        Ok(Arc::new(Agent {
            cfg,
            settings,
            cluster,
            archive,
            etcd,
            view,
            view_tx,
            patroni,
            metrics,
            backups: Mutex::new(None),
            backup_lock: tokio::sync::Mutex::new(()),
            jobs: Mutex::new(BTreeMap::new()),
            self_exec,
            ready,
            wake: tokio::sync::Notify::new(),
            supervisor,
        }))
    }

    pub fn me(&self) -> &str {
        &self.cluster.name
    }

    /// Does the watched view say this member leads?
    pub fn view_says_leader(&self) -> bool {
        let v = self.view.borrow();
        v.connected && v.leader.as_deref() == Some(self.me())
    }

    /// A fresh leadership check against etcd (for uploads made by the agent itself).
    pub fn leadership(&self) -> Leadership {
        Leadership::with_etcd(self.cluster.clone(), self.etcd.clone())
    }

    /// A WAL context for the local data directory.
    pub fn wal_context(&self) -> Result<Arc<WalContext>> {
        Ok(Arc::new(WalContext::new(
            self.settings.clone(),
            Some(&self.cfg.pgdata),
        )?))
    }

    /// How the agent reaches the local PostgreSQL.
    pub fn pg_config(&self) -> Result<pg::ConnConfig> {
        pg::config(self.cfg.connstring.as_deref(), &self.settings.vars)
    }

    /// This binary with the agent's global options, running `args` (for restore_command).
    pub fn self_command(&self, args: &[&str]) -> Result<String> {
        self.self_exec.shell_line(args)
    }

    /// The address the agent's HTTP API listens on.
    pub fn listen(&self) -> std::net::SocketAddr {
        self.cfg.listen
    }

    /// Runs the agent's duties until the process is told to stop. The HTTP API is the caller's
    /// to serve (the `agent` command starts it first, on [`Agent::listen`]).
    pub async fn run(self: Arc<Self>) -> Result<()> {
        tracing::info!(
            member = self.me(),
            scope = self.cluster.scope,
            api = %self.cfg.listen,
            archive = self.archive.store.description,
            "agent starting"
        );
        // A restart the previous agent was stopped in is finished or rolled back first; while
        // it runs, the startup check and the leader duties wait.
        super::pitr::recover_interrupted(&self);
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
        shutdown_signal().await;
        let running: Vec<String> = self
            .jobs
            .lock()
            .map(|j| {
                j.values()
                    .filter(|j| j.is_running())
                    .map(|j| format!("{} at step {}", j.id, j.state().step))
                    .collect()
            })
            .unwrap_or_default();
        if running.is_empty() {
            tracing::info!("agent stopping");
        } else {
            tracing::warn!(
                restarts = running.join(", "),
                "agent stopping during a point-in-time restart: Patroni may stay paused until the agent starts again, which finishes or rolls the restart back (its journal is {})",
                super::pitr::journal_path(&self.cfg.pgdata).display()
            );
        }
        duties_task.abort();
        etcd_task.abort();
        Ok(())
    }

    /// Before Patroni starts: when the cluster is gone (no leader, no `initialize`) and this
    /// member has no data, but the archive holds backups, write the archived system identifier
    /// to `initialize`, so that Patroni restores the first member from the archive (through
    /// create-replica's no-leader path) instead of running initdb.
    async fn startup(&self) {
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

    /// Keeps the view current: snapshot, then watch; on any error, mark the view disconnected
    /// and start over (this also resyncs after a compaction).
    async fn follow_etcd(self: Arc<Self>) {
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

    fn pitr_running(&self) -> bool {
        self.jobs
            .lock()
            .map(|j| j.values().any(|j| j.is_running()))
            .unwrap_or(false)
    }

    /// Duties: on the leader, gap healing on gaining the key (and a backup when a gap stays
    /// open),  scheduled backups, retention and the
    /// backup list.
    async fn duties(self: Arc<Self>) {
        let mut view = self.view.clone();
        let mut was_leader = false;
        // The schedule counts from the newest backup's finish, not from this start.
        let mut newest_known = false;
        // After a failed scheduled backup: no new try before this.
        let mut retry_after: Option<DateTime<Utc>> = None;
        let mut next_refresh = Instant::now();
        // Healing from every member (a former primary may hold what the leader lacks), and,
        // on the leader, since when a gap has stayed open.
        let mut next_heal = Instant::now() + HEAL_INTERVAL;
        let mut gap_since: Option<Instant> = None;
        loop {
            view.borrow_and_update();
            let leader = self.view_says_leader();
            self.metrics.leader.set(leader as i64);
            if leader && !was_leader && !self.pitr_running() {
                tracing::info!(member = self.me(), "this member holds the leader key");
                gap_since = self.on_gained_leadership().await.then(Instant::now);
                next_refresh = Instant::now() + self.cfg.backup_list_refresh;
                next_heal = Instant::now() + HEAL_INTERVAL;
            } else if !leader && was_leader {
                tracing::info!(
                    member = self.me(),
                    "this member no longer holds the leader key"
                );
            }
            was_leader = leader;
            if Instant::now() >= next_heal && !self.pitr_running() {
                next_heal = Instant::now() + HEAL_INTERVAL;
                if leader {
                    if let Some(since) = gap_since {
                        gap_since = self.recheck_gap(since).await;
                    }
                } else {
                    self.heal_as_replica().await;
                }
            }
            if !newest_known {
                match list_backups(&self.archive.store).await {
                    Ok(list) => {
                        if let Ok(mut b) = self.backups.lock() {
                            *b = Some(list);
                        }
                        newest_known = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot list backups for the schedule"),
                }
            }
            let next_backup = if newest_known {
                let newest = self
                    .backups
                    .lock()
                    .ok()
                    .and_then(|b| b.as_ref().and_then(|l| l.last().map(|b| b.end_time())));
                self.cfg
                    .schedule
                    .due(newest, Utc::now())
                    .map(|at| retry_after.map_or(at, |r| at.max(r)))
            } else {
                // Unknown until the archive can be listed: look again within a minute.
                None
            };
            let mut blocked = false;
            if let Some(at) = next_backup {
                if Utc::now() >= at {
                    if leader && !self.pitr_running() {
                        match self.backup("scheduled").await {
                            // Even if the listing after it failed, not again before the
                            // next tick.
                            Ok(_) => retry_after = self.cfg.schedule.next(Utc::now()),
                            Err(_) => {
                                // Retry at the next tick, but within 15 minutes.
                                let now = Utc::now();
                                let cap = now + chrono::Duration::minutes(15);
                                retry_after =
                                    Some(self.cfg.schedule.next(now).unwrap_or(cap).min(cap));
                            }
                        }
                        // The listing after the backup moved the schedule on.
                        continue;
                    }
                    // Due, but not ours to take now: wait for a change, not for the clock.
                    blocked = true;
                }
            }
            if leader && Instant::now() >= next_refresh && !self.pitr_running() {
                self.publish_backup_list().await;
                next_refresh = Instant::now() + self.cfg.backup_list_refresh;
            }
            let until_backup = if blocked || !newest_known {
                Duration::from_secs(30)
            } else {
                next_backup
                    .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                    .unwrap_or(Duration::from_secs(3600))
            };
            let until_refresh = if leader {
                next_refresh.saturating_duration_since(Instant::now())
            } else {
                Duration::from_secs(1)
            }
            .min(next_heal.saturating_duration_since(Instant::now()));
            let nap = until_backup
                .min(until_refresh)
                .max(Duration::from_millis(100));
            tokio::select! {
                r = view.changed() => { if r.is_err() { return; } }
                _ = tokio::time::sleep(nap) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Waits until the local server runs as a primary: Patroni takes the leader key first and
    /// promotes after, and the new timeline's history (what healing follows) exists only then.
    async fn wait_until_primary(&self, timeout: Duration) -> Result<()> {
        let cfg = self.pg_config()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(client) = pg::connect(&cfg).await {
                if let Ok(row) = client.query_one("SELECT pg_is_in_recovery()", &[]).await {
                    if matches!(row.try_get::<_, bool>(0), Ok(false)) {
                        return Ok(());
                    }
                }
            }
            if !self.view_says_leader() {
                return Err(Error::NotLeader(
                    "this member lost the leader key before its server was promoted".into(),
                ));
            }
            if Instant::now() > deadline {
                return Err(Error::Cluster(format!(
                    "the local server is not a primary {timeout:?} after this member took the leader key"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The new leader's first duties. Returns whether a gap stayed open.
    async fn on_gained_leadership(&self) -> bool {
        if let Err(e) = self.wait_until_primary(Duration::from_secs(300)).await {
            tracing::error!(error = %e, "leader duties postponed");
            return false;
        }
        let heal = self.heal_gaps().await;
        let gap = matches!(&heal, Ok(r) if !r.unhealable.is_empty());
        match heal {
            Ok(r) if r.healed.is_empty() && r.unhealable.is_empty() => {
                tracing::info!(
                    timeline = r.timeline,
                    checked = r.checked,
                    "gap healing: the archive holds every segment of earlier timelines"
                )
            }
            Ok(r) => tracing::warn!(
                timeline = r.timeline,
                checked = r.checked,
                healed = r.healed.len(),
                unhealable = r.unhealable.len(),
                healed_segments = r.healed.join(","),
                unhealable_segments = r.unhealable.join(","),
                "gap healing done"
            ),
            Err(e) => tracing::error!(error = %e, "gap healing failed"),
        }
        if let Err(e) = self.upload_sysid().await {
            tracing::warn!(error = %e, "could not record the system identifier in the archive");
        }
        match list_backups(&self.archive.store).await {
            Ok(b) if b.is_empty() => {
                tracing::info!("the archive holds no backup: taking one now");
                let _ = self.backup("first backup").await;
            }
            Ok(_) => self.publish_backup_list().await,
            Err(e) => tracing::warn!(error = %e, "cannot list backups"),
        }
        gap
    }

    /// On the leader, while a gap is open: heal again (another member may have uploaded the
    /// segments meanwhile); once it has stayed open for [`GAP_GRACE`], take a base backup, so
    /// the archive restores again from after the gap. Returns since when a gap is still open.
    async fn recheck_gap(&self, since: Instant) -> Option<Instant> {
        let open = match self.heal_gaps().await {
            Ok(r) if r.unhealable.is_empty() => {
                tracing::info!(timeline = r.timeline, "gap healing: the gap is closed");
                return None;
            }
            Ok(r) => r.unhealable,
            Err(e) => {
                tracing::warn!(error = %e, "gap healing failed");
                return Some(since);
            }
        };
        if since.elapsed() < GAP_GRACE {
            return Some(since);
        }
        tracing::error!(
            unhealable_segments = open.join(","),
            "no member holds these segments: taking a base backup so the archive restores again from after the gap"
        );
        if self.backup("unhealable gap").await.is_err() {
            return Some(since);
        }
        match self.heal_gaps().await {
            Ok(r) if r.unhealable.is_empty() => None,
            _ => Some(since),
        }
    }

    /// On a non-leader: upload segments of earlier timelines that this member holds as
    /// `.ready` (a former primary that rejoined without a rewind keeps what it never archived)
    /// and the archive lacks. The history rule admits only segments that end at or before
    /// their timeline's switch point.
    async fn heal_as_replica(&self) {
        let pg_wal = self.cfg.pgdata.join("pg_wal");
        if !heal::holds_unarchived_older_segments(&pg_wal) {
            return;
        }
        let ctx = match self.wal_context() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "gap healing from this member: no WAL context");
                return;
            }
        };
        match heal::heal(ctx, &self.leadership()).await {
            Ok(r) if !r.healed.is_empty() => {
                self.metrics.healed_segments.inc_by(r.healed.len() as u64);
                tracing::warn!(
                    timeline = r.timeline,
                    healed = r.healed.len(),
                    healed_segments = r.healed.join(","),
                    "gap healing from a non-leader: uploaded segments of earlier timelines the archive lacked"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "gap healing from this member failed"),
        }
    }

    pub async fn heal_gaps(&self) -> Result<heal::HealReport> {
        let r = heal::heal(self.wal_context()?, &self.leadership()).await?;
        self.metrics.healed_segments.inc_by(r.healed.len() as u64);
        self.metrics
            .unhealable_segments
            .set(r.unhealable.len() as i64);
        Ok(r)
    }

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

    async fn upload_sysid(&self) -> Result<()> {
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

    /// Takes a base backup if this member holds the leader key, then enforces retention and
    /// publishes the list.
    pub async fn backup(&self, why: &str) -> Result<Sentinel> {
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

    async fn retention(&self) -> Result<()> {
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

    /// Lists the backups and writes them to etcd, guarded by the leader key. A failed listing
    /// keeps the list that is there.
    pub async fn publish_backup_list(&self) {
        let list = match list_backups(&self.archive.store).await {
            Ok(l) => l,
            Err(e) => {
                self.metrics.backup_list_failures.inc();
                tracing::warn!(error = %e, "cannot list backups; the backup list in etcd stays as it was");
                return;
            }
        };
        self.metrics.backups_in_archive.set(list.len() as i64);
        if let Some(b) = list.last() {
            self.metrics
                .last_backup_finish
                .set(b.end_time().timestamp_millis() as f64 / 1000.0);
            self.metrics
                .backup_corrupt_pages
                .set(b.corrupt_pages.unwrap_or(0) as i64);
        }
        let text = crate::backup::list_text::render(&list, false);
        let json = match serde_json::to_string(&list) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the backup list");
                return;
            }
        };
        if let Ok(mut b) = self.backups.lock() {
            *b = Some(list);
        }
        match self
            .etcd
            .put_if_leader(&[(BACKUP_LIST_KEY, text), (BACKUP_LIST_JSON_KEY, json)])
            .await
        {
            Ok(true) => {
                self.metrics.backup_list_published.inc();
                tracing::debug!("backup list published to etcd");
            }
            Ok(false) => tracing::info!("not the leader: the backup list was not written"),
            Err(e) => {
                self.metrics.backup_list_failures.inc();
                tracing::warn!(error = %e, "cannot write the backup list to etcd");
            }
        }
    }

    /// What `/status` shows.
    pub async fn status(&self) -> serde_json::Value {
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
        let cfg = self.pg_config()?;
        let client = pg::connect(&cfg).await?;
        let row = client
            .query_one(
                "SELECT last_archived_wal, last_archived_time::text, failed_count, last_failed_wal, \
                        pg_is_in_recovery(), \
                        CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
                        (SELECT setting::bigint * CASE unit WHEN '8kB' THEN 8192 WHEN 'MB' THEN 1048576 ELSE 1 END \
                           FROM pg_settings WHERE name = 'wal_segment_size') \
                   FROM pg_stat_archiver",
                &[],
            )
            .await
            .map_err(|e| Error::Cluster(format!("pg_stat_archiver: {e}")))?;
        let col = |what: &'static str| {
            move |e: tokio_postgres::Error| {
                Error::Postgres(format!("pg_stat_archiver: {what}: {e}"))
            }
        };
        let last: Option<String> = row.try_get(0).map_err(col("last_archived_wal"))?;
        let current: Option<String> = row.try_get(5).map_err(col("pg_current_wal_lsn"))?;
        let seg_size = row
            .try_get::<_, Option<i64>>(6)
            .ok()
            .flatten()
            .and_then(|v| u64::try_from(v).ok())
            .and_then(|v| crate::wal::names::WalSegSize::new(v).ok())
            .unwrap_or_default();
        let lag = match (&last, &current) {
            (Some(l), Some(c)) => {
                let seg = crate::wal::names::WalName::parse(l)
                    .ok()
                    .and_then(|w| w.segment());
                let cur = crate::wal::Lsn::parse(c).ok();
                match (seg, cur) {
                    (Some(s), Some(cur)) => {
                        Some(cur.0.saturating_sub(s.start_lsn(seg_size) + seg_size.get()))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        Ok(json!({
            "last_archived_wal": last,
            "last_archived_time": row.try_get::<_, Option<String>>(1).map_err(col("last_archived_time"))?,
            "failed_count": row.try_get::<_, i64>(2).map_err(col("failed_count"))?,
            "last_failed_wal": row.try_get::<_, Option<String>>(3).map_err(col("last_failed_wal"))?,
            "in_recovery": row.try_get::<_, bool>(4).map_err(col("pg_is_in_recovery"))?,
            "archive_lag_bytes": lag,
        }))
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_durations_and_cron() {
        assert!(matches!(Schedule::parse("off").unwrap(), Schedule::Off));
        let every = Schedule::parse("every 6h").unwrap();
        let now = Utc::now();
        assert_eq!(every.next(now), Some(now + chrono::Duration::hours(6)));
        let cron = Schedule::parse("0 3 * * *").unwrap();
        let next = cron.next(now).unwrap();
        assert!(next > now && next - now <= chrono::Duration::hours(24));
        assert_eq!(next.format("%H:%M:%S").to_string(), "03:00:00");
        assert!(Schedule::parse("sometimes").is_err());
    }

    #[test]
    fn the_next_backup_is_due_from_the_newest_backups_finish() {
        let now: DateTime<Utc> = "2026-12-02T10:00:00Z".parse().unwrap();
        let h = chrono::Duration::hours;
        let every = Schedule::parse("every 6h").unwrap();
        // Restarted an hour after the last backup: due 5 h from now, not 6.
        assert_eq!(every.due(Some(now - h(1)), now), Some(now + h(5)));
        // Overdue (or no backup yet): due now.
        assert_eq!(every.due(Some(now - h(30)), now), Some(now));
        assert_eq!(every.due(None, now), Some(now));
        // A finish time in the future counts as now.
        assert_eq!(every.due(Some(now + h(2)), now), Some(now + h(6)));
        let cron = Schedule::parse("0 3 * * *").unwrap();
        let finish: DateTime<Utc> = "2026-12-02T03:00:05Z".parse().unwrap();
        assert_eq!(
            cron.due(Some(finish), now),
            Some("2026-12-03T03:00:00Z".parse().unwrap())
        );
        let finish: DateTime<Utc> = "2026-12-01T02:00:00Z".parse().unwrap();
        assert_eq!(
            cron.due(Some(finish), now),
            Some(now),
            "the 03:00 tick was missed"
        );
        assert_eq!(Schedule::Off.due(Some(now), now), None);
    }

    #[tokio::test]
    async fn agent_start_takes_the_due_time_from_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let mut vars = BTreeMap::new();
        vars.insert(
            "WALG_FILE_PREFIX".to_string(),
            format!("file://{}", dir.path().display()),
        );
        let settings = Settings::from_sources(vars, None, None).unwrap();
        let store = crate::storage::Store::from_settings(&settings).unwrap();
        let every = Schedule::parse("every 24h").unwrap();
        let now = Utc::now();
        assert_eq!(
            due_from_archive(&store, &every, now).await.unwrap(),
            Some(now),
            "an empty archive is due at once"
        );
        let finish = now - chrono::Duration::hours(3);
        let sentinel = json!({
            "LSN": 0x2000028u64, "FinishLSN": 0x3000100u64, "Timeline": 1,
            "FinishTime": finish.to_rfc3339(),
        });
        store
            .put_bytes(
                "basebackups_005/base_000000010000000000000002_backup_stop_sentinel.json",
                serde_json::to_vec(&sentinel).unwrap().into(),
            )
            .await
            .unwrap();
        let due = due_from_archive(&store, &every, now)
            .await
            .unwrap()
            .unwrap();
        let want = finish + chrono::Duration::hours(24);
        assert!(
            (due - want).num_milliseconds().abs() < 1000,
            "{due} vs {want}"
        );
    }
}
