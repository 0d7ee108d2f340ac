//! Settings: environment variables (WAL-E, WAL-G and AWS names), an optional envdir, and an
//! optional YAML file.
//!
//! Precedence, highest first: the process environment overlaid by `--envdir` (daemontools
//! semantics: a file replaces the variable), then the YAML file, then defaults. Secrets are never
//! taken from argv.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::security::{TokenSource, TOKEN_FILE_NAME};

/// Variables naming the archive prefix, in the order they are consulted.
pub const PREFIX_VARS: &[&str] = &[
    "WALKEEPER_PREFIX",
    "WALG_FILE_PREFIX",
    "WALE_FILE_PREFIX",
    "WALG_S3_PREFIX",
    "WALE_S3_PREFIX",
    "WALG_GS_PREFIX",
    "WALE_GS_PREFIX",
    "WALG_AZ_PREFIX",
    "WALE_WABS_PREFIX",
    "WALG_SWIFT_PREFIX",
    "WALE_SWIFT_PREFIX",
];

/// The YAML file's schema. Unknown keys are an error, so a typo never silently falls back to a
/// default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub prefix: Option<String>,
    pub compression: Option<String>,
    pub push_lookahead: Option<usize>,
    pub prefetch: Option<usize>,
    pub state_dir: Option<PathBuf>,
    pub retry_timeout_seconds: Option<u64>,
    pub age_recipient: Option<String>,
    pub age_recipients_file: Option<PathBuf>,
    pub age_identity_file: Option<PathBuf>,
    /// Extra variables (e.g. `AWS_ENDPOINT`), used where the environment does not set them.
    #[serde(default)]
    pub env: Vars,
    /// The Patroni cluster this member belongs to (turns on leader-only uploads).
    #[serde(default)]
    pub cluster: ClusterFile,
    /// The `walkeeper agent` daemon.
    #[serde(default)]
    pub agent: AgentFile,
    /// S3 uploads: server-side encryption and storage class (fill WALG_S3_* when unset).
    #[serde(default)]
    pub s3: S3File,
}

/// `s3:` in the YAML file: `sse` (WALG_S3_SSE), `sse_kms_id` (WALG_S3_SSE_KMS_ID),
/// `storage_class` (WALG_S3_STORAGE_CLASS).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3File {
    pub sse: Option<String>,
    pub sse_kms_id: Option<String>,
    pub storage_class: Option<String>,
}

/// `cluster:` in the YAML file. Each key has an environment variable that overrides it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub scope: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub etcd_hosts: Option<Vec<String>>,
    /// Where wal-push finds the local agent (default: `http://` + the agent's listen address).
    pub agent_url: Option<String>,
    /// `http` or `https`: the scheme of etcd hosts given without one (Patroni's `protocol`).
    pub etcd_protocol: Option<String>,
    /// CA certificate (PEM) that etcd's server certificate must chain to.
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) presented to etcd.
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub etcd_key: Option<PathBuf>,
}

/// `agent:` in the YAML file. Each key has an environment variable that overrides it.
#[derive(Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub pgdata: Option<PathBuf>,
    pub connstring: Option<String>,
    pub pg_bin_dir: Option<PathBuf>,
    pub patroni_url: Option<String>,
    pub listen: Option<String>,
    pub api_token_file: Option<PathBuf>,
    pub backup_schedule: Option<String>,
    pub retain: Option<usize>,
    pub retain_min_age: Option<String>,
    pub backup_list_refresh: Option<String>,
    pub restore_when_empty: Option<bool>,
}

/// Shows the connection string without its password.
impl std::fmt::Debug for AgentFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentFile")
            .field("pgdata", &self.pgdata)
            .field(
                "connstring",
                &crate::security::ScrubbedConnstring(self.connstring.as_deref()),
            )
            .field("pg_bin_dir", &self.pg_bin_dir)
            .field("patroni_url", &self.patroni_url)
            .field("listen", &self.listen)
            .field("api_token_file", &self.api_token_file)
            .field("backup_schedule", &self.backup_schedule)
            .field("retain", &self.retain)
            .field("retain_min_age", &self.retain_min_age)
            .field("backup_list_refresh", &self.backup_list_refresh)
            .field("restore_when_empty", &self.restore_when_empty)
            .finish()
    }
}

/// Resolved variables: file `env:` entries, then the process environment, then the envdir.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Vars(BTreeMap<String, String>);

