//! `create-replica`: Patroni's `create_replica_methods` entry. Restores the newest suitable base
//! backup from the archive when the WAL to replay since it is small enough; otherwise declines,
//! so that Patroni falls back to the next method (basebackup).
//!
//! Thresholds, highest precedence first: `--threshold_megabytes` /
//! `--threshold_backup_size_percentage` (Patroni's method config), then
//! WALE_BACKUP_THRESHOLD_MEGABYTES / WALE_BACKUP_THRESHOLD_PERCENTAGE, then Patroni's defaults
//! (10240 MiB, 30 %). A backup is used only when the WAL since its start is below both.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::etcd::{Etcd, BACKUP_LIST_JSON_KEY};
use crate::archive::Archive;
use crate::backup::fetch::{backup_fetch, FetchOptions};
use crate::backup::restore::{remove_recovery_block, write_recovery_settings};
use crate::backup::{list_backups, pg, BackupInfo};
use crate::config::{ClusterSettings, Vars};
use crate::error::{Error, Result};
use crate::wal::history::{self, History};
use crate::wal::Lsn;

pub const DEFAULT_THRESHOLD_MB: u64 = 10240;
pub const DEFAULT_THRESHOLD_PERCENTAGE: f64 = 30.0;

/// Patroni's argv, parsed leniently: `--key=value` pairs, unknown keys ignored.
#[derive(Clone, Default)]
pub struct ReplicaArgs {
    pub scope: Option<String>,
    pub datadir: Option<PathBuf>,
    pub connstring: Option<String>,
    pub threshold_megabytes: Option<u64>,
    pub threshold_percentage: Option<f64>,
    pub retries: u32,
    /// `--no_leader=1` / `--no_master=1`: this method may run without a leader.
    pub no_leader: bool,
    /// Patroni's `keep_data: true`: the data directory was not emptied, so the backup is
    /// restored over it (`backup-fetch --delta`), keeping the files that already match.
    pub keep_data: bool,
}

/// Shows the connection string without its password.
impl std::fmt::Debug for ReplicaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaArgs")
            .field("scope", &self.scope)
            .field("datadir", &self.datadir)
            .field(
                "connstring",
                &crate::security::ScrubbedConnstring(self.connstring.as_deref()),
            )
            .field("threshold_megabytes", &self.threshold_megabytes)
            .field("threshold_percentage", &self.threshold_percentage)
            .field("retries", &self.retries)
            .field("no_leader", &self.no_leader)
            .field("keep_data", &self.keep_data)
            .finish()
    }
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl ReplicaArgs {
    /// Parses Patroni's `--key=value` arguments. Values Patroni sends as Python `str()` (`True`,
    /// `1`) are accepted; keys walkeeper does not know are ignored, as Patroni passes every key
    /// of the method's config section.
    pub fn parse<S: AsRef<str>>(argv: &[S]) -> Result<Self> {
        let mut a = ReplicaArgs {
            retries: 1,
            ..Default::default()
        };
        for raw in argv {
            let raw = raw.as_ref();
            let Some(kv) = raw.strip_prefix("--") else {
                tracing::debug!(
                    argument = raw,
                    "create-replica: ignoring a positional argument"
                );
                continue;
            };
            let (k, v) = kv.split_once('=').unwrap_or((kv, "1"));
            let num = |what: &str| -> Result<f64> {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|n| *n >= 0.0)
                    .ok_or_else(|| {
                        Error::BadInput(format!("--{what}={v:?} is not a non-negative number"))
                    })
            };
            match k.replace('-', "_").as_str() {
                "scope" => a.scope = Some(v.to_string()),
                "datadir" => a.datadir = Some(PathBuf::from(v)),
                "connstring" => a.connstring = Some(v.to_string()).filter(|s| !s.trim().is_empty()),
                "threshold_megabytes" => a.threshold_megabytes = Some(num(k)? as u64),
                "threshold_backup_size_percentage" => a.threshold_percentage = Some(num(k)?),
                "retries" => a.retries = num(k)? as u32,
                "no_leader" | "no_master" => a.no_leader |= truthy(v),
                "keep_data" => a.keep_data = truthy(v),
                _ => {}
            }
        }
        Ok(a)
    }
}

/// The thresholds in force, and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub megabytes: u64,
    pub percentage: f64,
    pub source: String,
}

