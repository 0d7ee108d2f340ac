//! `walkeeper agent` without cluster settings: a single PostgreSQL server, always the leader, as
//! Timescale's WAL-E sidecar runs beside a plain PostgreSQL (no Patroni, no etcd).
//!
//! It takes the sidecar's environment: `PGDATA`, `PGWAL`, `PGHOST`/`PGUSER`/`PGPASSWORD` (the
//! connection for base backups, as libpq reads them), the archive prefix under WAL-E's or
//! WAL-G's names, `WALE_LOG_DESTINATION` and `WALE_LISTEN_PORT`. The HTTP side is
//! [`crate::api::sidecar`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use crate::archive::Archive;
use crate::backup::push::{backup_push, PushOptions};
use crate::backup::Sentinel;
use crate::config::{Settings, DEFAULT_AGENT_LISTEN};
use crate::error::{Error, Result};
use crate::wal::WalContext;

use super::Leadership;

/// The variable that opts in to token-less `GET /wal-push/F`, `/wal-fetch/F` and
/// `/backup-push` from the networks it lists (CIDRs, comma-separated).
pub const TOKENLESS_NETWORKS_VAR: &str = "WALKEEPER_API_TOKENLESS_NETWORKS";

/// Variables that name part of a cluster: with any of them, no standalone agent.
const PARTIAL_CLUSTER_VARS: [&str; 6] = [
    "PATRONI_SCOPE",
    "PATRONI_NAME",
    "PATRONI_ETCD3_HOSTS",
    "WALKEEPER_SCOPE",
    "WALKEEPER_NAME",
    "WALKEEPER_ETCD_HOSTS",
];

/// The standalone agent's settings.
#[derive(Clone)]
pub struct StandaloneConfig {
    pub pgdata: PathBuf,
    /// WAL-E's `PGWAL`: the WAL directory when it is not `PGDATA/pg_wal` as this process sees it
    /// (a volume of its own in the sidecar).
    pub pg_wal: Option<PathBuf>,
    pub listen: SocketAddr,
    /// The API token every mutation needs (outside the token-less opt-in): configured, or made
    /// at start and kept in `token_file`.
    pub token: String,
    pub token_file: PathBuf,
    /// Networks whose clients may use the sidecar's GET routes without the token.
    pub tokenless_networks: Vec<ipnet::IpNet>,
    /// Names the Host header may carry besides IP literals and localhost.
    pub api_hosts: Vec<String>,
}

/// Shows no token.
impl std::fmt::Debug for StandaloneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandaloneConfig")
            .field("pgdata", &self.pgdata)
            .field("pg_wal", &self.pg_wal)
            .field("listen", &self.listen)
            .field("token_file", &self.token_file)
            .field("tokenless_networks", &self.tokenless_networks)
            .finish_non_exhaustive()
    }
}

/// Parses a comma-separated list of networks (`172.18.0.0/16`, `10.0.0.5`, `fd00::/8`); a bare
/// address is a network of one.
pub fn parse_networks(text: &str) -> Result<Vec<ipnet::IpNet>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    Error::Config(format!(
                        "{TOKENLESS_NETWORKS_VAR}: {s:?} is not a network (e.g. 172.18.0.0/16) or an address"
                    ))
                })
        })
        .collect()
}

/// Is `peer` inside one of `networks`? An IPv4 client seen through an IPv6 socket
/// (`::ffff:a.b.c.d`) counts as its IPv4 address.
pub fn in_networks(peer: IpAddr, networks: &[ipnet::IpNet]) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
        v4 => v4,
    };
    networks.iter().any(|n| n.contains(&peer))
}

