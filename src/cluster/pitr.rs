//! `POST /restart {"recovery_target_time": ...}`: a point-in-time recovery of the whole cluster,
//! driven from the leader:
//!
//! 1. pause Patroni;
//! 2. stop PostgreSQL;
//! 3. move the data directory aside (put back on failure, removed on success);
//! 4. fetch the newest backup on this timeline's history that finished before the target: into
//!    the empty new directory, or, when that is cheaper, as a delta restore into a new
//!    directory seeded from the one moved aside (cloned files; the aside copy is only read);
//! 5. start PostgreSQL with the recovery settings on its command line (nothing is persisted:
//!    the next start is Patroni's own);
//! 6. wait for promotion at the target;
//! 7. once Patroni (paused) has taken the leader key for the promoted server, resume it;
//! 8. reinitialize every replica so it follows the new timeline.
//!
//! Each step is written ahead to a journal beside the data directory
//! (`<pgdata>.walkeeper-restart.json`) before it acts. An agent stopped or killed during a job
//! reads it at its next start and finishes the job (the server was promoted, or is still
//! recovering) or rolls it back (the old data directory is put back), and always resumes
//! Patroni or says loudly why it cannot.
//!
//! A job reaches the agent only through [`Restarts`]: the local server, the archive, etcd,
//! Patroni, the cluster view, the metrics and the job list, handed over when the agent starts.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use tokio::sync::{watch, Notify};

use super::etcd::{ClusterView, Etcd, LeaderStatus};
use super::heal::local_history;
use super::local::LocalServer;
use super::metrics::Metrics;
use super::patroni::base_url;
use super::patroni::Patroni;
use crate::archive::Archive;
use crate::backup::fetch::MEMBER_FILES;
use crate::backup::fetch::{backup_fetch, FetchOptions};
use crate::backup::restore::{choose, pg_time, Target};
use crate::backup::{list_backups, pg, seed, BackupInfo};
use crate::error::{Error, Result};
use crate::selfexec::SelfExec;
use crate::storage::local::write_atomic_with;
use crate::wal::history::History;

const PROMOTION_TIMEOUT: Duration = Duration::from_secs(3600);
const LEADER_KEY_TIMEOUT: Duration = Duration::from_secs(120);
const REJOIN_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartRequest {
    /// RFC 3339 with a zone, or a time without one (read in the server's TimeZone).
    pub recovery_target_time: String,
    /// Use this backup instead of the newest one that finished before the target.
    #[serde(default)]
    pub backup: Option<String>,
    /// Restore this timeline's branch (one a previous restart abandoned, say) instead of the
    /// current timeline's history.
    #[serde(default)]
    pub timeline: Option<u32>,
    /// Rebuild the replicas afterwards (default true).
    #[serde(default = "yes")]
    pub reinitialize_replicas: bool,
}

fn yes() -> bool {
    true
}

/// Why a restart was not started.
#[derive(Debug)]
pub enum Refusal {
    /// 400: the request is wrong (zone, future, before the earliest restorable point).
    BadRequest(String),
    /// 409: this member is not the leader, or a restart is running.
    Conflict {
        reason: String,
        leader: Option<String>,
    },
    /// 503: etcd or the archive could not be asked.
    Unavailable(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub at: DateTime<Utc>,
    pub step: String,
    pub detail: String,
}

/// What `GET /restart/{id}` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobState {
    pub id: String,
    pub recovery_target_time: DateTime<Utc>,
    pub backup: String,
    /// running, succeeded (every member streams on the new timeline), degraded (the leader was
    /// restored but some member does not follow it: see `replicas`), failed (rolled back)
    pub status: String,
    pub step: String,
    pub steps: Vec<Step>,
    pub error: Option<String>,
    pub new_timeline: Option<u32>,
    /// Per replica: reinitialize requested, rejoined, or the error.
    pub replicas: BTreeMap<String, String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// How far a restart has got, written ahead: the action of a phase may have begun (or ended)
/// once the journal names it. What an interrupted job's next agent does follows from it
/// ([`decide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Patroni is being paused.
    Pausing,
    /// PostgreSQL is being stopped.
    Stopping,
    /// The data directory is being renamed aside.
    MovingAside,
    /// The backup is being fetched into a new data directory (first seeded from the one moved
    /// aside, when a delta restore was chosen): the aside copy is intact, so this rolls back.
    Fetching,
    /// PostgreSQL was started to recover to the target (`recovery.signal` is written).
    Recovering,
    /// The server was promoted on the new timeline.
    Promoted,
    /// Patroni is being resumed; then the old data directory goes and replicas are rebuilt.
    Resumed,
    /// The job ended; `status` says how.
    Finished,
}

/// What the job acts on, fixed when it is accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub pgdata: PathBuf,
    /// Where the data directory is moved while the backup is restored.
    pub aside: PathBuf,
    /// The timeline whose history recovery follows (`recovery_target_timeline`).
    pub timeline: u32,
    pub reinit: bool,
}

/// The journal file's content.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    phase: Phase,
    plan: Plan,
    job: JobState,
}

/// The journal of the restart of the data directory `pgdata`, beside it (it must survive the
/// data directory being moved aside).
pub fn journal_path(pgdata: &Path) -> PathBuf {
    let name = pgdata
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    pgdata.with_file_name(format!("{name}.walkeeper-restart.json"))
}

#[derive(Debug)]
pub struct Job {
    pub id: String,
    state: Mutex<JobState>,
    phase: Mutex<Phase>,
    plan: Plan,
    journal: PathBuf,
    /// Tests only (`WALKEEPER_TEST_HOLD_RESTART_AT`): after this step's action, the job waits
    /// forever, so that a test can stop the agent exactly there.
    hold_after: Option<String>,
}

impl Job {
    pub fn is_running(&self) -> bool {
        self.state().status == "running"
    }

    pub fn state(&self) -> JobState {
        match self.state.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.lock() {
            Ok(p) => *p,
            Err(p) => *p.into_inner(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut JobState)) {
        let mut guard = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        f(&mut guard);
    }

    fn step(&self, step: &str, detail: impl Into<String>) {
        let detail = detail.into();
        tracing::info!(job = self.id, step, "{detail}");
        self.update(|s| {
            s.step = step.to_string();
            s.steps.push(Step {
                at: Utc::now(),
                step: step.to_string(),
                detail,
            });
        });
        // The phase is what recovery needs; the steps are for people: a failed write here is
        // only logged.
        if let Err(e) = self.persist() {
            tracing::warn!(job = self.id, error = %e, "cannot record the restart's step");
        }
    }

    /// Writes the journal (atomically and durably).
    fn persist(&self) -> Result<()> {
        let journal = Journal {
            phase: self.phase(),
            plan: self.plan.clone(),
            job: self.state(),
        };
        let text = serde_json::to_vec_pretty(&journal)
            .map_err(|e| Error::Cluster(format!("restart journal: {e}")))?;
        write_atomic_with(&self.journal, |w| w.write_all(&text))
            .map_err(|e| Error::io(&self.journal, e))?;
        Ok(())
    }

    /// Records that `phase`'s action begins. Nothing is done unless that is durable: a job whose
    /// journal is behind its actions could not be finished or rolled back.
    fn enter(&self, phase: Phase) -> Result<()> {
        match self.phase.lock() {
            Ok(mut p) => *p = phase,
            Err(p) => *p.into_inner() = phase,
        }
        self.persist()
    }

    /// Tests only: waits forever after `step` when told to (see `hold_after`).
    async fn hold(&self, step: &str) {
        if self.hold_after.as_deref() == Some(step) {
            tracing::warn!(
                job = self.id,
                step,
                "WALKEEPER_TEST_HOLD_RESTART_AT: holding the restart here until the agent stops"
            );
            std::future::pending::<()>().await;
        }
    }
}

/// The restarts the agent knows, by id.
#[derive(Debug, Default)]
pub struct Jobs(Mutex<BTreeMap<String, Arc<Job>>>);

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Job>>> {
        match self.0.lock() {
            Ok(j) => j,
            Err(p) => p.into_inner(),
        }
    }