/// Names every variable but shows no value of one that may hold a secret.
impl std::fmt::Debug for Vars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if crate::security::holds_secret(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

impl Vars {
    /// The source the settings name: the variables, else the YAML file's `agent.api_token_file`,
    /// else `<state_dir>/api-token`.
    pub fn api_token_source(&self, yaml_file: Option<&Path>, state_dir: &Path) -> TokenSource {
        if let Some(t) = self.get("WALKEEPER_API_TOKEN") {
            return TokenSource::Value(t.trim().to_string());
        }
        match self
            .get("WALKEEPER_API_TOKEN_FILE")
            .map(PathBuf::from)
            .or_else(|| yaml_file.map(Path::to_path_buf))
        {
            Some(p) => TokenSource::File(p),
            None => TokenSource::StateDir(state_dir.join(TOKEN_FILE_NAME)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), value.into());
    }

    pub fn remove(&mut self, key: &str) {
        self.0.remove(key);
    }

    /// A boolean as WAL-G reads one (`true`/`false`, `1`/`0`, also `yes`/`no`, `on`/`off`).
    fn parse_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" | "t" => Ok(Some(true)),
                "false" | "0" | "no" | "off" | "f" => Ok(Some(false)),
                _ => Err(Error::Config(format!("{key}={v:?} is not true or false"))),
            },
        }
    }

    fn parse_num<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Error::Config(format!("{key}={v:?} is not a valid number"))),
        }
    }
}

/// Everything the commands need, resolved once per process.
#[derive(Debug, Clone)]
pub struct Settings {
    pub vars: Vars,
    /// The archive prefix URL, if one is configured.
    pub prefix: Option<String>,
    pub compression: Compression,
    /// How many other `.ready` segments one wal-push call uploads as well.
    pub push_lookahead: usize,
    /// How many following segments wal-fetch downloads in the background after a hit.
    pub prefetch: usize,
    pub state_dir: Option<PathBuf>,
    /// Bound on retrying transient storage errors.
    pub retry_timeout: Duration,
    /// age recipients (public keys); when set, uploads are encrypted.
    pub age_recipients: Vec<String>,
    /// age identity file (private key); needed to read encrypted objects.
    pub age_identity_file: Option<PathBuf>,
    /// Set when this member belongs to a Patroni cluster: uploads are then leader-only.
    pub cluster: Option<ClusterSettings>,
    /// The YAML file's `agent:` section, resolved against the environment by the agent.
    pub agent_file: AgentFile,
    pub backup: BackupSettings,
}

/// How base backups are taken (WAL-G's names), parsed strictly: a value that does not parse is
/// an error, never a silent default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSettings {
    /// `WALG_TAR_SIZE_THRESHOLD`: uncompressed bytes per tar partition (default 1 GiB).
    pub tar_size_threshold: u64,
    /// `WALG_UPLOAD_CONCURRENCY`: partitions compressed and uploaded at once.
    pub upload_concurrency: Option<usize>,
    /// `WALG_DISK_RATE_LIMIT` and `WALG_NETWORK_RATE_LIMIT`, bytes per second: the lowest.
    pub read_rate_limit: Option<u64>,
    /// `WALG_VERIFY_PAGE_CHECKSUMS`; unset: verify when the cluster has data checksums.
    pub verify_page_checksums: Option<bool>,
    /// `WALG_STORE_ALL_CORRUPT_BLOCKS`: list every corrupt block, not only the first ten.
    pub store_all_corrupt_blocks: bool,
    /// `WALG_DELTA_MAX_STEPS`: how many delta backups may follow a full one (0: none).
    pub delta_max_steps: u32,
    /// `WALG_DELTA_ORIGIN`: which backup a delta is taken from.
    pub delta_origin: DeltaOrigin,
}

/// WAL-G's `WALG_DELTA_ORIGIN`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeltaOrigin {
    /// `LATEST` (the default): the newest backup, delta or full.
    #[default]
    Latest,
    /// `LATEST_FULL`: the full backup the newest backup's chain starts from.
    LatestFull,
}

impl BackupSettings {
    fn resolve(vars: &Vars) -> Result<Self> {
        let mut limits = Vec::new();
        for var in ["WALG_DISK_RATE_LIMIT", "WALG_NETWORK_RATE_LIMIT"] {
            if let Some(v) = vars.get(var) {
                let n: u64 = v.trim().parse().map_err(|_| {
                    Error::Config(format!("{var}={v:?} is not a number of bytes per second"))
                })?;
                limits.push(n);
            }
        }
        let tar_size_threshold = vars
            .parse_num::<u64>("WALG_TAR_SIZE_THRESHOLD")?
            .unwrap_or(1 << 30);
        if tar_size_threshold == 0 {
            return Err(Error::Config(
                "WALG_TAR_SIZE_THRESHOLD=0: a partition must hold at least one byte".into(),
            ));
        }
        Ok(BackupSettings {
            tar_size_threshold,
            upload_concurrency: vars.parse_num("WALG_UPLOAD_CONCURRENCY")?,
            read_rate_limit: limits.into_iter().filter(|n| *n > 0).min(),
            verify_page_checksums: vars.parse_bool("WALG_VERIFY_PAGE_CHECKSUMS")?,
            store_all_corrupt_blocks: vars
                .parse_bool("WALG_STORE_ALL_CORRUPT_BLOCKS")?
                .unwrap_or(false),
            delta_max_steps: vars.parse_num("WALG_DELTA_MAX_STEPS")?.unwrap_or(0),
            delta_origin: match vars.get("WALG_DELTA_ORIGIN").map(str::trim) {
                None | Some("") | Some("LATEST") => DeltaOrigin::Latest,
                Some("LATEST_FULL") => DeltaOrigin::LatestFull,
                Some(v) => {
                    return Err(Error::Config(format!(
                        "WALG_DELTA_ORIGIN={v:?}: expected LATEST or LATEST_FULL"
                    )))
                }
            },
        })
    }
}