/// WAL-E's `WALE_LOG_DESTINATION` (`stderr`, `syslog`, or both, comma-separated). walkeeper
/// logs to stderr; syslog is not implemented, which is said once at start, never ignored.
fn check_log_destination(v: Option<&str>) -> Result<Option<String>> {
    let Some(v) = v else { return Ok(None) };
    let mut warning = None;
    for d in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match d.to_ascii_lowercase().as_str() {
            "stderr" => {}
            "syslog" => {
                warning = Some(format!(
                    "WALE_LOG_DESTINATION={v}: walkeeper logs to stderr only (syslog is not implemented); use the container's log or redirect stderr"
                ))
            }
            _ => {
                return Err(Error::Config(format!(
                    "WALE_LOG_DESTINATION={v:?}: {d:?} is neither stderr nor syslog"
                )))
            }
        }
    }
    Ok(warning)
}

impl StandaloneConfig {
    /// From the sidecar's environment (and the YAML file's `agent:` section). Returns the
    /// settings and a warning to log, if any.
    pub fn resolve(settings: &Settings) -> Result<(StandaloneConfig, Option<String>)> {
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
        let pg_wal = v.get("PGWAL").map(PathBuf::from);
        let listen_text = match (v.get("WALKEEPER_API_LISTEN"), v.get("WALE_LISTEN_PORT")) {
            (Some(l), _) => l.to_string(),
            // Timescale's sidecar variable: every address, that port.
            (None, Some(port)) => format!("0.0.0.0:{}", port.trim()),
            (None, None) => f
                .listen
                .clone()
                .unwrap_or_else(|| DEFAULT_AGENT_LISTEN.into()),
        };
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            Error::Config(format!(
                "API listen address {listen_text:?} is not host:port: {e}"
            ))
        })?;
        let tokenless_networks = match v.get(TOKENLESS_NETWORKS_VAR) {
            Some(t) => parse_networks(t)?,
            None => Vec::new(),
        };
        let state_dir = settings.state_dir.clone().unwrap_or_else(|| {
            pg_wal
                .clone()
                .unwrap_or_else(|| pgdata.join("pg_wal"))
                .join(".walkeeper")
        });
        let source = v.api_token_source(f.api_token_file.as_deref(), &state_dir);
        // Beyond loopback the token is the operator's, unless the opt-in names the networks
        // that may call without it: then a token made here guards every other request.
        if !listen.ip().is_loopback() && !source.is_configured() && tokenless_networks.is_empty() {
            return Err(Error::Config(format!(
                "the API listens on {listen}, beyond loopback: set WALKEEPER_API_TOKEN or WALKEEPER_API_TOKEN_FILE, or list the networks whose clients may use GET /wal-push, /wal-fetch and /backup-push without it in {TOKENLESS_NETWORKS_VAR}"
            )));
        }
        let (token, _) = source.for_agent()?;
        let api_hosts = v
            .get("WALKEEPER_API_HOSTS")
            .map(|h| {
                h.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let warning = check_log_destination(v.get("WALE_LOG_DESTINATION"))?;
        Ok((
            StandaloneConfig {
                pgdata,
                pg_wal,
                listen,
                token,
                token_file: state_dir.join(crate::security::TOKEN_FILE_NAME),
                tokenless_networks,
                api_hosts,
            },
            warning,
        ))
    }
}