    fn insert(&self, job: Arc<Job>) {
        self.lock().insert(job.id.clone(), job);
    }

    /// The restart `id`, if the agent knows it.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.lock().get(id).cloned()
    }

    /// The id of a restart that runs, if one does.
    pub fn running(&self) -> Option<String> {
        self.lock()
            .values()
            .find(|j| j.is_running())
            .map(|j| j.id.clone())
    }

    /// Each running restart and its step (`<id> at step <step>`), for the log.
    pub fn running_steps(&self) -> Vec<String> {
        self.lock()
            .values()
            .filter(|j| j.is_running())
            .map(|j| format!("{} at step {}", j.id, j.state().step))
            .collect()
    }
}

/// The parts of the agent a restart acts with, handed over once when the agent starts.
pub struct RestartParts {
    /// This member's name.
    pub member: String,
    pub local: LocalServer,
    pub archive: Arc<Archive>,
    pub etcd: Etcd,
    pub patroni: Patroni,
    /// The agent's view of the cluster (who leads, the members).
    pub view: watch::Receiver<ClusterView>,
    pub metrics: Arc<Metrics>,
    /// Wakes the agent's duties when a job ends.
    pub wake: Arc<Notify>,
    /// This binary with the agent's global options (for restore_command).
    pub self_exec: SelfExec,
    /// Tests only: see [`Job`]'s `hold_after`.
    pub hold_after: Option<String>,
}

/// Point-in-time restarts: the jobs, and the narrow handle on the agent they act with.
#[derive(Clone)]
pub struct Restarts {
    member: String,
    local: LocalServer,
    archive: Arc<Archive>,
    etcd: Etcd,
    patroni: Patroni,
    view: watch::Receiver<ClusterView>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    self_exec: SelfExec,
    hold_after: Option<String>,
    jobs: Arc<Jobs>,
}

impl std::fmt::Debug for Restarts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restarts")
            .field("member", &self.member)
            .field("local", &self.local)
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

impl Restarts {
    pub fn new(p: RestartParts) -> Restarts {
        Restarts {
            member: p.member,
            local: p.local,
            archive: p.archive,
            etcd: p.etcd,
            patroni: p.patroni,
            view: p.view,
            metrics: p.metrics,
            wake: p.wake,
            self_exec: p.self_exec,
            hold_after: p.hold_after,
            jobs: Arc::new(Jobs::default()),
        }
    }

    /// The restarts this agent knows.
    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }
}

/// Validates a request and starts the job.
pub async fn start(ctx: &Restarts, req: RestartRequest) -> std::result::Result<Arc<Job>, Refusal> {
    // A time without a zone is read in the server's TimeZone, as PostgreSQL reads it.
    let (target, target_note) = super::target_time::resolve(&ctx.local, &req.recovery_target_time)
        .await
        .map_err(target_refusal)?;
    refuse_if_running(ctx.jobs.running())?;
    let status = ctx
        .etcd
        .leader_status()
        .await
        .map_err(|e| Refusal::Unavailable(e.to_string()))?;
    refuse_unless_leader(&ctx.member, status)?;
    let local = local_history(&ctx.local.pgdata.join("pg_wal"))
        .map_err(|e| Refusal::Unavailable(e.to_string()))?;
    let branches = crate::backup::branches::load(&ctx.archive)
        .await
        .map_err(|e| Refusal::Unavailable(e.to_string()))?;
    let lineage = match req.timeline {
        None => local,
        Some(t) if t == local.timeline => local,
        Some(t) => crate::backup::branches::history_of(&branches, t)
            .map_err(|e| Refusal::BadRequest(e.to_string()))?,
    };
    crate::backup::branches::check_target(&branches, &lineage, target)
        .map_err(|e| Refusal::BadRequest(e.to_string()))?;
    let backups = list_backups(&ctx.archive.store)
        .await
        .map_err(|e| Refusal::Unavailable(e.to_string()))?;
    let chosen = choose_backup(backups, &lineage, req.backup.as_deref(), target)?;
    let id = Utc::now().format("%Y%m%dT%H%M%S%3f").to_string();
    let pgdata = ctx.local.pgdata.clone();
    let job = Arc::new(Job {
        id: id.clone(),
        state: Mutex::new(JobState {
            id: id.clone(),
            recovery_target_time: target,
            backup: chosen.name.clone(),
            status: "running".into(),
            step: "accepted".into(),
            steps: Vec::new(),
            error: None,
            new_timeline: None,
            replicas: BTreeMap::new(),
            started_at: Utc::now(),
            finished_at: None,
        }),
        phase: Mutex::new(Phase::Pausing),
        plan: Plan {
            aside: aside_path(&pgdata, &id),
            pgdata: pgdata.clone(),
            timeline: lineage.timeline,
            reinit: req.reinitialize_replicas,
        },
        journal: journal_path(&pgdata),
        hold_after: ctx.hold_after.clone(),
    });
    // Nothing happens unless the journal can be written: a job that could not be recovered
    // after an interruption must not start.
    job.persist()
        .map_err(|e| Refusal::Unavailable(format!("cannot write the restart journal: {e}")))?;
    if let Some(note) = target_note {
        job.step("target", note);
    }
    ctx.jobs.insert(job.clone());
    ctx.metrics.restarts.inc();
    let (ctx2, job2) = (ctx.clone(), job.clone());
    spawn_job(ctx, &job, async move {
        run(&ctx2, &job2, target, &chosen).await
    });
    Ok(job)
}

/// A target time that cannot be read refuses the request: a bad request when the time is
/// wrong (zone, future), unavailable when the server could not be asked.
fn target_refusal(e: Error) -> Refusal {
    match e {
        Error::BadInput(m) => Refusal::BadRequest(m),
        other => Refusal::Unavailable(other.to_string()),
    }
}

/// One restart at a time: a running one (its id) refuses another.
fn refuse_if_running(running: Option<String>) -> std::result::Result<(), Refusal> {
    match running {
        Some(id) => Err(Refusal::Conflict {
            reason: format!("restart {id} is still running"),
            leader: None,
        }),
        None => Ok(()),
    }
}

/// Only the leader restarts the cluster; the refusal names who leads.
fn refuse_unless_leader(member: &str, status: LeaderStatus) -> std::result::Result<(), Refusal> {
    if status.is_leader {
        return Ok(());
    }
    Err(Refusal::Conflict {
        reason: format!(
            "{member} is not the leader; send the restart to {}",
            status
                .leader
                .as_deref()
                .unwrap_or("the leader (none right now)")
        ),
        leader: status.leader,
    })
}