impl Thresholds {
    pub fn resolve(args: &ReplicaArgs, vars: &Vars) -> Result<Thresholds> {
        let env_num = |key: &str| -> Result<Option<f64>> {
            match vars.get(key) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|n| *n >= 0.0)
                    .map(Some)
                    .ok_or_else(|| {
                        Error::Config(format!("{key}={v:?} is not a non-negative number"))
                    }),
            }
        };
        let mut source = Vec::new();
        let megabytes = match (
            args.threshold_megabytes,
            env_num("WALE_BACKUP_THRESHOLD_MEGABYTES")?,
        ) {
            (Some(m), _) => {
                source.push("--threshold_megabytes");
                m
            }
            (None, Some(m)) => {
                source.push("WALE_BACKUP_THRESHOLD_MEGABYTES");
                m as u64
            }
            (None, None) => {
                source.push("default MiB");
                DEFAULT_THRESHOLD_MB
            }
        };
        let percentage = match (
            args.threshold_percentage,
            env_num("WALE_BACKUP_THRESHOLD_PERCENTAGE")?,
        ) {
            (Some(p), _) => {
                source.push("--threshold_backup_size_percentage");
                p
            }
            (None, Some(p)) => {
                source.push("WALE_BACKUP_THRESHOLD_PERCENTAGE");
                p
            }
            (None, None) => {
                source.push("default %");
                DEFAULT_THRESHOLD_PERCENTAGE
            }
        };
        Ok(Thresholds {
            megabytes,
            percentage,
            source: source.join(", "),
        })
    }

    /// Is replaying `wal_bytes` from a backup of `backup_size` bytes within both thresholds?
    pub fn allow(&self, wal_bytes: u64, backup_size: Option<i64>) -> bool {
        let size_ok = (wal_bytes as u128) < (self.megabytes as u128) * 1024 * 1024;
        let pct_ok = match backup_size {
            Some(size) if size > 0 => (wal_bytes as f64) < size as f64 * self.percentage / 100.0,
            _ => false,
        };
        size_ok && pct_ok
    }
}

/// Where the leader is: its WAL position and timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderPosition {
    pub lsn: Lsn,
    pub timeline: u32,
}

/// The chosen backup and the numbers behind the choice.
#[derive(Debug, Clone)]
pub struct Plan {
    pub backup: BackupInfo,
    pub leader: Option<LeaderPosition>,
    pub wal_bytes: Option<u64>,
    pub restore: bool,
    pub reason: String,
}

/// The backups the cluster published in etcd, or the archive's listing.
async fn backups(archive: &Archive, etcd: Option<&Etcd>) -> Result<Vec<BackupInfo>> {
    if let Some(etcd) = etcd {
        match etcd.get(BACKUP_LIST_JSON_KEY).await {
            Ok(Some(text)) => match serde_json::from_str::<Vec<BackupInfo>>(&text) {
                Ok(list) => {
                    tracing::info!(backups = list.len(), "backup list from etcd");
                    return Ok(list);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the backup list in etcd is unusable; listing the archive")
                }
            },
            Ok(None) => tracing::info!("no backup list in etcd; listing the archive"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the backup list from etcd; listing the archive")
            }
        }
    }
    list_backups(&archive.store).await
}

/// The leader's position from its etcd member key.
async fn leader_from_etcd(etcd: &Etcd) -> Result<Option<LeaderPosition>> {
    let Some(leader) = etcd.get("leader").await? else {
        return Ok(None);
    };
    let Some(text) = etcd.get(&format!("members/{leader}")).await? else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Cluster(format!("members/{leader} is not JSON: {e}")))?;
    let lsn = v.get("xlog_location").and_then(|x| x.as_u64());
    let tli = v.get("timeline").and_then(|x| x.as_u64());
    Ok(match (lsn, tli) {
        (Some(l), Some(t)) => Some(LeaderPosition {
            lsn: Lsn(l),
            timeline: t as u32,
        }),
        _ => None,
    })
}

/// The leader's position, asked through the connection string (PGPASSFILE supplies the
/// password).
async fn leader_from_connstring(connstring: &str, vars: &Vars) -> Result<LeaderPosition> {
    let cfg = pg::config(Some(connstring), vars)?;
    let client = pg::connect(&cfg).await.map_err(|e| {
        Error::Cluster(format!(
            "the leader ({}): {e}",
            crate::security::scrub_connstring(connstring)
        ))
    })?;
    let (lsn, timeline) = pg::wal_position(&client).await?;
    Ok(LeaderPosition { lsn, timeline })
}

/// The newest backup that belongs to `history` and to the cluster `sysid`.
fn newest_on<'a>(
    backups: &'a [BackupInfo],
    history: &History,
    sysid: Option<u64>,
    not_after: Option<Lsn>,
) -> Option<&'a BackupInfo> {
    backups.iter().rev().find(|b| {
        history.contains(b.timeline, b.finish_lsn.0)
            && match (sysid, b.system_identifier) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            }
            && not_after.is_none_or(|l| b.start_lsn <= l)
    })
}

