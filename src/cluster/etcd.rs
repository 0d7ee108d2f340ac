//! Patroni's keys in etcd (v3 API): the leader key, members, `initialize`, and walkeeper's own
//! backup list keys.
//!
//! Writes that only the leader may make go through a transaction guarded by the leader key's
//! value, so a deposed leader's write fails instead of landing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn,
    TxnOp, WatchOptions,
};
use serde::Serialize;

use crate::config::ClusterSettings;
use crate::error::{Error, Result};

/// The key Patroni's dingo image used for the backup list (WAL-E's backup-list text).
pub const BACKUP_LIST_KEY: &str = "wale-backup-list";
/// walkeeper's JSON backup list, with every field of every backup.
pub const BACKUP_LIST_JSON_KEY: &str = "walkeeper-backup-list";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

fn etcd_err(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> Error {
    let what = what.into();
    move |e| Error::Cluster(format!("etcd {what}: {}", with_causes(&e)))
}

/// An error with its causes: a TLS failure says why ("invalid peer certificate: UnknownIssuer"),
/// not only "transport error".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config(format!("etcd {what} {}: {e}", path.display())))
}

/// TLS options for `https://` hosts: the configured CA (else the system's roots) and the client
/// certificate. Settings for TLS with `http://` hosts are an error, not silently plaintext.
fn tls_options(settings: &ClusterSettings) -> Result<Option<TlsOptions>> {
    let t = &settings.etcd_tls;
    let https = settings
        .etcd_hosts
        .iter()
        .filter(|h| h.starts_with("https://"))
        .count();
    let configured = t.ca.is_some() || t.cert.is_some();
    if https == 0 {
        if configured {
            return Err(Error::Config(format!(
                "etcd TLS files are configured but the etcd hosts ({}) are http://: use https:// \
                 hosts or set WALKEEPER_ETCD_PROTOCOL / PATRONI_ETCD3_PROTOCOL=https",
                settings.etcd_hosts.join(",")
            )));
        }
        return Ok(None);
    }
    if https != settings.etcd_hosts.len() {
        return Err(Error::Config(format!(
            "the etcd hosts mix http:// and https:// ({}); use one scheme",
            settings.etcd_hosts.join(",")
        )));
    }
    let mut tls = TlsOptions::new();
    tls = match &t.ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read_pem(ca, "CA file")?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&t.cert, &t.key) {
        crate::security::check_private_key(key, "etcd client key")?;
        tls = tls.identity(Identity::from_pem(
            read_pem(cert, "client certificate")?,
            read_pem(key, "client key")?,
        ));
    }
    Ok(Some(tls))
}

/// Who holds the leader key, and for how long it certainly stays held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LeaderStatus {
    pub member: String,
    pub leader: Option<String>,
    pub is_leader: bool,
    /// How long the leader key's lease lasts at least, in milliseconds, counted from when the
    /// answer was made.
    pub valid_for_ms: u64,
}

/// What the agent knows of the cluster from its watch.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// etcd revision the view reflects.
    pub revision: i64,
    pub leader: Option<String>,
    pub initialize: Option<String>,
    /// members/<name> values, parsed.
    pub members: BTreeMap<String, serde_json::Value>,
    /// Is the watch connected (false after an error, until the next resync)?
    pub connected: bool,
    /// Patroni's `config` key, parsed (pause state, ttl).
    pub config: Option<serde_json::Value>,
}

impl ClusterView {
    fn apply(&mut self, rel: &str, value: Option<&str>) {
        match (rel, value) {
            ("leader", v) => self.leader = v.map(String::from).filter(|s| !s.is_empty()),
            ("initialize", v) => self.initialize = v.map(String::from),
            ("config", v) => self.config = v.and_then(|t| serde_json::from_str(t).ok()),
            (r, v) => {
                if let Some(name) = r.strip_prefix("members/") {
                    match v.and_then(|t| serde_json::from_str(t).ok()) {
                        Some(j) => {
                            self.members.insert(name.to_string(), j);
                        }
                        None => {
                            self.members.remove(name);
                        }
                    }
                }
            }
        }
    }
}

/// A connection to the cluster's etcd, scoped to `/<namespace>/<scope>/`.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    member: String,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("prefix", &self.prefix)
            .field("member", &self.member)
            .finish()
    }
}