/// The backup to restore, of those on `lineage`: the one named, which must have finished
/// before the target, or else the newest that finished before it.
fn choose_backup(
    backups: Vec<BackupInfo>,
    lineage: &History,
    named: Option<&str>,
    target: DateTime<Utc>,
) -> std::result::Result<BackupInfo, Refusal> {
    let backups: Vec<BackupInfo> = backups
        .into_iter()
        .filter(|b| lineage.contains(b.timeline, b.finish_lsn.0))
        .collect();
    match named {
        Some(name) => {
            let b = backups.iter().find(|b| b.name == name).ok_or_else(|| {
                Refusal::BadRequest(format!(
                    "backup {name:?} is not a complete backup on timeline {}'s history",
                    lineage.timeline
                ))
            })?;
            if b.end_time() > target {
                return Err(Refusal::BadRequest(format!(
                    "backup {name} finished at {}, after the target {}",
                    b.end_time().to_rfc3339(),
                    target.to_rfc3339()
                )));
            }
            Ok(b.clone())
        }
        None => choose(&backups, &Target::Time(target))
            .cloned()
            .map_err(|e| {
                Refusal::BadRequest(format!("recovery_target_time {}: {e}", target.to_rfc3339()))
            }),
    }
}

/// Runs a job's work to its end: records the outcome (in memory, the journal and the metrics)
/// and wakes the agent's duties.
fn spawn_job(
    ctx: &Restarts,
    job: &Arc<Job>,
    work: impl std::future::Future<Output = Result<(u32, Option<String>)>> + Send + 'static,
) {
    let (ctx2, job2) = (ctx.clone(), job.clone());
    tokio::spawn(async move {
        let res = work.await;
        job2.update(|s| {
            s.finished_at = Some(Utc::now());
            match res {
                Ok((tli, None)) => {
                    s.status = "succeeded".into();
                    s.new_timeline = Some(tli);
                    s.step = "done".into();
                }
                Ok((tli, Some(why))) => {
                    s.status = "degraded".into();
                    s.new_timeline = Some(tli);
                    s.step = "done".into();
                    s.error = Some(why);
                }
                Err(e) => {
                    s.status = "failed".into();
                    s.error = Some(e.to_string());
                }
            }
        });
        if let Err(e) = job2.enter(Phase::Finished) {
            tracing::error!(job = job2.id, error = %e, "cannot record the restart's end in its journal: the next agent start will look at it again");
        }
        let st = job2.state();
        match (st.status.as_str(), &st.error) {
            ("succeeded", _) => {
                ctx2.metrics.restarts_succeeded.inc();
                tracing::info!(job = st.id, timeline = st.new_timeline, "restart succeeded")
            }
            ("degraded", e) => {
                ctx2.metrics.restarts_degraded.inc();
                tracing::error!(job = st.id, timeline = st.new_timeline, error = ?e, replicas = ?st.replicas, "restart degraded: the leader was restored, but not every member follows it")
            }
            (_, e) => {
                ctx2.metrics.restarts_failed.inc();
                tracing::error!(job = st.id, error = ?e, "restart failed")
            }
        }
        ctx2.wake.notify_one();
    });
}

fn aside_path(pgdata: &Path, id: &str) -> PathBuf {
    let name = pgdata
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    pgdata.with_file_name(format!("{name}.walkeeper-restart-{id}"))
}

async fn run(
    ctx: &Restarts,
    job: &Job,
    target: DateTime<Utc>,
    backup: &BackupInfo,
) -> Result<(u32, Option<String>)> {
    let plan = job.plan.clone();
    let pgdata = &plan.pgdata;
    let aside = &plan.aside;
    // Until the data directory has moved, undoing means resuming Patroni.
    let moved = async {
        job.enter(Phase::Pausing)?;
        job.step("pause", "pausing Patroni (maintenance mode)");
        ctx.patroni.set_pause(true, Duration::from_secs(60)).await?;
        job.hold("pause").await;
        job.enter(Phase::Stopping)?;
        job.step("stop", "stopping PostgreSQL");
        pg_ctl_stop(ctx, pgdata, "fast").await?;
        job.hold("stop").await;
        job.enter(Phase::MovingAside)?;
        job.step(
            "move-aside",
            format!("moving {} to {}", pgdata.display(), aside.display()),
        );
        std::fs::rename(pgdata, aside).map_err(|e| Error::io(pgdata, e))
    }
    .await;
    if let Err(e) = moved {
        resume_after_failure(ctx).await;
        return Err(e);
    }
    job.hold("move-aside").await;
    let mut child = None;
    let promoted = restore_and_promote(ctx, job, target, backup, &mut child).await;
    let new_tli = match promoted {
        Ok(t) => t,
        Err(e) => {
            job.step(
                "rollback",
                format!("{e}; putting the old data directory back"),
            );
            rollback(ctx, pgdata, aside, child).await;
            resume_after_failure(ctx).await;
            return Err(e);
        }
    };
    // The promoted postmaster is this process's child: reap it whenever it exits (Patroni
    // stops it one day and waits for its PID to vanish; a zombie would make it wait forever).
    if let Some(mut c) = child {
        tokio::task::spawn_blocking(move || c.wait());
    }
    job.hold("promoted").await;
    finish(ctx, job, new_tli).await
}

/// The part of a restart after the promotion, also what an interrupted job that got that far
/// runs at the next agent start: Patroni takes the leader key and is resumed, the old data
/// directory goes, the replicas are rebuilt onto the new timeline.
async fn finish(ctx: &Restarts, job: &Job, new_tli: u32) -> Result<(u32, Option<String>)> {
    let aside = job.plan.aside.clone();
    job.update(|s| s.new_timeline = Some(new_tli));
    job.step(
        "leader-key",
        "waiting for Patroni to take the leader key for the promoted server",
    );
    let deadline = Instant::now() + LEADER_KEY_TIMEOUT;
    loop {
        if ctx
            .etcd
            .leader_status()
            .await
            .map(|s| s.is_leader)
            .unwrap_or(false)
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Cluster(format!(
                "the server was promoted on timeline {new_tli}, but Patroni did not take the leader key within {LEADER_KEY_TIMEOUT:?}; Patroni stays paused, the old data directory is kept at {}",
                aside.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    job.enter(Phase::Resumed)?;
    job.step("resume", "resuming Patroni");
    ctx.patroni
        .set_pause(false, Duration::from_secs(60))
        .await?;
    job.hold("resume").await;
    // The restore worked: the old data directory can go.
    if aside.exists() {
        let aside2 = aside.clone();
        match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(aside2)).await {
            Ok(Err(e)) => {
                tracing::warn!(error = %e, path = %aside.display(), "cannot remove the old data directory")
            }
            Err(e) => tracing::warn!(error = %e, "removing the old data directory"),
            Ok(Ok(())) => {}
        }
    }
    if !job.plan.reinit {
        return Ok((new_tli, None));
    }
    // Replicas rebuilt before the new timeline is in the archive recover along the abandoned
    // branch: with no `<new>.history` they never hear of the new timeline, and with no copy of
    // the switch segment on the new timeline they replay the old timeline's copy past the
    // switch point. So both must be archived first.
    if let Err(e) = archive_new_timeline(ctx, job, new_tli).await {
        let why = format!("replicas not reinitialized: {e}");
        job.step("archive-timeline", why.clone());
        return Ok((new_tli, Some(why)));
    }
    Ok((new_tli, reinitialize_replicas(ctx, job, new_tli).await))
}

/// What the agent found of an interrupted job at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub pgdata_exists: bool,
    pub aside_exists: bool,
    /// A postmaster runs on the data directory.
    pub running: bool,
    /// What it answered to `pg_is_in_recovery()`, when it could be asked.
    pub in_recovery: Option<bool>,
    /// `recovery.signal` is still in the data directory (PostgreSQL removes it when recovery
    /// ends and the server is promoted).
    pub recovery_signal: bool,
}

/// How an interrupted job is ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The data directory was not touched: resume Patroni.
    Resume,
    /// Put the old data directory back (stopping anything running on the new one), resume.
    RollBack,
    /// The server still recovers: wait for its promotion, then finish.
    AwaitPromotion,
    /// The server was promoted and runs: finish.
    Finish,
    /// The server was promoted, but nothing runs on it: start it, then finish.
    StartAndFinish,
    /// Nothing safe can be done automatically: Patroni stays paused, and this says why.
    Manual(String),
}