/// Default address of the agent's HTTP API.
pub const DEFAULT_AGENT_LISTEN: &str = "127.0.0.1:8432";

/// Who this member is and where the cluster's etcd is.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub scope: String,
    pub name: String,
    /// Patroni's namespace, normalised to `/<ns>` without a trailing slash.
    pub namespace: String,
    /// etcd endpoints, each `http://host:port`.
    pub etcd_hosts: Vec<String>,
    pub etcd_user: Option<(String, String)>,
    /// TLS towards etcd (for `https://` hosts).
    pub etcd_tls: EtcdTls,
    /// The local agent's base URL.
    pub agent_url: String,
}

/// TLS settings for etcd: the CA that etcd's certificate must chain to (else the system's
/// roots), and the client certificate and key etcd's `--client-cert-auth` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("scope", &self.scope)
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("etcd_hosts", &self.etcd_hosts)
            .field(
                "etcd_user",
                &self.etcd_user.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .field("etcd_tls", &self.etcd_tls)
            .field("agent_url", &self.agent_url)
            .finish()
    }
}

impl ClusterSettings {
    /// The cluster's key prefix: `/<namespace>/<scope>/`.
    pub fn prefix(&self) -> String {
        format!("{}/{}/", self.namespace, self.scope)
    }
}

/// Splits an etcd host list as Patroni writes it (`'h1:2379','h2:2379'`, or a YAML list) into
/// URLs (`http://` for hosts without a scheme).
pub fn parse_etcd_hosts<S: AsRef<str>>(items: &[S]) -> Vec<String> {
    parse_etcd_hosts_with(items, "http")
}

/// [`parse_etcd_hosts`] with `scheme` for hosts given without one.
pub fn parse_etcd_hosts_with<S: AsRef<str>>(items: &[S], scheme: &str) -> Vec<String> {
    items
        .iter()
        .flat_map(|i| {
            i.as_ref()
                .split(',')
                .map(|h| {
                    h.trim()
                        .trim_matches(|c| c == '\'' || c == '"')
                        .trim()
                        .to_string()
                })
                .collect::<Vec<_>>()
        })
        .filter(|h| !h.is_empty())
        .map(|h| {
            if h.starts_with("http://") || h.starts_with("https://") {
                h
            } else {
                format!("{scheme}://{h}")
            }
        })
        .collect()
}