impl Etcd {
    /// Opens a connection (lazily: the first request reports an unreachable etcd).
    pub async fn connect(settings: &ClusterSettings) -> Result<Self> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        if let Some((user, password)) = &settings.etcd_user {
            // etcd's auth token expires (--auth-token-ttl); a request refused with "invalid auth
            // token" authenticates again and is retried once.
            opts = opts
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = tls_options(settings)? {
            opts = opts.with_tls(tls);
        }
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT + REQUEST_TIMEOUT,
            Client::connect(&settings.etcd_hosts, Some(opts)),
        )
        .await
        .map_err(|_| {
            Error::Cluster(format!(
                "etcd {}: connection timed out",
                settings.etcd_hosts.join(",")
            ))
        })?
        .map_err(etcd_err(format!(
            "connect {}",
            settings.etcd_hosts.join(",")
        )))?;
        Ok(Etcd {
            client,
            prefix: settings.prefix(),
            member: settings.name.clone(),
        })
    }

    pub fn member(&self) -> &str {
        &self.member
    }

    /// The full key of a key relative to the cluster prefix.
    pub fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// One key's value, read linearizably.
    pub async fn get(&self, rel: &str) -> Result<Option<String>> {
        let key = self.key(rel);
        let resp = self
            .client
            .clone()
            .get(key.clone(), None)
            .await
            .map_err(etcd_err(format!("get {key}")))?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok().map(String::from)))
    }

    /// Who leads, read linearizably, and how long the leader key's lease certainly lasts.
    pub async fn leader_status(&self) -> Result<LeaderStatus> {
        let asked = Instant::now();
        let key = self.key("leader");
        let mut client = self.client.clone();
        let resp = client
            .get(key.clone(), None)
            .await
            .map_err(etcd_err(format!("get {key}")))?;
        let kv = resp.kvs().first();
        let leader = kv
            .and_then(|kv| kv.value_str().ok())
            .filter(|v| !v.is_empty())
            .map(String::from);
        let is_leader = leader.as_deref() == Some(self.member.as_str());
        let mut valid_for_ms = 0;
        if let (true, Some(kv)) = (is_leader, kv) {
            let lease = kv.lease();
            if lease == 0 {
                // Patroni always attaches the leader key to a lease; without one the key does
                // not expire, so it is held until someone deletes it.
                valid_for_ms = 10_000;
            } else {
                let ttl = client
                    .lease_time_to_live(lease, None)
                    .await
                    .map_err(etcd_err(format!("lease of {key}")))?
                    .ttl();
                // etcd rounds the remaining time up to whole seconds: take one off, and the
                // time this question took.
                let left = Duration::from_secs(ttl.max(0) as u64)
                    .saturating_sub(Duration::from_secs(1))
                    .saturating_sub(asked.elapsed());
                valid_for_ms = left.as_millis() as u64;
            }
        }
        Ok(LeaderStatus {
            member: self.member.clone(),
            leader,
            is_leader,
            valid_for_ms,
        })
    }

    /// Everything under the cluster prefix, as a view, with the revision it was read at.
    pub async fn snapshot(&self) -> Result<ClusterView> {
        let resp = self
            .client
            .clone()
            .get(self.prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_err(format!("get {}*", self.prefix)))?;
        let mut view = ClusterView {
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            connected: true,
            ..Default::default()
        };
        for kv in resp.kvs() {
            if let (Ok(k), Ok(v)) = (kv.key_str(), kv.value_str()) {
                if let Some(rel) = k.strip_prefix(&self.prefix) {
                    view.apply(rel, Some(v));
                }
            }
        }
        Ok(view)
    }

    /// Follows the cluster's keys from `view.revision`, sending each new view. Returns when the
    /// watch breaks (the caller resyncs with a snapshot and watches again).
    pub async fn watch_into(
        &self,
        mut view: ClusterView,
        tx: &tokio::sync::watch::Sender<ClusterView>,
    ) -> Result<()> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(view.revision + 1)
            .with_progress_notify();
        let mut stream = self
            .client
            .clone()
            .watch(self.prefix.clone(), Some(opts))
            .await
            .map_err(etcd_err(format!("watch {}", self.prefix)))?;
        loop {
            let msg = stream
                .message()
                .await
                .map_err(etcd_err(format!("watch {}", self.prefix)))?;
            let Some(resp) = msg else {
                return Err(Error::Cluster("etcd watch: the stream ended".into()));
            };
            if resp.compact_revision() > 0 || resp.canceled() {
                return Err(Error::Cluster(format!(
                    "etcd watch cancelled (compacted at revision {}: {}); resyncing",
                    resp.compact_revision(),
                    resp.cancel_reason()
                )));
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Ok(k) = kv.key_str() else { continue };
                let Some(rel) = k.strip_prefix(&self.prefix) else {
                    continue;
                };
                let value = match ev.event_type() {
                    etcd_client::EventType::Put => kv.value_str().ok(),
                    etcd_client::EventType::Delete => None,
                };
                view.apply(rel, value);
            }
            if let Some(h) = resp.header() {
                view.revision = view.revision.max(h.revision());
            }
            view.connected = true;
            tx.send_replace(view.clone());
        }
    }

    /// Writes `kvs` only while this member holds the leader key. Returns false when it does
    /// not (nothing is written).
    pub async fn put_if_leader(&self, kvs: &[(&str, String)]) -> Result<bool> {
        let leader = self.key("leader");
        let txn = Txn::new()
            .when(vec![Compare::value(
                leader.clone(),
                CompareOp::Equal,
                self.member.clone(),
            )])
            .and_then(
                kvs.iter()
                    .map(|(k, v)| TxnOp::put(self.key(k), v.clone(), None))
                    .collect::<Vec<_>>(),
            );
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(etcd_err(format!("transaction guarded by {leader}")))?;
        Ok(resp.succeeded())
    }

    /// Creates `rel` with `value` unless it exists. Returns whether it was created.
    pub async fn create_if_absent(&self, rel: &str, value: &str) -> Result<bool> {
        let key = self.key(rel);
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(key.clone(), value, None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(etcd_err(format!("create {key}")))?;
        Ok(resp.succeeded())
    }
}