/// The one rule for an interrupted job, from its journal's phase and what is on disk.
pub fn decide(phase: Phase, f: &Found) -> Recovery {
    match phase {
        Phase::Pausing | Phase::Stopping => Recovery::Resume,
        Phase::MovingAside if !f.aside_exists => Recovery::Resume,
        Phase::MovingAside | Phase::Fetching => {
            if f.aside_exists {
                Recovery::RollBack
            } else {
                Recovery::Manual(
                    "the backup was being restored, but the old data directory is not where the journal says it was moved"
                        .into(),
                )
            }
        }
        Phase::Recovering if f.running => match f.in_recovery {
            Some(false) => Recovery::Finish,
            _ => Recovery::AwaitPromotion,
        },
        Phase::Recovering if f.pgdata_exists && !f.recovery_signal => Recovery::StartAndFinish,
        Phase::Recovering if f.aside_exists => Recovery::RollBack,
        Phase::Recovering => Recovery::Manual(
            "recovery had begun, but neither a promoted data directory nor the old one is there"
                .into(),
        ),
        Phase::Promoted | Phase::Resumed if f.running => Recovery::Finish,
        Phase::Promoted | Phase::Resumed if f.pgdata_exists => Recovery::StartAndFinish,
        Phase::Promoted | Phase::Resumed => {
            Recovery::Manual("the server had been promoted, but its data directory is gone".into())
        }
        Phase::Finished => Recovery::Resume,
    }
}

/// Reads the journal at `path`, if there is one.
fn read_journal(path: &Path) -> Result<Option<Journal>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Cluster(format!("restart journal {}: {e}", path.display())))
}

/// At agent start: loads the last restart's journal. A finished job is only shown again by
/// `GET /restart/{id}`; an interrupted one is finished or rolled back in the background (its
/// status is `running` until then, which holds the leader duties).
pub fn recover_interrupted(ctx: &Restarts) -> Option<Arc<Job>> {
    let path = journal_path(&ctx.local.pgdata);
    let journal = match read_journal(&path) {
        Ok(Some(j)) => j,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the last restart's journal; if a restart was interrupted, Patroni may still be paused (`PATCH /config {{\"pause\": false}}`)");
            return None;
        }
    };
    let mut state = journal.job;
    let interrupted = journal.phase != Phase::Finished;
    if interrupted {
        // Written before the phase is: a job killed at its very end may say running still.
        state.status = "running".into();
    }
    let job = Arc::new(Job {
        id: state.id.clone(),
        state: Mutex::new(state),
        phase: Mutex::new(journal.phase),
        plan: journal.plan,
        journal: path,
        hold_after: None,
    });
    ctx.jobs.insert(job.clone());
    if interrupted {
        tracing::warn!(
            job = job.id,
            step = job.state().step,
            phase = ?journal.phase,
            "a point-in-time restart was interrupted (the agent stopped); finishing or rolling it back"
        );
        let (ctx2, job2) = (ctx.clone(), job.clone());
        spawn_job(
            ctx,
            &job,
            async move { resume_interrupted(&ctx2, &job2).await },
        );
    }
    Some(job)
}

/// Looks at the data directories and the server of an interrupted job.
async fn look(ctx: &Restarts, plan: &Plan) -> Found {
    let running = postmaster_running(&plan.pgdata);
    let in_recovery = if running {
        in_recovery(ctx).await.ok()
    } else {
        None
    };
    Found {
        pgdata_exists: plan.pgdata.join("global/pg_control").exists(),
        aside_exists: plan.aside.exists(),
        running,
        in_recovery,
        recovery_signal: plan.pgdata.join("recovery.signal").exists(),
    }
}

/// Ends a job the agent was stopped in, by [`decide`].
async fn resume_interrupted(ctx: &Restarts, job: &Job) -> Result<(u32, Option<String>)> {
    let plan = job.plan.clone();
    let phase = job.phase();
    let at = job.state().step;
    let found = look(ctx, &plan).await;
    let action = decide(phase, &found);
    job.step(
        "interrupted",
        format!("the agent stopped during step {at} ({phase:?}); found {found:?}: {action:?}"),
    );
    let log = log_path(&plan.aside);
    let promoted_tli = match action {
        Recovery::Resume => {
            resume_after_failure(ctx).await;
            return Err(Error::Cluster(format!(
                "interrupted at step {at}, before the data directory was replaced: nothing was restored; Patroni was resumed"
            )));
        }
        Recovery::RollBack => {
            job.step("rollback", "putting the old data directory back");
            rollback(ctx, &plan.pgdata, &plan.aside, None).await;
            resume_after_failure(ctx).await;
            return Err(Error::Cluster(format!(
                "interrupted at step {at}; rolled back: the data directory is the one from before the restart"
            )));
        }
        Recovery::Manual(why) => {
            return Err(Error::Cluster(format!(
                "interrupted at step {at}: {why}; Patroni stays paused until an operator looks (the journal is {})",
                job.journal.display()
            )));
        }
        Recovery::AwaitPromotion => {
            match wait_promotion(ctx, job, &plan.pgdata, &log, &mut None).await {
                Ok(t) => t,
                Err(e) => {
                    job.step(
                        "rollback",
                        format!("{e}; putting the old data directory back"),
                    );
                    rollback(ctx, &plan.pgdata, &plan.aside, None).await;
                    resume_after_failure(ctx).await;
                    return Err(e);
                }
            }
        }
        Recovery::StartAndFinish => {
            job.step("start", "starting the promoted server (nothing runs on it)");
            let mut child = Some(spawn_postmaster(ctx, &plan.pgdata, &[], &log)?);
            let t = wait_promotion(ctx, job, &plan.pgdata, &log, &mut child).await?;
            if let Some(mut c) = child {
                tokio::task::spawn_blocking(move || c.wait());
            }
            t
        }
        Recovery::Finish => server_timeline(ctx).await?,
    };
    if phase < Phase::Promoted {
        job.enter(Phase::Promoted)?;
    }
    finish(ctx, job, promoted_tli).await
}

/// `pg_is_in_recovery()` of the local server.
async fn in_recovery(ctx: &Restarts) -> Result<bool> {
    let client = pg::connect(&ctx.local.pg_config()?).await?;
    pg::in_recovery(&client).await
}

async fn server_timeline(ctx: &Restarts) -> Result<u32> {
    let cfg = ctx.local.pg_config()?;
    let client = pg::connect(&cfg).await?;
    Ok(pg::wal_position(&client).await?.1)
}

