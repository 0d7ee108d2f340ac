//! Cluster awareness: who may upload WAL, and the agent that runs beside Patroni.
//!
//! wal-push asks [`Leadership`] before any upload. Without cluster settings every caller is the
//! leader. With them, only the member holding Patroni's leader key uploads, and only while the
//! key's lease certainly lasts; a non-leader may upload a segment of an older timeline only when
//! the archive's history files say it ended at or before that timeline's switch point.

pub mod agent;
pub mod etcd;
pub mod heal;
pub mod local;
pub mod metrics;
pub mod patroni;
pub mod pitr;
pub mod replica;
pub mod standalone;
pub mod supervise;
pub mod target_time;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::archive::Archive;
use crate::config::{ClusterSettings, Settings};
use crate::error::{Error, Result};
use crate::wal::gate::{PushDecision, UploadGate};
use crate::wal::history;
use crate::wal::names::WalName;
pub use etcd::{ClusterView, Etcd, LeaderStatus};

/// An upload must finish this long before the leader key's lease could expire.
pub const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// Who may upload WAL: the cluster layer's answer to wal-push's [`UploadGate`].
#[derive(Debug, Clone, Default)]
pub enum Leadership {
    /// Every caller is the leader: a single server, or archiving without a cluster.
    #[default]
    AlwaysLeader,
    /// A member of a Patroni cluster: ask the local agent, or etcd.
    Cluster(Arc<ClusterCheck>),
}

/// Where a cluster member learns who leads.
#[derive(Debug)]
pub enum Source {
    /// The local agent's `/leadership`; etcd directly when no agent answers.
    Agent(reqwest::Client),
    /// etcd through an open connection (inside the agent).
    Etcd(Box<Etcd>),
}

#[derive(Debug)]
pub struct ClusterCheck {
    pub settings: ClusterSettings,
    source: Source,
    /// The agent's API token, which the agent must prove it knows (asking the agent only).
    token: Option<crate::security::TokenSource>,
    /// One answer per process: (when it was asked, the answer).
    asked: tokio::sync::OnceCell<(Instant, LeaderStatus)>,
}

impl Leadership {
    /// The check the settings call for. `state_dir` is where the local agent keeps its API token
    /// when none is configured.
    pub fn from_settings(settings: &Settings, state_dir: &std::path::Path) -> Result<Leadership> {
        let Some(c) = &settings.cluster else {
            return Ok(Leadership::AlwaysLeader);
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Cluster(format!("HTTP client: {e}")))?;
        Ok(Leadership::Cluster(Arc::new(ClusterCheck {
            settings: c.clone(),
            source: Source::Agent(http),
            token: Some(
                settings
                    .vars
                    .api_token_source(settings.agent_file.api_token_file.as_deref(), state_dir),
            ),
            asked: Default::default(),
        })))
    }

    /// The check the agent uses for its own uploads (gap healing, `/wal-push`).
    pub fn with_etcd(settings: ClusterSettings, etcd: Etcd) -> Leadership {
        Leadership::Cluster(Arc::new(ClusterCheck {
            settings,
            source: Source::Etcd(Box::new(etcd)),
            token: None,
            asked: Default::default(),
        }))
    }

    /// May this member upload `name`? `seg_size` is the local file's size (a full segment).
    pub async fn decide(
        &self,
        name: &WalName,
        seg_size: u64,
        archive: &Archive,
    ) -> Result<PushDecision> {
        match self {
            Leadership::AlwaysLeader => Ok(PushDecision::Upload { deadline: None }),
            Leadership::Cluster(c) => c.decide(name, seg_size, archive).await,
        }
    }
}

impl UploadGate for Leadership {
    fn decide<'a>(
        &'a self,
        name: &'a WalName,
        seg_size: u64,
        archive: &'a Archive,
    ) -> futures::future::BoxFuture<'a, Result<PushDecision>> {
        Box::pin(Leadership::decide(self, name, seg_size, archive))
    }
}