/// A single server's agent: every upload is the leader's.
pub struct Standalone {
    cfg: StandaloneConfig,
    settings: Settings,
    archive: Arc<Archive>,
    /// One base backup at a time.
    backup_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Standalone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standalone")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Standalone {
    /// Refuses cluster settings: a member of a Patroni cluster runs the cluster agent.
    pub fn new(settings: Settings) -> Result<Arc<Standalone>> {
        if settings.cluster.is_some() {
            return Err(Error::Config(
                "cluster settings are set: this is a cluster member, not a standalone server"
                    .into(),
            ));
        }
        // Part of a cluster's settings (Patroni's own names are not enough for walkeeper to
        // take the server for a member) must not make a member "always the leader".
        let partial: Vec<&str> = PARTIAL_CLUSTER_VARS
            .iter()
            .copied()
            .filter(|v| settings.vars.get(v).is_some())
            .collect();
        if !partial.is_empty() {
            return Err(Error::Config(format!(
                "{} set, but the cluster settings are incomplete (scope, member name and etcd hosts): a standalone agent would take every upload for the leader's; complete them, or unset these for a single server",
                partial.join(", ")
            )));
        }
        let (cfg, warning) = StandaloneConfig::resolve(&settings)?;
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        let archive = Arc::new(Archive::open(settings.clone())?);
        Ok(Arc::new(Standalone {
            cfg,
            settings,
            archive,
            backup_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// Its settings: the data directory and the API's access rules.
    pub fn config(&self) -> &StandaloneConfig {
        &self.cfg
    }

    /// Where the archive is, for the log (no credentials).
    pub fn archive_description(&self) -> &str {
        &self.archive.store.description
    }

    /// A single server always leads.
    pub fn leadership(&self) -> Leadership {
        Leadership::AlwaysLeader
    }

    /// A WAL context for the data directory, with `PGWAL` as its WAL directory when set. Made
    /// per request: the data directory may not exist yet when the agent starts.
    pub fn wal_context(&self) -> Result<Arc<WalContext>> {
        let mut ctx = WalContext::new(self.settings.clone(), Some(&self.cfg.pgdata))?;
        if let Some(dir) = &self.cfg.pg_wal {
            ctx.pg_wal = dir
                .canonicalize()
                .map_err(|e| Error::BadInput(format!("PGWAL {}: {e}", dir.display())))?;
            if self.settings.state_dir.is_none() {
                ctx.state_dir = ctx.pg_wal.join(".walkeeper");
                let _ = crate::security::ensure_private_dir(&ctx.state_dir);
            }
        }
        Ok(Arc::new(ctx))
    }

    /// Takes a base backup of the server (connected as libpq would: `PGHOST`, `PGUSER`, ...).
    pub async fn backup(&self, why: &str) -> Result<Sentinel> {
        let _one = self.backup_lock.lock().await;
        tracing::info!(reason = why, "base backup starting");
        let opts = PushOptions::scheduled(
            self.cfg.pgdata.clone(),
            self.settings
                .vars
                .get("WALKEEPER_CONNSTRING")
                .map(String::from),
            &self.settings.backup,
        );
        let result = backup_push(self.archive.clone(), opts).await;
        match &result {
            Ok(s) => tracing::info!(finish_lsn = %s.finish_lsn, "base backup done"),
            Err(e) => tracing::error!(error = %e, "base backup failed"),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_as_cidrs_or_single_addresses_and_bad_ones_are_refused() {
        let n = parse_networks("172.18.0.0/16, 10.0.0.5 ,fd00::/8").unwrap();
        assert_eq!(n.len(), 3);
        assert!(in_networks("172.18.3.4".parse().unwrap(), &n));
        assert!(in_networks("10.0.0.5".parse().unwrap(), &n));
        assert!(!in_networks("10.0.0.6".parse().unwrap(), &n));
        assert!(in_networks("::ffff:172.18.0.9".parse().unwrap(), &n));
        assert!(!in_networks("127.0.0.1".parse().unwrap(), &n));
        // Host bits are dropped: 172.18.5.1/16 means 172.18.0.0/16.
        assert!(in_networks(
            "172.18.200.1".parse().unwrap(),
            &parse_networks("172.18.5.1/16").unwrap()
        ));
        for bad in ["everything", "172.18.0.0/33", "0.0.0.0/x"] {
            let e = parse_networks(bad).unwrap_err().to_string();
            assert!(e.contains(TOKENLESS_NETWORKS_VAR), "{e}");
        }
        assert!(parse_networks("").unwrap().is_empty());
    }

    #[test]
    fn wal_e_log_destinations_are_stderr_or_syslog_which_is_said_to_be_unimplemented() {
        assert_eq!(check_log_destination(None).unwrap(), None);
        assert_eq!(check_log_destination(Some("stderr")).unwrap(), None);
        let w = check_log_destination(Some("stderr,syslog"))
            .unwrap()
            .unwrap();
        assert!(w.contains("syslog is not implemented"), "{w}");
        assert!(check_log_destination(Some("file")).is_err());
    }
}