/// Is a postmaster running on `pgdata` (its `postmaster.pid` names a live process)?
fn postmaster_running(pgdata: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(pgdata.join("postmaster.pid")) else {
        return false;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

const TIMELINE_ARCHIVE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a replica must be seen streaming on the new timeline before it counts as rejoined
/// (a replica on a wrong branch can look running between its crashes).
const REJOIN_STABLE: Duration = Duration::from_secs(5);

/// Ends the new timeline's first segment on the promoted server and waits until the archive
/// holds `<new_tli>.history` and that segment.
async fn archive_new_timeline(ctx: &Restarts, job: &Job, new_tli: u32) -> Result<()> {
    let history = format!("{new_tli:08X}.history");
    let cfg = ctx.local.pg_config()?;
    let client = pg::connect(&cfg).await?;
    let segment = pg::switch_wal(&client)
        .await
        .map_err(|e| Error::Cluster(format!("on the promoted server: {e}")))?;
    job.step(
        "archive-timeline",
        format!("waiting for {history} and {segment} to be archived before rebuilding replicas"),
    );
    let exts: Vec<&str> = crate::codec::Compression::ALL
        .iter()
        .map(|c| c.ext())
        .collect();
    let deadline = Instant::now() + TIMELINE_ARCHIVE_TIMEOUT;
    let mut delay = Duration::from_millis(100);
    loop {
        let mut missing = Vec::new();
        for name in [&history, &segment] {
            let stem = format!("{}/{name}", crate::wal::names::WAL_FOLDER);
            if ctx.archive.store.find_stem(&stem, &exts).await?.is_empty() {
                missing.push(name.as_str());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Cluster(format!(
                "{} not archived within {TIMELINE_ARCHIVE_TIMEOUT:?}",
                missing.join(" and ")
            )));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Fetches the backup into a new data directory, keeps the member's own configuration, and
/// recovers to the target. Returns the new timeline once the server is promoted.
async fn restore_and_promote(
    ctx: &Restarts,
    job: &Job,
    target: DateTime<Utc>,
    backup: &BackupInfo,
    child: &mut Option<Child>,
) -> Result<u32> {
    let (pgdata, aside, timeline) = (&job.plan.pgdata, &job.plan.aside, job.plan.timeline);
    job.enter(Phase::Fetching)?;
    let delta = seed_from_aside(ctx, job, backup).await?;
    job.hold("seed").await;
    job.step(
        "fetch",
        if delta {
            format!(
                "fetching backup {} as a delta restore over the seeded directory",
                backup.name
            )
        } else {
            format!("fetching backup {} into an empty directory", backup.name)
        },
    );
    let opts = FetchOptions {
        concurrency: 2,
        delta,
        ..Default::default()
    };
    backup_fetch(ctx.archive.clone(), pgdata, &backup.name, opts).await?;
    for f in MEMBER_FILES {
        let from = aside.join(f);
        if from.exists() {
            let to = pgdata.join(f);
            std::fs::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
            if f.ends_with(".conf") {
                scrub_recovery_targets(&to)?;
            }
        }
    }
    let signal = pgdata.join("recovery.signal");
    std::fs::write(&signal, b"").map_err(|e| Error::io(&signal, e))?;
    job.hold("fetch").await;
    let restore_command = ctx.self_exec.shell_line(&["wal-fetch", "%f", "%p"])?;
    let log = log_path(aside);
    job.enter(Phase::Recovering)?;
    job.step(
        "start",
        format!(
            "starting PostgreSQL to recover to {} on timeline {timeline}'s history (log: {})",
            pg_time(&target),
            log.display()
        ),
    );
    let settings = [
        format!("restore_command={restore_command}"),
        format!("recovery_target_time={}", pg_time(&target)),
        "recovery_target_action=promote".to_string(),
        format!("recovery_target_timeline={timeline}"),
    ];
    *child = Some(spawn_postmaster(ctx, pgdata, &settings, &log)?);
    job.hold("start").await;
    job.step(
        "recover",
        "waiting for recovery to reach the target and promote",
    );
    let tli = wait_promotion(ctx, job, pgdata, &log, child).await?;
    job.enter(Phase::Promoted)?;
    Ok(tli)
}

/// Chooses between a full fetch into the empty new data directory and a delta restore, and
/// for the latter seeds the new directory from the one moved aside (see
/// [`crate::backup::seed`]): true when seeded. The aside copy is only read, so the rollback
/// stays what it was; the new directory is the rollback's to remove, seeded or not. The choice
/// and why are the job's `seed` step.
async fn seed_from_aside(ctx: &Restarts, job: &Job, backup: &BackupInfo) -> Result<bool> {
    let (pgdata, aside) = (&job.plan.pgdata, &job.plan.aside);
    let est = match seed::estimate(&ctx.archive, &backup.name, aside, pgdata).await {
        Ok(e) => e,
        Err(e) => {
            job.step(
                "seed",
                format!("full fetch: the old data directory could not be compared with the backup ({e})"),
            );
            return Ok(false);
        }
    };
    let (chosen, why) = seed::choose(&est, ctx.archive.store.is_local());
    job.step("seed", why);
    if !chosen {
        return Ok(false);
    }
    let (aside2, pgdata2, est2) = (aside.clone(), pgdata.clone(), est.clone());
    let started = Instant::now();
    let done = tokio::task::spawn_blocking(move || seed::seed(&est2, &aside2, &pgdata2))
        .await
        .map_err(|e| Error::Cluster(format!("seeding the data directory: {e}")))??;
    job.step(
        "seed",
        format!(
            "{} {} files ({:.1} MB) from {} in {:.1} s",
            if done.cloned { "cloned" } else { "copied" },
            done.files,
            done.bytes as f64 / 1e6,
            aside.display(),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(true)
}

/// The log of the postmaster a restart starts, beside the data directory moved aside.
fn log_path(aside: &Path) -> PathBuf {
    PathBuf::from(format!("{}.log", aside.display()))
}

/// Starts `postgres -D pgdata` with `-c` `settings`, in its own process group (a signal to the
/// agent does not reach it), its output appended to `log`.
fn spawn_postmaster(
    ctx: &Restarts,
    pgdata: &Path,
    settings: &[String],
    log: &Path,
) -> Result<Child> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| Error::io(log, e))?;
    let log_err = log_file.try_clone().map_err(|e| Error::io(log, e))?;
    let bin = ctx.local.pg_bin_dir.join("postgres");
    let mut cmd = Command::new(&bin);
    // No cloud keys, API token or passwords in the postmaster's (and its backends') environment.
    crate::security::scrub_env(&mut cmd);
    cmd.arg("-D").arg(pgdata);
    for s in settings {
        cmd.arg("-c").arg(s);
    }
    cmd.stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(&bin, e))
}

/// Waits until the server on `pgdata` runs as a primary and returns its timeline. The server is
/// `child` when this process started it, else the one `postmaster.pid` names.
async fn wait_promotion(
    ctx: &Restarts,
    job: &Job,
    pgdata: &Path,
    log: &Path,
    child: &mut Option<Child>,
) -> Result<u32> {
    let cfg = ctx.local.pg_config()?;
    let deadline = Instant::now() + PROMOTION_TIMEOUT;
    // A postmaster just started may not have written its pid file yet.
    let started = Instant::now();
    loop {
        if let Some(c) = child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(Error::Cluster(format!(
                    "PostgreSQL stopped during recovery ({status}): {}",
                    log_tail(log)
                )));
            }
        } else if !postmaster_running(pgdata) && started.elapsed() > Duration::from_secs(10) {
            return Err(Error::Cluster(format!(
                "PostgreSQL stopped during recovery: {}",
                log_tail(log)
            )));
        }
        if let Ok(client) = pg::connect(&cfg).await {
            let promoted = matches!(pg::in_recovery(&client).await, Ok(false));
            if promoted {
                let (_, tli) = pg::wal_position(&client).await?;
                job.step("promoted", format!("promoted on timeline {tli}"));
                return Ok(tli);
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Cluster(format!(
                "recovery did not finish within {PROMOTION_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The recovery target settings PostgreSQL allows only one of. Patroni 4 writes every one of
/// them, empty, into a member's postgresql.conf once it has run as a replica; PostgreSQL 15's
/// check runs before it looks at the value, so an empty `recovery_target_lsn = ''` next to the
/// restart's `-c recovery_target_time` fails with "multiple recovery targets specified".
const RECOVERY_TARGETS: &[&str] = &[
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
];

/// The settings line `line` assigns, lower-cased (`name = value` or `name value`), if any.
fn setting_name(line: &str) -> Option<String> {
    let t = line.trim_start();
    if t.starts_with('#') {
        return None;
    }
    let end = t
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(t.len());
    (end > 0).then(|| t[..end].to_ascii_lowercase())
}

/// Comments out every recovery target in `text`, so the restart's own target is the only one.
fn without_recovery_targets(text: &str) -> Option<String> {
    let mut changed = false;
    let out: Vec<String> = text
        .split_inclusive('\n')
        .map(|line| match setting_name(line) {
            Some(n) if RECOVERY_TARGETS.contains(&n.as_str()) => {
                changed = true;
                format!("# walkeeper (point-in-time restart): {line}")
            }
            _ => line.to_string(),
        })
        .collect();
    changed.then(|| out.concat())
}

/// Applies [`without_recovery_targets`] to a member's configuration file in place, keeping its
/// mode. The original stays in the data directory moved aside until the restart succeeds.
fn scrub_recovery_targets(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if let Some(new) = without_recovery_targets(&text) {
        std::fs::write(path, new).map_err(|e| Error::io(path, e))?;
        tracing::info!(file = %path.display(), "commented out the member's own recovery targets for the restart");
    }
    Ok(())
}

/// Resumes Patroni after a failed restart. A failure to resume is logged loudly: a paused
/// Patroni does no failover.
async fn resume_after_failure(ctx: &Restarts) {
    if let Err(e) = ctx.patroni.set_pause(false, Duration::from_secs(60)).await {
        tracing::error!(error = %e, "the restart failed and Patroni could not be resumed: it stays paused (no automatic failover) until `PATCH /config {{\"pause\": false}}`");
    }
}

/// The end of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(1500)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s.lines()
        .filter(|l| l.contains("FATAL") || l.contains("ERROR") || l.contains("LOG:  recovery"))
        .collect::<Vec<_>>()
        .join(" | ")
}

async fn pg_ctl_stop(ctx: &Restarts, pgdata: &Path, mode: &str) -> Result<()> {
    if !pgdata.join("postmaster.pid").exists() {
        return Ok(());
    }
    let bin = ctx.local.pg_bin_dir.join("pg_ctl");
    let out = tokio::process::Command::new(&bin)
        .arg("-D")
        .arg(pgdata)
        .args(["-m", mode, "-w", "-t", "600", "stop"])
        .output()
        .await
        .map_err(|e| Error::io(&bin, e))?;
    if out.status.success() || !pgdata.join("postmaster.pid").exists() {
        return Ok(());
    }
    Err(Error::Cluster(format!(
        "pg_ctl stop -m {mode} {}: {}",
        pgdata.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Puts the data directory moved aside back in place of a failed restore. Never removes
/// anything unless the old directory is there to take its place and no server runs on it.
async fn rollback(ctx: &Restarts, pgdata: &Path, aside: &Path, child: Option<Child>) {
    if !aside.exists() {
        tracing::error!(aside = %aside.display(), path = %pgdata.display(), "rollback: the old data directory is not there; leaving the data directory as it is");
        return;
    }
    if pgdata.exists() {
        let _ = pg_ctl_stop(ctx, pgdata, "immediate").await;
    }
    if let Some(mut c) = child {
        if c.try_wait().ok().flatten().is_none() {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
    if postmaster_running(pgdata) {
        tracing::error!(path = %pgdata.display(), "rollback: a server still runs on the restored data directory; leaving it and the old one ({}) as they are", aside.display());
        return;
    }
    if pgdata.exists() {
        if let Err(e) = std::fs::remove_dir_all(pgdata) {
            tracing::error!(error = %e, path = %pgdata.display(), "rollback: cannot remove the failed restore");
            return;
        }
    }
    if let Err(e) = std::fs::rename(aside, pgdata) {
        tracing::error!(error = %e, aside = %aside.display(), "rollback: cannot put the data directory back");
    }
}

/// Rebuilds every other member and waits until each streams on `new_tli`. Returns why not, when
/// some member does not.
async fn reinitialize_replicas(ctx: &Restarts, job: &Job, new_tli: u32) -> Option<String> {
    let members = ctx.view.borrow().members.clone();
    let me = ctx.member.clone();
    let replicas: Vec<(String, String)> = members
        .iter()
        .filter(|(n, _)| **n != me)
        .filter_map(|(n, v)| Some((n.clone(), base_url(v.get("api_url")?.as_str()?))))
        .collect();
    job.step(
        "reinitialize",
        format!(
            "reinitializing {} replica(s) onto timeline {new_tli}",
            replicas.len()
        ),
    );
    for (name, url) in &replicas {
        let r = ctx
            .patroni
            .at(url)
            .reinitialize(Duration::from_secs(120))
            .await;
        let note = match r {
            Ok(()) => "reinitialize requested".to_string(),
            Err(e) => format!("reinitialize failed: {e}"),
        };
        job.update(|s| {
            s.replicas.insert(name.clone(), note);
        });
    }
    job.hold("reinitialize").await;
    let deadline = Instant::now() + REJOIN_TIMEOUT;
    let mut view = ctx.view.clone();
    let mut since: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let members = view.borrow_and_update().members.clone();
        let mut waiting = Vec::new();
        for (name, _) in &replicas {
            let m = members.get(name);
            let (ok, seen) = follows(m, new_tli);
            let now = Instant::now();
            if ok {
                let first = *since.entry(name.clone()).or_insert(now);
                if now.duration_since(first) >= REJOIN_STABLE {
                    job.update(|s| {
                        s.replicas
                            .insert(name.clone(), format!("streaming on timeline {new_tli}"));
                    });
                    continue;
                }
            } else {
                since.remove(name);
                job.update(|s| {
                    s.replicas.insert(name.clone(), seen);
                });
            }
            waiting.push(name.clone());
        }
        if waiting.is_empty() {
            job.step("rejoined", "every replica streams on the new timeline");
            return None;
        }
        if Instant::now() > deadline {
            let why = format!(
                "{} did not stream on timeline {new_tli} within {REJOIN_TIMEOUT:?}",
                waiting.join(", ")
            );
            job.step("rejoined", why.clone());
            return Some(why);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), view.changed()).await;
    }
}

/// Does this member's key say it runs as a replica on `tli`, streaming (Patroni 3 and 4 add
/// `replication_state` when they know it)? Also what it says, for the job's report.
fn follows(member: Option<&serde_json::Value>, tli: u32) -> (bool, String) {
    let Some(m) = member else {
        return (false, "not in the cluster's member list".into());
    };
    let state = m.get("state").and_then(|t| t.as_str()).unwrap_or("unknown");
    let timeline = m.get("timeline").and_then(|t| t.as_u64());
    let repl = m.get("replication_state").and_then(|t| t.as_str());
    let ok =
        state == "running" && timeline == Some(tli as u64) && repl.is_none_or(|r| r == "streaming");
    let seen = format!(
        "state {state}, timeline {}, replication {}",
        timeline.map_or("unknown".into(), |t| t.to_string()),
        repl.unwrap_or("unknown")
    );
    (ok, seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup on `tli` that finished at LSN `finish` (`finish_h` hours before now).
    fn backup(name: &str, tli: u32, finish: u64, finish_h: i64) -> BackupInfo {
        let seg = crate::wal::names::WalSegSize::DEFAULT;
        BackupInfo {
            name: name.into(),
            format: crate::backup::Format::WalG,
            last_modified: Utc::now(),
            timeline: tli,
            start_lsn: crate::wal::Lsn(finish - 0x100),
            finish_lsn: crate::wal::Lsn(finish),
            start_segment: String::new(),
            start_offset: 0,
            stop_segment: String::new(),
            stop_offset: 0,
            expanded_size_bytes: None,
            compressed_size: None,
            seg_size: seg,
            finish_time: Some(Utc::now() - chrono::Duration::hours(finish_h)),
            system_identifier: None,
            pg_version: None,
            spec: None,
            tar_partitions: None,
            is_permanent: false,
            corrupt_pages: None,
            data_catalog_size: None,
            delta_from: None,
            delta_lsn: None,
            delta_full_name: None,
            delta_count: None,
        }
    }

    fn bad_request(r: std::result::Result<BackupInfo, Refusal>) -> String {
        match r {
            Err(Refusal::BadRequest(m)) => m,
            other => panic!("not a bad request: {other:?}"),
        }
    }

    #[test]
    fn a_running_restart_refuses_another_naming_it() {
        assert!(refuse_if_running(None).is_ok());
        match refuse_if_running(Some("20261203T220000123".into())) {
            Err(Refusal::Conflict { reason, leader }) => {
                assert_eq!(reason, "restart 20261203T220000123 is still running");
                assert_eq!(leader, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_jobs_report_a_running_restart_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("data");
        let jobs = Jobs::default();
        assert_eq!(jobs.running(), None);
        let job = Arc::new(Job {
            id: "j1".into(),
            state: Mutex::new(JobState {
                id: "j1".into(),
                recovery_target_time: Utc::now(),
                backup: "base_000000010000000000000002".into(),
                status: "running".into(),
                step: "fetch".into(),
                steps: vec![],
                error: None,
                new_timeline: None,
                replicas: BTreeMap::new(),
                started_at: Utc::now(),
                finished_at: None,
            }),
            phase: Mutex::new(Phase::Fetching),
            plan: Plan {
                aside: aside_path(&pgdata, "j1"),
                pgdata: pgdata.clone(),
                timeline: 1,
                reinit: true,
            },
            journal: journal_path(&pgdata),
            hold_after: None,
        });
        jobs.insert(job.clone());
        assert_eq!(jobs.running().as_deref(), Some("j1"));
        assert_eq!(jobs.running_steps(), vec!["j1 at step fetch".to_string()]);
        assert!(refuse_if_running(jobs.running()).is_err());
        job.update(|s| s.status = "failed".into());
        assert_eq!(jobs.running(), None);
        assert!(jobs.running_steps().is_empty());
        assert!(jobs.get("j1").is_some(), "an ended job is still shown");
        assert!(jobs.get("j2").is_none());
    }

    #[test]
    fn only_the_leader_restarts_and_the_refusal_names_who_leads() {
        let status = |leader: Option<&str>, is_leader| LeaderStatus {
            member: "pg1".into(),
            leader: leader.map(String::from),
            is_leader,
            valid_for_ms: 10_000,
        };
        assert!(refuse_unless_leader("pg1", status(Some("pg1"), true)).is_ok());
        match refuse_unless_leader("pg1", status(Some("pg2"), false)) {
            Err(Refusal::Conflict { reason, leader }) => {
                assert_eq!(reason, "pg1 is not the leader; send the restart to pg2");
                assert_eq!(leader.as_deref(), Some("pg2"));
            }
            other => panic!("{other:?}"),
        }
        match refuse_unless_leader("pg1", status(None, false)) {
            Err(Refusal::Conflict { reason, leader }) => {
                assert!(reason.ends_with("the leader (none right now)"), "{reason}");
                assert_eq!(leader, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_target_time_is_a_bad_request_and_an_unreachable_server_is_unavailable() {
        assert!(matches!(
            target_refusal(Error::BadInput("in the future".into())),
            Refusal::BadRequest(m) if m == "in the future"
        ));
        assert!(matches!(
            target_refusal(Error::Postgres("PostgreSQL: connection refused".into())),
            Refusal::Unavailable(m) if m.contains("connection refused")
        ));
        assert!(matches!(
            target_refusal(Error::Cluster("no TimeZone".into())),
            Refusal::Unavailable(_)
        ));
    }

    #[test]
    fn without_a_name_the_newest_backup_finished_before_the_target_on_the_lineage_is_chosen() {
        // Timeline 2 branched from 1 at 0/5000000.
        let lineage = History {
            timeline: 2,
            entries: vec![(1, 0x500_0000)],
        };
        let backups = vec![
            backup("base_a", 1, 0x200_0100, 30),
            backup("base_b", 1, 0x400_0100, 20),
            // On timeline 1 after the switch: an abandoned branch.
            backup("base_c", 1, 0x600_0100, 10),
            backup("base_d", 2, 0x700_0100, 5),
            backup("base_e", 2, 0x800_0100, 1),
        ];
        let at = |h: i64| Utc::now() - chrono::Duration::hours(h);
        let pick = |h| {
            choose_backup(backups.clone(), &lineage, None, at(h))
                .unwrap()
                .name
        };
        assert_eq!(pick(0), "base_e");
        assert_eq!(pick(3), "base_d");
        assert_eq!(pick(8), "base_b", "base_c is not on timeline 2's history");
        assert_eq!(pick(25), "base_a");
        let m = bad_request(choose_backup(backups.clone(), &lineage, None, at(40)));
        assert!(m.contains("no backup finished before the target"), "{m}");
        assert!(
            m.contains("base_a"),
            "names the earliest restorable point: {m}"
        );
        let m = bad_request(choose_backup(Vec::new(), &lineage, None, at(0)));
        assert!(m.contains("holds no complete backup"), "{m}");
    }

    #[test]
    fn a_named_backup_must_be_on_the_lineage_and_finish_before_the_target() {
        let lineage = History {
            timeline: 2,
            entries: vec![(1, 0x500_0000)],
        };
        let backups = vec![
            backup("base_b", 1, 0x400_0100, 20),
            backup("base_c", 1, 0x600_0100, 10),
            backup("base_d", 2, 0x700_0100, 5),
        ];
        let now = Utc::now();
        let chosen = choose_backup(backups.clone(), &lineage, Some("base_b"), now).unwrap();
        assert_eq!(
            chosen.name, "base_b",
            "an older backup than the newest may be named"
        );
        let m = bad_request(choose_backup(
            backups.clone(),
            &lineage,
            Some("base_c"),
            now,
        ));
        assert_eq!(
            m,
            "backup \"base_c\" is not a complete backup on timeline 2's history"
        );
        let m = bad_request(choose_backup(
            backups.clone(),
            &lineage,
            Some("base_x"),
            now,
        ));
        assert!(m.contains("\"base_x\""), "{m}");
        let target = now - chrono::Duration::hours(7);
        let m = bad_request(choose_backup(backups, &lineage, Some("base_d"), target));
        assert!(m.starts_with("backup base_d finished at "), "{m}");
        assert!(
            m.contains(&format!("after the target {}", target.to_rfc3339())),
            "{m}"
        );
    }

    #[test]
    fn the_old_data_directory_and_the_restart_log_sit_beside_the_data_directory() {
        let pgdata = Path::new("/var/lib/postgresql/15/main");
        let aside = aside_path(pgdata, "20261203T220000123");
        assert_eq!(
            aside,
            Path::new("/var/lib/postgresql/15/main.walkeeper-restart-20261203T220000123")
        );
        assert_eq!(
            log_path(&aside),
            Path::new("/var/lib/postgresql/15/main.walkeeper-restart-20261203T220000123.log")
        );
        assert_eq!(
            journal_path(pgdata),
            Path::new("/var/lib/postgresql/15/main.walkeeper-restart.json")
        );
        // A trailing slash names the same directory; each job's aside path is its own.
        assert_eq!(
            aside_path(
                Path::new("/var/lib/postgresql/15/main/"),
                "20261203T220000123"
            ),
            aside
        );
        assert_ne!(aside_path(pgdata, "a"), aside_path(pgdata, "b"));
        // Never inside the data directory, which is what is moved.
        assert!(!aside.starts_with(pgdata));
        assert!(!journal_path(pgdata).starts_with(pgdata));
    }

    #[test]
    fn a_member_follows_only_when_running_streaming_on_the_new_timeline() {
        let m = |v: serde_json::Value| follows(Some(&v), 3).0;
        assert!(m(serde_json::json!({"state": "running", "timeline": 3})));
        assert!(m(
            serde_json::json!({"state": "running", "timeline": 3, "replication_state": "streaming"})
        ));
        assert!(!m(
            serde_json::json!({"state": "running", "timeline": 3, "replication_state": "in archive recovery"})
        ));
        assert!(!m(serde_json::json!({"state": "running", "timeline": 2})));
        assert!(!m(serde_json::json!({"state": "starting", "timeline": 3})));
        assert!(!follows(None, 3).0);
    }

    fn found(
        pgdata: bool,
        aside: bool,
        running: bool,
        in_recovery: Option<bool>,
        signal: bool,
    ) -> Found {
        Found {
            pgdata_exists: pgdata,
            aside_exists: aside,
            running,
            in_recovery,
            recovery_signal: signal,
        }
    }

    #[test]
    fn before_the_data_directory_moves_an_interrupted_restart_only_resumes_patroni() {
        // Killed while pausing or stopping: the data directory is the member's own.
        for f in [
            found(true, false, true, Some(false), false),
            found(true, false, false, None, false),
        ] {
            assert_eq!(decide(Phase::Pausing, &f), Recovery::Resume);
            assert_eq!(decide(Phase::Stopping, &f), Recovery::Resume);
            // The rename had not happened yet.
            assert_eq!(decide(Phase::MovingAside, &f), Recovery::Resume);
        }
    }

    #[test]
    fn once_moved_aside_and_not_yet_recovering_an_interrupted_restart_is_rolled_back() {
        // Renamed, nothing fetched yet.
        let moved = found(false, true, false, None, false);
        assert_eq!(decide(Phase::MovingAside, &moved), Recovery::RollBack);
        assert_eq!(decide(Phase::Fetching, &moved), Recovery::RollBack);
        // Half fetched, or fetched with recovery.signal written but never started.
        assert_eq!(
            decide(Phase::Fetching, &found(true, true, false, None, true)),
            Recovery::RollBack
        );
        // Never delete a restore whose old directory is not there to replace it.
        assert!(matches!(
            decide(Phase::Fetching, &found(true, false, false, None, false)),
            Recovery::Manual(_)
        ));
    }

    #[test]
    fn a_restart_interrupted_during_recovery_waits_finishes_or_rolls_back_by_what_runs() {
        // The recovering postmaster outlived the ctx.
        assert_eq!(
            decide(
                Phase::Recovering,
                &found(true, true, true, Some(true), true)
            ),
            Recovery::AwaitPromotion
        );
        // Not answering yet (starting up): wait as well.
        assert_eq!(
            decide(Phase::Recovering, &found(true, true, true, None, true)),
            Recovery::AwaitPromotion
        );
        // It reached the target and promoted meanwhile.
        assert_eq!(
            decide(
                Phase::Recovering,
                &found(true, true, true, Some(false), false)
            ),
            Recovery::Finish
        );
        // Promoted (recovery.signal gone), then stopped with the host.
        assert_eq!(
            decide(Phase::Recovering, &found(true, true, false, None, false)),
            Recovery::StartAndFinish
        );
        // Stopped before the end of recovery: back to the old directory.
        assert_eq!(
            decide(Phase::Recovering, &found(true, true, false, None, true)),
            Recovery::RollBack
        );
        assert!(matches!(
            decide(Phase::Recovering, &found(false, false, false, None, false)),
            Recovery::Manual(_)
        ));
    }

    #[test]
    fn after_promotion_an_interrupted_restart_is_always_finished() {
        for phase in [Phase::Promoted, Phase::Resumed] {
            // The aside directory may already be gone after the resume.
            for aside in [true, false] {
                assert_eq!(
                    decide(phase, &found(true, aside, true, Some(false), false)),
                    Recovery::Finish
                );
                assert_eq!(
                    decide(phase, &found(true, aside, false, None, false)),
                    Recovery::StartAndFinish
                );
            }
            assert!(matches!(
                decide(phase, &found(false, true, false, None, false)),
                Recovery::Manual(_)
            ));
        }
    }

    #[test]
    fn the_journal_lives_beside_the_data_directory_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("data");
        let path = journal_path(&pgdata);
        assert_eq!(path, dir.path().join("data.walkeeper-restart.json"));
        assert!(read_journal(&path).unwrap().is_none());
        let j = Journal {
            phase: Phase::Recovering,
            plan: Plan {
                pgdata: pgdata.clone(),
                aside: aside_path(&pgdata, "x"),
                timeline: 3,
                reinit: true,
            },
            job: JobState {
                id: "x".into(),
                recovery_target_time: Utc::now(),
                backup: "base_000000010000000000000002".into(),
                status: "running".into(),
                step: "recover".into(),
                steps: vec![],
                error: None,
                new_timeline: None,
                replicas: BTreeMap::new(),
                started_at: Utc::now(),
                finished_at: None,
            },
        };
        std::fs::write(&path, serde_json::to_vec(&j).unwrap()).unwrap();
        let back = read_journal(&path).unwrap().unwrap();
        assert_eq!(back.phase, Phase::Recovering);
        assert_eq!(back.plan.aside, dir.path().join("data.walkeeper-restart-x"));
        assert_eq!(back.job.step, "recover");
        std::fs::write(&path, b"{not json").unwrap();
        let err = read_journal(&path).unwrap_err().to_string();
        assert!(err.contains("data.walkeeper-restart.json"), "{err}");
    }

    #[test]
    fn patroni_4s_empty_recovery_targets_are_commented_out_and_nothing_else() {
        let conf = "# Do not edit this file manually!\n\
                    include 'postgresql.base.conf'\n\
                    recovery_target = ''\n\
                    recovery_target_lsn = ''\n\
                    Recovery_Target_Name=''\n\
                    \trecovery_target_time ''\n\
                    recovery_target_xid = ''\n\
                    recovery_target_timeline = 'latest'\n\
                    recovery_target_inclusive = on\n\
                    # recovery_target_time = 'x'\n\
                    primary_conninfo = 'host=a'\n";
        let out = without_recovery_targets(conf).unwrap();
        let active: Vec<&str> = out
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        assert_eq!(
            active,
            [
                "include 'postgresql.base.conf'",
                "recovery_target_timeline = 'latest'",
                "recovery_target_inclusive = on",
                "primary_conninfo = 'host=a'",
            ]
        );
        assert_eq!(out.lines().count(), conf.lines().count());
        assert!(without_recovery_targets("port = 5432\n").is_none());
    }
}