/// Decides whether to restore from the archive, and which backup.
pub async fn plan(
    archive: &Archive,
    cluster: Option<&ClusterSettings>,
    args: &ReplicaArgs,
    thresholds: &Thresholds,
) -> Result<Plan> {
    let etcd = match cluster {
        Some(c) => {
            let mut c = c.clone();
            if let Some(s) = &args.scope {
                c.scope = s.clone();
            }
            match Etcd::connect(&c).await {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(error = %e, "etcd is unreachable; using the archive and the connection string");
                    None
                }
            }
        }
        None => None,
    };
    let backups = backups(archive, etcd.as_ref()).await?;
    let sysid = match &etcd {
        Some(e) => e
            .get("initialize")
            .await
            .ok()
            .flatten()
            .and_then(|s| s.parse().ok()),
        None => None,
    };
    let no_backup = |why: &str| {
        Error::Cluster(format!(
            "no usable backup in {}{why}",
            archive.store.description
        ))
    };

    let Some(connstring) = args.connstring.as_deref() else {
        // No leader to clone from: restore along the newest timeline the archive knows.
        if !args.no_leader {
            return Err(Error::BadInput(
                "no --connstring (no leader) and this method is not marked no_leader".into(),
            ));
        }
        let newest = history::fetch_newer(archive, 1)
            .await?
            .into_values()
            .last()
            .unwrap_or_else(History::first);
        let b = newest_on(&backups, &newest, sysid, None)
            .ok_or_else(|| no_backup(&format!(" on timeline {}'s history", newest.timeline)))?;
        return Ok(Plan {
            backup: b.clone(),
            leader: None,
            wal_bytes: None,
            restore: true,
            reason: format!(
                "no leader: restoring the newest backup on timeline {}'s history",
                newest.timeline
            ),
        });
    };

    // The leader's own answer is exact and current; its etcd member key is up to one Patroni
    // loop old, so it is the fallback when the connection string does not get in.
    let asked = tokio::time::timeout(
        Duration::from_secs(10),
        leader_from_connstring(connstring, &archive.settings.vars),
    )
    .await
    .unwrap_or_else(|_| {
        Err(Error::Cluster(
            "the leader did not answer within 10 s".into(),
        ))
    });
    let leader = match (asked, &etcd) {
        (Ok(p), _) => p,
        (Err(e), Some(etcd)) => {
            tracing::warn!(error = %e, "cannot ask the leader; using its member key in etcd");
            leader_from_etcd(etcd).await?.ok_or_else(|| {
                Error::Cluster("the leader's WAL position is unknown (no member key)".into())
            })?
        }
        (Err(e), None) => return Err(e),
    };
    let lineage = match history::fetch(archive, leader.timeline).await? {
        Some(h) => h,
        None => {
            tracing::warn!(
                timeline = leader.timeline,
                "the leader's timeline history is not archived; only backups of that timeline qualify"
            );
            History {
                timeline: leader.timeline,
                entries: Vec::new(),
            }
        }
    };
    let b = newest_on(&backups, &lineage, sysid, Some(leader.lsn)).ok_or_else(|| {
        no_backup(&format!(
            " on the leader's timeline {} history",
            leader.timeline
        ))
    })?;
    let wal_bytes = leader.lsn.0 - b.start_lsn.0;
    let restore = thresholds.allow(wal_bytes, b.database_size());
    let mib = |n: f64| n / 1048576.0;
    let reason = format!(
        "backup {} starts at {}, the leader is at {} on timeline {}: {} bytes ({:.1} MiB) of WAL to replay; \
         backup size {} bytes; thresholds {} MiB and {}% ({:.1} MiB) from {} → {}",
        b.name,
        b.start_lsn,
        leader.lsn,
        leader.timeline,
        wal_bytes,
        mib(wal_bytes as f64),
        b.database_size().map(|s| s.to_string()).unwrap_or_else(|| "unknown".into()),
        thresholds.megabytes,
        thresholds.percentage,
        mib(b.database_size().unwrap_or(0) as f64 * thresholds.percentage / 100.0),
        thresholds.source,
        if restore {
            "restoring from the archive"
        } else {
            "over a threshold: declining so that Patroni uses the next method"
        }
    );
    Ok(Plan {
        backup: b.clone(),
        leader: Some(leader),
        wal_bytes: Some(wal_bytes),
        restore,
        reason,
    })
}