impl ClusterCheck {
    async fn ask(&self) -> Result<(Instant, LeaderStatus)> {
        let asked = Instant::now();
        let status = match &self.source {
            Source::Etcd(etcd) => etcd.leader_status().await?,
            Source::Agent(http) => {
                let url = format!("{}/leadership", self.settings.agent_url);
                let nonce = crate::security::random_hex()?;
                match http.get(&url).query(&[("nonce", &nonce)]).send().await {
                    Ok(resp) if resp.status().is_success() => {
                        self.verified_answer(&url, &nonce, resp).await?
                    }
                    Ok(resp) => {
                        let code = resp.status();
                        let body = resp.text().await.unwrap_or_default();
                        return Err(Error::Cluster(format!(
                            "agent {url} answered {code}: {}",
                            body.trim()
                        )));
                    }
                    Err(e) if e.is_connect() => {
                        tracing::debug!(error = %e, "no agent at {url}; asking etcd");
                        Etcd::connect(&self.settings).await?.leader_status().await?
                    }
                    Err(e) => return Err(Error::Cluster(format!("agent {url}: {e}"))),
                }
            }
        };
        if status.member != self.settings.name {
            return Err(Error::Cluster(format!(
                "the agent speaks for member {:?}, but this is {:?}",
                status.member, self.settings.name
            )));
        }
        Ok((asked, status))
    }

    /// The agent's answer, once it proved that it knows the API token: any local process could
    /// take the agent's port first and tell a replica that it leads.
    async fn verified_answer(
        &self,
        url: &str,
        nonce: &str,
        resp: reqwest::Response,
    ) -> Result<LeaderStatus> {
        let proof = resp
            .headers()
            .get(crate::security::PROOF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::Cluster(format!("agent {url}: {e}")))?;
        // Read after the answer: an agent that just made its token has written it by now.
        let token = match &self.token {
            Some(source) => source.read()?,
            None => None,
        };
        let trusted = match (&token, &proof) {
            (Some(t), Some(p)) => crate::security::verify_leadership_proof(t, nonce, &body, p),
            _ => false,
        };
        if !trusted {
            return Err(Error::Cluster(format!(
                "the process answering at {url} did not prove that it knows the agent's API token \
                 ({}); not trusting its answer",
                match (&token, &proof) {
                    (None, _) => "no token to check against: set WALKEEPER_API_TOKEN or let the agent write api-token in the state directory",
                    (_, None) => "no proof in the answer",
                    _ => "wrong proof",
                }
            )));
        }
        serde_json::from_slice::<LeaderStatus>(&body)
            .map_err(|e| Error::Cluster(format!("agent {url}: unusable answer: {e}")))
    }

    /// Who leads, asked once per process.
    pub async fn status(&self) -> Result<(Instant, LeaderStatus)> {
        self.asked.get_or_try_init(|| self.ask()).await.cloned()
    }

    async fn decide(
        &self,
        name: &WalName,
        seg_size: u64,
        archive: &Archive,
    ) -> Result<PushDecision> {
        let me = &self.settings.name;
        let (asked, status) = self.status().await.map_err(|e| {
            Error::NotLeader(format!(
                "{name}: cannot tell whether {me} holds the leader key ({e}); not uploading"
            ))
        })?;
        let valid = Duration::from_millis(status.valid_for_ms);
        if status.is_leader && valid > LEASE_MARGIN {
            return Ok(PushDecision::Upload {
                deadline: Some(asked + valid - LEASE_MARGIN),
            });
        }
        // Not the leader: only a segment the archive's history says is the cluster's past.
        if let WalName::Segment(seg) = name {
            let seg_size = crate::wal::names::WalSegSize::new(seg_size)
                .map_err(|e| Error::BadInput(format!("{name}: {e}")))?;
            let end = seg.start_lsn(seg_size) + seg_size.get();
            if let Some(switch) = history::archived_end_of(archive, seg.timeline).await? {
                if end <= switch {
                    tracing::info!(
                        segment = %name,
                        switch_point = %crate::wal::Lsn(switch),
                        "not the leader, but the segment ends before its timeline's switch point: uploading it as history"
                    );
                    return Ok(PushDecision::Upload { deadline: None });
                }
            }
        }
        let reason = match (&status.leader, status.is_leader) {
            (_, true) => format!(
                "{me} holds the leader key but its lease may end within {} ms",
                status.valid_for_ms
            ),
            (Some(l), false) => format!("{l} holds the leader key, not {me}"),
            (None, false) => "no member holds the leader key".to_string(),
        };
        Ok(PushDecision::VerifyOnly { reason })
    }
}