fn resolve_cluster(
    vars: &Vars,
    file: &ClusterFile,
    agent: &AgentFile,
) -> Result<Option<ClusterSettings>> {
    let pick = |own: &str, patroni: &str, f: &Option<String>| -> Option<String> {
        vars.get(own)
            .map(String::from)
            .or_else(|| f.clone())
            .or_else(|| vars.get(patroni).map(String::from))
    };
    let hosts_text = vars
        .get("WALKEEPER_ETCD_HOSTS")
        .map(|h| vec![h.to_string()])
        .or_else(|| file.etcd_hosts.clone())
        .or_else(|| vars.get("PATRONI_ETCD3_HOSTS").map(|h| vec![h.to_string()]))
        .or_else(|| vars.get("PATRONI_ETCD3_HOST").map(|h| vec![h.to_string()]));
    let own_keys = ["WALKEEPER_ETCD_HOSTS", "WALKEEPER_SCOPE", "WALKEEPER_NAME"];
    let asked = own_keys.iter().any(|k| vars.get(k).is_some())
        || file.scope.is_some()
        || file.name.is_some()
        || file.etcd_hosts.is_some()
        || hosts_text.is_some();
    if !asked {
        return Ok(None);
    }
    let scope = pick("WALKEEPER_SCOPE", "PATRONI_SCOPE", &file.scope);
    let name = pick("WALKEEPER_NAME", "PATRONI_NAME", &file.name);
    let protocol = pick(
        "WALKEEPER_ETCD_PROTOCOL",
        "PATRONI_ETCD3_PROTOCOL",
        &file.etcd_protocol,
    )
    .unwrap_or_else(|| "http".into())
    .trim()
    .to_ascii_lowercase();
    if protocol != "http" && protocol != "https" {
        return Err(Error::Config(format!(
            "etcd protocol {protocol:?} (WALKEEPER_ETCD_PROTOCOL, PATRONI_ETCD3_PROTOCOL or \
             cluster.etcd_protocol) is neither http nor https"
        )));
    }
    let etcd_hosts = parse_etcd_hosts_with(&hosts_text.unwrap_or_default(), &protocol);
    let path = |own: &str, patroni: &str, f: &Option<PathBuf>| -> Option<PathBuf> {
        vars.get(own)
            .map(PathBuf::from)
            .or_else(|| f.clone())
            .or_else(|| vars.get(patroni).map(PathBuf::from))
    };
    let etcd_tls = EtcdTls {
        ca: path(
            "WALKEEPER_ETCD_CACERT",
            "PATRONI_ETCD3_CACERT",
            &file.etcd_cacert,
        ),
        cert: path("WALKEEPER_ETCD_CERT", "PATRONI_ETCD3_CERT", &file.etcd_cert),
        key: path("WALKEEPER_ETCD_KEY", "PATRONI_ETCD3_KEY", &file.etcd_key),
    };
    if etcd_tls.cert.is_some() != etcd_tls.key.is_some() {
        return Err(Error::Config(
            "an etcd client certificate needs both WALKEEPER_ETCD_CERT and WALKEEPER_ETCD_KEY \
             (PATRONI_ETCD3_CERT and PATRONI_ETCD3_KEY, or cluster.etcd_cert and cluster.etcd_key)"
                .into(),
        ));
    }
    if vars.get("PATRONI_ETCD3_KEY_PASSWORD").is_some() {
        return Err(Error::Config(
            "PATRONI_ETCD3_KEY_PASSWORD is set: walkeeper reads only unencrypted client keys; \
             give it an unencrypted key file (mode 0600) in WALKEEPER_ETCD_KEY"
                .into(),
        ));
    }
    let mut missing = Vec::new();
    if scope.is_none() {
        missing.push("the scope (WALKEEPER_SCOPE, PATRONI_SCOPE or cluster.scope)");
    }
    if name.is_none() {
        missing.push("the member name (WALKEEPER_NAME, PATRONI_NAME or cluster.name)");
    }
    if etcd_hosts.is_empty() {
        missing.push(
            "the etcd hosts (WALKEEPER_ETCD_HOSTS, PATRONI_ETCD3_HOSTS or cluster.etcd_hosts)",
        );
    }
    if !missing.is_empty() {
        return Err(Error::Config(format!(
            "cluster settings are incomplete: missing {}",
            missing.join(", ")
        )));
    }
    let namespace = pick("WALKEEPER_NAMESPACE", "PATRONI_NAMESPACE", &file.namespace)
        .unwrap_or_else(|| "/service".into());
    let namespace = format!("/{}", namespace.trim_matches('/'));
    let etcd_user =
        match (
            vars.get("WALKEEPER_ETCD_USERNAME")
                .or(vars.get("PATRONI_ETCD3_USERNAME")),
            vars.get("WALKEEPER_ETCD_PASSWORD")
                .or(vars.get("PATRONI_ETCD3_PASSWORD")),
        ) {
            (Some(u), Some(p)) => Some((u.to_string(), p.to_string())),
            (None, None) => None,
            _ => return Err(Error::Config(
                "etcd credentials need both WALKEEPER_ETCD_USERNAME and WALKEEPER_ETCD_PASSWORD"
                    .into(),
            )),
        };
    let agent_url = vars
        .get("WALKEEPER_AGENT_URL")
        .map(String::from)
        .or_else(|| file.agent_url.clone())
        .unwrap_or_else(|| {
            let listen = vars
                .get("WALKEEPER_API_LISTEN")
                .map(String::from)
                .or_else(|| agent.listen.clone())
                .unwrap_or_else(|| DEFAULT_AGENT_LISTEN.into());
            format!("http://{}", listen.replace("0.0.0.0", "127.0.0.1"))
        });
    Ok(Some(ClusterSettings {
        scope: scope.unwrap_or_default(),
        name: name.unwrap_or_default(),
        namespace,
        etcd_hosts,
        etcd_user,
        etcd_tls,
        agent_url: agent_url.trim_end_matches('/').to_string(),
    }))
}

