//! The agent's settings, resolved from the environment and the YAML file's `agent:` section.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::schedule::Schedule;
use crate::config::{Settings, DEFAULT_AGENT_LISTEN};
use crate::error::{Error, Result};

/// The agent's settings, resolved from the environment and the YAML file's `agent:` section.
#[derive(Clone)]
pub struct AgentConfig {
    pub pgdata: PathBuf,
    pub connstring: Option<String>,
    pub pg_bin_dir: PathBuf,
    pub patroni_url: String,
    pub patroni_auth: Option<(String, String)>,
    /// Who may call the HTTP API, and where it listens.
    pub api: ApiAccess,
    pub schedule: Schedule,
    pub retain: Option<usize>,
    pub retain_min_age: Duration,
    pub backup_list_refresh: Duration,
    pub restore_when_empty: bool,
    /// Tests only (`WALKEEPER_TEST_HOLD_RESTART_AT`): the step after which a point-in-time
    /// restart waits forever, so that a test can stop the agent exactly there.
    pub hold_restart_at: Option<String>,
}

/// The HTTP API's access rules: the listen address, the token and the names the Host header
/// may carry.
#[derive(Clone)]
pub struct ApiAccess {
    pub listen: SocketAddr,
    /// Bearer token for mutating endpoints: configured (required when listening beyond
    /// loopback), else made at start.
    pub token: Option<String>,
    /// Where the agent keeps its token (`<state dir>/api-token`, mode 0600), for its own
    /// commands.
    pub token_file: Option<PathBuf>,
    /// Names the Host header may carry besides IP literals and localhost
    /// (`WALKEEPER_API_HOSTS`).
    pub hosts: Vec<String>,
}

/// Shows no token.
impl std::fmt::Debug for ApiAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAccess")
            .field("listen", &self.listen)
            .field("token_file", &self.token_file)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
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
            .field("api", &self.api)
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
        let hosts = v
            .get("WALKEEPER_API_HOSTS")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let hold_restart_at = v
            .get("WALKEEPER_TEST_HOLD_RESTART_AT")
            .map(|s| s.trim().to_string());
        Ok(AgentConfig {
            pgdata,
            connstring,
            pg_bin_dir,
            patroni_url,
            patroni_auth,
            api: ApiAccess {
                listen,
                token,
                token_file,
                hosts,
            },
            schedule,
            retain,
            retain_min_age,
            backup_list_refresh,
            restore_when_empty,
            hold_restart_at,
        })
    }
}