/// Fetches the planned backup into `datadir` (retrying `retries` more times) and leaves it set
/// up to recover from the archive and follow the leader.
pub async fn restore(
    archive: Arc<Archive>,
    plan: &Plan,
    args: &ReplicaArgs,
    datadir: &Path,
    restore_command: &str,
) -> Result<()> {
    let attempts = args.retries + 1;
    let mut last = None;
    for attempt in 1..=attempts {
        let opts = FetchOptions {
            concurrency: 2,
            delta: args.keep_data,
            ..Default::default()
        };
        match backup_fetch(archive.clone(), datadir, &plan.backup.name, opts).await {
            Ok(_) => {
                last = None;
                break;
            }
            Err(e @ Error::BadInput(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(attempt, attempts, error = %e, "create-replica: fetch failed");
                last = Some(e);
                if attempt < attempts {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }
    if let Some(e) = last {
        return Err(e);
    }
    write_standby_settings(datadir, restore_command, args.connstring.as_deref())
}

/// standby.signal plus restore_command, the leader's connection and the newest timeline, in
/// postgresql.conf (Patroni rewrites that file with its own settings when it starts the
/// replica; postgresql.auto.conf is left alone, as it would override Patroni's later choices).
fn write_standby_settings(
    datadir: &Path,
    restore_command: &str,
    connstring: Option<&str>,
) -> Result<()> {
    let q = |s: &str| s.replace('\'', "''");
    let mut conf = String::from("\n# walkeeper create-replica\n");
    conf.push_str(&format!("restore_command = '{}'\n", q(restore_command)));
    conf.push_str("recovery_target_timeline = 'latest'\n");
    if let Some(c) = connstring {
        conf.push_str(&format!("primary_conninfo = '{}'\n", q(c)));
    }
    // A backup of a server still recovering from `walkeeper restore` carries its target along.
    remove_recovery_block(datadir)?;
    write_recovery_settings(datadir, "postgresql.conf", &conf, "standby.signal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patroni_argv_is_parsed_and_unknown_keys_ignored() {
        let a = ReplicaArgs::parse(&[
            "--fixed-flag",
            "--keep_data=False",
            "--no_params=False",
            "--myparam=foo",
            "--threshold_megabytes=100",
            "--threshold_backup_size_percentage=12.5",
            "--no_master=1",
            "--retries=3",
            "--scope=demo",
            "--role=replica",
            "--datadir=/pg/data",
            "--connstring=dbname=postgres user=replicator host=127.0.0.1 port=5433",
        ])
        .unwrap();
        assert_eq!(a.scope.as_deref(), Some("demo"));
        assert_eq!(a.datadir, Some(PathBuf::from("/pg/data")));
        assert_eq!(
            a.connstring.as_deref(),
            Some("dbname=postgres user=replicator host=127.0.0.1 port=5433")
        );
        assert_eq!(a.threshold_megabytes, Some(100));
        assert_eq!(a.threshold_percentage, Some(12.5));
        assert!(a.no_leader);
        assert!(!a.keep_data);
        assert_eq!(a.retries, 3);
        let a =
            ReplicaArgs::parse(&["--no_leader=True", "--connstring=", "--keep_data=True"]).unwrap();
        assert!(a.no_leader);
        assert!(a.keep_data);
        assert_eq!(a.connstring, None);
        assert!(ReplicaArgs::parse(&["--threshold_megabytes=lots"]).is_err());
    }

    #[test]
    fn argv_thresholds_override_the_environment_which_overrides_defaults() {
        let mut vars = Vars::default();
        let t = Thresholds::resolve(&ReplicaArgs::default(), &vars).unwrap();
        assert_eq!(
            (t.megabytes, t.percentage),
            (DEFAULT_THRESHOLD_MB, DEFAULT_THRESHOLD_PERCENTAGE)
        );
        vars.set("WALE_BACKUP_THRESHOLD_MEGABYTES", "5");
        vars.set("WALE_BACKUP_THRESHOLD_PERCENTAGE", "50");
        let t = Thresholds::resolve(&ReplicaArgs::default(), &vars).unwrap();
        assert_eq!((t.megabytes, t.percentage), (5, 50.0));
        let args = ReplicaArgs {
            threshold_megabytes: Some(7),
            ..Default::default()
        };
        let t = Thresholds::resolve(&args, &vars).unwrap();
        assert_eq!((t.megabytes, t.percentage), (7, 50.0));
        assert!(t.source.contains("--threshold_megabytes"));
        assert!(t.source.contains("WALE_BACKUP_THRESHOLD_PERCENTAGE"));
    }

    #[test]
    fn both_thresholds_must_hold_and_are_exact_in_bytes() {
        let t = Thresholds {
            megabytes: 16,
            percentage: 50.0,
            source: String::new(),
        };
        let mib = 1024 * 1024;
        assert!(t.allow(16 * mib - 1, Some(64 * mib as i64)));
        assert!(!t.allow(16 * mib, Some(64 * mib as i64)));
        assert!(!t.allow(10 * mib, Some(20 * mib as i64)));
        assert!(!t.allow(0, None));
    }
}