impl Settings {
    /// Loads settings from the process environment, an optional envdir and an optional YAML file
    /// (`--config`, else `WALKEEPER_CONFIG`).
    pub fn load(config_file: Option<&Path>, envdir: Option<&Path>) -> Result<Self> {
        Self::load_with(config_file, envdir, &[])
    }

    /// Like [`Settings::load`], with variables the command line sets (`Some`) or unsets
    /// (`None`) on top of every other source: WAL-E's `--s3-prefix`, `-k`, ….
    pub fn load_with(
        config_file: Option<&Path>,
        envdir: Option<&Path>,
        argv: &[(String, Option<String>)],
    ) -> Result<Self> {
        let process: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self::from_sources_with(process, config_file, envdir, argv)
    }

    pub fn from_sources(
        process: BTreeMap<String, String>,
        config_file: Option<&Path>,
        envdir: Option<&Path>,
    ) -> Result<Self> {
        Self::from_sources_with(process, config_file, envdir, &[])
    }

    pub fn from_sources_with(
        process: BTreeMap<String, String>,
        config_file: Option<&Path>,
        envdir: Option<&Path>,
        argv: &[(String, Option<String>)],
    ) -> Result<Self> {
        let mut overlay = process;
        if let Some(dir) = envdir {
            for (k, v) in read_envdir(dir)? {
                overlay.insert(k, v);
            }
        }
        let file_path = config_file
            .map(Path::to_path_buf)
            .or_else(|| overlay.get("WALKEEPER_CONFIG").map(PathBuf::from))
            .or_else(|| walg_home_config(overlay.get("HOME").map(Path::new)));
        let file = match &file_path {
            Some(p) => read_config_file(p)?,
            None => FileConfig::default(),
        };
        let mut vars = file.env.clone();
        for (k, v) in [
            ("WALG_S3_SSE", &file.s3.sse),
            ("WALG_S3_SSE_KMS_ID", &file.s3.sse_kms_id),
            ("WALG_S3_STORAGE_CLASS", &file.s3.storage_class),
        ] {
            if let Some(v) = v {
                vars.0.insert(k.to_string(), v.clone());
            }
        }
        for (k, v) in overlay {
            vars.0.insert(k, v);
        }
        for (k, v) in argv {
            match v {
                Some(v) => vars.set(k.clone(), v.clone()),
                None => vars.remove(k),
            }
        }
        Self::resolve(vars, file)
    }

    fn resolve(vars: Vars, file: FileConfig) -> Result<Self> {
        let prefix = resolve_prefix(&vars, file.prefix.as_deref())?;
        let compression = match vars
            .get("WALG_COMPRESSION_METHOD")
            .or(vars.get("WALKEEPER_COMPRESSION"))
            .or(file.compression.as_deref())
        {
            Some(name) => Compression::from_method(name)?,
            None => Compression::Lz4,
        };
        let push_lookahead = vars
            .parse_num("WALKEEPER_PUSH_LOOKAHEAD")?
            .or(vars.parse_num("WALG_UPLOAD_CONCURRENCY")?)
            .or(vars.parse_num("WALE_POOL_SIZE")?)
            .or(file.push_lookahead)
            .unwrap_or(0);
        let prefetch = vars
            .parse_num("WALKEEPER_PREFETCH")?
            .or(vars.parse_num("WALG_DOWNLOAD_CONCURRENCY")?)
            .or(file.prefetch)
            .unwrap_or(0);
        let retry_secs: u64 = vars
            .parse_num("WALKEEPER_RETRY_TIMEOUT")?
            .or(file.retry_timeout_seconds)
            .unwrap_or(30);
        let state_dir = vars
            .get("WALKEEPER_STATE_DIR")
            .map(PathBuf::from)
            .or(file.state_dir);
        let mut age_recipients: Vec<String> = Vec::new();
        if let Some(r) = vars
            .get("WALKEEPER_AGE_RECIPIENT")
            .or(file.age_recipient.as_deref())
        {
            age_recipients.extend(
                r.split([',', ' ', '\n'])
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
        if let Some(p) = vars
            .get("WALKEEPER_AGE_RECIPIENTS_FILE")
            .map(PathBuf::from)
            .or(file.age_recipients_file)
        {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| Error::Config(format!("age recipients file {}: {e}", p.display())))?;
            age_recipients.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        let age_identity_file = vars
            .get("WALKEEPER_AGE_IDENTITY_FILE")
            .map(PathBuf::from)
            .or(file.age_identity_file);
        let cluster = resolve_cluster(&vars, &file.cluster, &file.agent)?;
        let backup = BackupSettings::resolve(&vars)?;
        Ok(Settings {
            vars,
            prefix,
            compression,
            push_lookahead,
            prefetch,
            state_dir,
            retry_timeout: Duration::from_secs(retry_secs),
            age_recipients,
            age_identity_file,
            cluster,
            agent_file: file.agent,
            backup,
        })
    }

    /// The prefix, or an error saying which variables could set it.
    pub fn require_prefix(&self) -> Result<&str> {
        self.prefix.as_deref().ok_or_else(|| {
            Error::Config(format!(
                "no archive prefix configured: set one of {} or `prefix:` in the config file",
                PREFIX_VARS.join(", ")
            ))
        })
    }
}

fn resolve_prefix(vars: &Vars, file_prefix: Option<&str>) -> Result<Option<String>> {
    let mut found: Option<(&str, &str)> = None;
    for name in PREFIX_VARS {
        if let Some(v) = vars.get(name) {
            match found {
                Some((first, fv)) if fv != v => {
                    return Err(Error::Config(format!(
                        "{first} and {name} name different archive prefixes; set only one"
                    )))
                }
                Some(_) => {}
                None => found = Some((name, v)),
            }
        }
    }
    Ok(found
        .map(|(_, v)| v.to_string())
        .or_else(|| file_prefix.map(String::from)))
}

/// Reads a daemontools-style envdir: one file per variable, its first line the value.
pub fn read_envdir(dir: &Path) -> Result<BTreeMap<String, String>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Config(format!("envdir {}: {e}", dir.display())))?;
    let mut out = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::Config(format!("envdir {}: {e}", dir.display())))?;
        let path = entry.path();
        let name = entry.file_name().into_string().map_err(|n| {
            Error::Config(format!(
                "envdir {}: file name {n:?} is not UTF-8",
                dir.display()
            ))
        })?;
        if name.starts_with('.') {
            continue;
        }
        if name.contains('=') {
            return Err(Error::Config(format!(
                "envdir {}: file name {name:?} contains '='",
                dir.display()
            )));
        }
        let meta = std::fs::metadata(&path)
            .map_err(|e| Error::Config(format!("envdir {}: {e}", path.display())))?;
        if !meta.is_file() {
            continue;
        }
        if crate::security::holds_secret(&name) {
            // WAL-E's documented envdir is root:postgres with mode 0640: allowed, as libpq
            // allows a root-owned key shared through a group.
            crate::security::check_private_key(&path, &format!("envdir file for {name}"))?;
        }
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::Config(format!("envdir {}: {e}", path.display())))?;
        // daemontools: the first line is the value; trailing blanks are dropped.
        let first = bytes.split(|b| *b == b'\n').next().unwrap_or(&[]);
        if first.contains(&0) {
            return Err(Error::Config(format!(
                "envdir {}: the value contains a NUL byte",
                path.display()
            )));
        }
        let value = std::str::from_utf8(first).map_err(|_| {
            Error::Config(format!("envdir {}: the value is not UTF-8", path.display()))
        })?;
        out.insert(name, value.trim_end().to_string());
    }
    Ok(out)
}

/// WAL-G's default configuration file, `~/.walg.json` (or `.walg.yaml`, `.walg.yml`), when no
/// other is named and it exists.
fn walg_home_config(home: Option<&Path>) -> Option<PathBuf> {
    let home = home?;
    [".walg.json", ".walg.yaml", ".walg.yml"]
        .iter()
        .map(|n| home.join(n))
        .find(|p| p.is_file())
}

/// Is this a WAL-G configuration file: a flat map of variable names (`WALG_S3_PREFIX`,
/// `AWS_REGION`, `PGHOST`, …) to values?
fn as_walg_config(text: &str) -> Option<BTreeMap<String, String>> {
    let map: BTreeMap<String, serde_json::Value> = serde_saphyr::from_str(text).ok()?;
    let is_var = |k: &str| {
        k.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && k.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    };
    if map.is_empty() || !map.keys().all(|k| is_var(k)) {
        return None;
    }
    map.into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((k, v))
        })
        .collect()
}

fn read_config_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("config file {}: {e}", path.display())))?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    // WAL-G's file (JSON or YAML, WALG_* and other variable names): its keys are variables,
    // used where the environment does not set them, like walkeeper's `env:`.
    if let Some(env) = as_walg_config(&text) {
        return Ok(FileConfig {
            env: Vars(env),
            ..Default::default()
        });
    }
    serde_saphyr::from_str(&text).map_err(|e| {
        let msg = e.to_string().replace('\n', " ");
        Error::Config(format!("config file {}: {msg}", path.display()))
    })
}

/// The codecs walkeeper knows (the codec layer implements them). It writes lz4 and zstd; it reads all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Lz4,
    Zstd,
    Brotli,
    Lzma,
    /// WAL-E's lzop container.
    Lzo,
}

impl Compression {
    /// All extensions, in the order wal-fetch probes them after the configured one.
    pub const ALL: [Compression; 5] = [
        Compression::Lz4,
        Compression::Zstd,
        Compression::Lzo,
        Compression::Brotli,
        Compression::Lzma,
    ];

    pub fn ext(self) -> &'static str {
        match self {
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zst",
            Compression::Brotli => "br",
            Compression::Lzma => "lzma",
            Compression::Lzo => "lzo",
        }
    }

    pub fn from_ext(ext: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.ext() == ext)
    }

    /// Parses WALG_COMPRESSION_METHOD. Only the codecs walkeeper can write are accepted.
    pub fn from_method(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "lz4" => Ok(Compression::Lz4),
            "zstd" | "zst" => Ok(Compression::Zstd),
            other => Err(Error::Config(format!(
                "compression method {other:?} is not supported for writing (use lz4 or zstd)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn wal_g_and_wal_e_names_both_set_the_prefix() {
        let s =
            Settings::from_sources(vars(&[("WALE_S3_PREFIX", "s3://b/p")]), None, None).unwrap();
        assert_eq!(s.prefix.as_deref(), Some("s3://b/p"));
        let s = Settings::from_sources(vars(&[("WALG_FILE_PREFIX", "/x")]), None, None).unwrap();
        assert_eq!(s.prefix.as_deref(), Some("/x"));
    }

    #[test]
    fn conflicting_prefixes_are_refused() {
        let err = Settings::from_sources(
            vars(&[
                ("WALE_S3_PREFIX", "s3://a/p"),
                ("WALG_S3_PREFIX", "s3://b/p"),
            ]),
            None,
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("different archive prefixes"),
            "{err}"
        );
    }

    #[test]
    fn envdir_overrides_environment_and_yaml_fills_gaps() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("WALG_COMPRESSION_METHOD"), "zstd\n").unwrap();
        let cfg = dir.path().join("c.yaml");
        std::fs::write(
            &cfg,
            "prefix: file:///srv/archive\nprefetch: 5\nenv:\n  AWS_REGION: eu-west-1\n",
        )
        .unwrap();
        let envd = dir.path().join("env");
        std::fs::create_dir(&envd).unwrap();
        std::fs::write(envd.join("WALG_COMPRESSION_METHOD"), "zstd\n").unwrap();
        let s = Settings::from_sources(
            vars(&[("WALG_COMPRESSION_METHOD", "lz4")]),
            Some(&cfg),
            Some(&envd),
        )
        .unwrap();
        assert_eq!(s.compression, Compression::Zstd);
        assert_eq!(s.prefix.as_deref(), Some("file:///srv/archive"));
        assert_eq!(s.prefetch, 5);
        assert_eq!(s.vars.get("AWS_REGION"), Some("eu-west-1"));
    }

    #[test]
    fn malformed_yaml_and_unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.yaml");
        std::fs::write(&cfg, "prefix: [unclosed\n").unwrap();
        assert!(Settings::from_sources(BTreeMap::new(), Some(&cfg), None).is_err());
        std::fs::write(&cfg, "prefx: /x\n").unwrap();
        let err = Settings::from_sources(BTreeMap::new(), Some(&cfg), None).unwrap_err();
        assert!(err.to_string().contains("prefx"), "{err}");
    }

    #[test]
    fn cluster_mode_needs_scope_name_and_etcd_hosts() {
        let s = Settings::from_sources(vars(&[("WALG_FILE_PREFIX", "/x")]), None, None).unwrap();
        assert!(s.cluster.is_none());
        let err = Settings::from_sources(vars(&[("WALKEEPER_SCOPE", "demo")]), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("member name") && err.contains("etcd hosts"),
            "{err}"
        );
        let s = Settings::from_sources(
            vars(&[
                ("PATRONI_SCOPE", "demo"),
                ("PATRONI_NAME", "pg1"),
                ("PATRONI_ETCD3_HOSTS", "'10.0.0.1:2379','10.0.0.2:2379'"),
                ("PATRONI_NAMESPACE", "/db/"),
            ]),
            None,
            None,
        )
        .unwrap();
        let c = s.cluster.unwrap();
        assert_eq!(c.prefix(), "/db/demo/");
        assert_eq!(
            c.etcd_hosts,
            vec!["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(c.agent_url, "http://127.0.0.1:8432");
    }

    #[test]
    fn the_example_config_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/walkeeper.example.yaml");
        let s = Settings::from_sources(BTreeMap::new(), Some(&path), None).unwrap();
        assert_eq!(s.prefix.as_deref(), Some("s3://my-bucket/clusters/demo"));
        let c = s.cluster.unwrap();
        assert_eq!((c.scope.as_str(), c.name.as_str()), ("demo", "pg1"));
        assert_eq!(s.agent_file.retain, Some(7));
    }

    #[test]
    fn wal_g_config_files_in_json_or_yaml_set_variables_under_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("walg.json");
        std::fs::write(
            &json,
            r#"{"WALG_FILE_PREFIX": "/srv/a", "WALG_DOWNLOAD_CONCURRENCY": 3, "AWS_S3_FORCE_PATH_STYLE": true}"#,
        )
        .unwrap();
        let s = Settings::from_sources(BTreeMap::new(), Some(&json), None).unwrap();
        assert_eq!(s.prefix.as_deref(), Some("/srv/a"));
        assert_eq!(s.prefetch, 3);
        assert_eq!(s.vars.get("AWS_S3_FORCE_PATH_STYLE"), Some("true"));
        let yaml = dir.path().join("walg.yaml");
        std::fs::write(
            &yaml,
            "WALG_FILE_PREFIX: /srv/b\nWALG_COMPRESSION_METHOD: zstd\n",
        )
        .unwrap();
        let s =
            Settings::from_sources(vars(&[("WALG_FILE_PREFIX", "/srv/env")]), Some(&yaml), None)
                .unwrap();
        assert_eq!(s.prefix.as_deref(), Some("/srv/env"));
        assert_eq!(s.compression, Compression::Zstd);
        // ~/.walg.json is read when no file is named.
        std::fs::copy(&json, dir.path().join(".walg.json")).unwrap();
        let home = dir.path().display().to_string();
        let s = Settings::from_sources(vars(&[("HOME", &home)]), None, None).unwrap();
        assert_eq!(s.prefix.as_deref(), Some("/srv/a"));
        // walkeeper's own keys still go through the strict schema.
        std::fs::write(&yaml, "prefx: /x\n").unwrap();
        assert!(Settings::from_sources(BTreeMap::new(), Some(&yaml), None).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_config_text_is_read_or_refused_never_a_panic(s in "[ -~\n]{0,200}") {
            let _ = as_walg_config(&s);
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("c");
            std::fs::write(&p, &s).unwrap();
            let _ = read_config_file(&p);
        }
    }

    #[test]
    fn envdir_with_nul_byte_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("AWS_REGION"), b"eu\0west").unwrap();
        let err = Settings::from_sources(BTreeMap::new(), None, Some(dir.path())).unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
    }
}

/// Encryption settings of WAL-E and WAL-G that walkeeper does not implement. Set, they mean the
/// user expects encrypted objects: uploading plaintext, or fetching without decrypting, would
/// silently ignore them.
pub const UNIMPLEMENTED_ENCRYPTION_VARS: [&str; 5] = [
    "WALG_LIBSODIUM_KEY",
    "WALG_LIBSODIUM_KEY_PATH",
    "WALG_ENVELOPE_PGP_KEY",
    "WALG_ENVELOPE_PGP_KEY_PATH",
    "WALG_CSE_KMS_ID",
];

impl Settings {
    /// A configuration error naming the first unimplemented encryption variable that is set
    /// (never its value, which may be a key).
    pub fn refuse_unimplemented_encryption(&self) -> Result<()> {
        match UNIMPLEMENTED_ENCRYPTION_VARS
            .iter()
            .find(|v| self.vars.get(v).is_some())
        {
            Some(v) => Err(Error::Config(format!(
                "{v} is set, but walkeeper does not implement that encryption; refusing rather \
                 than storing or reading plaintext (use WALKEEPER_AGE_RECIPIENT / \
                 WALKEEPER_AGE_IDENTITY_FILE, or unset {v})"
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod encryption_tests {
    use super::*;

    #[test]
    fn every_unimplemented_encryption_variable_is_refused_by_name() {
        for v in UNIMPLEMENTED_ENCRYPTION_VARS {
            let mut process = BTreeMap::new();
            process.insert("WALG_FILE_PREFIX".to_string(), "/tmp/x".to_string());
            process.insert(v.to_string(), "secret-key-material".to_string());
            let s = Settings::from_sources(process, None, None).unwrap();
            let e = s.refuse_unimplemented_encryption().unwrap_err().to_string();
            assert!(e.contains(v), "{e}");
            assert!(!e.contains("secret-key-material"), "{e}");
        }
        let mut process = BTreeMap::new();
        process.insert("WALG_FILE_PREFIX".to_string(), "/tmp/x".to_string());
        process.insert("WALG_LIBSODIUM_KEY".to_string(), String::new());
        process.insert("WALG_PGP_KEY".to_string(), "implemented".to_string());
        let s = Settings::from_sources(process, None, None).unwrap();
        assert!(s.refuse_unimplemented_encryption().is_ok());
    }
}
