//! Patroni's REST API: pause and resume (maintenance mode), the member's state, and rebuilding
//! replicas. Patroni's own `POST /restart` refuses recovery targets, so a point-in-time restart
//! is driven from walkeeper through these calls.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Patroni {
    http: reqwest::Client,
    /// Base URL, e.g. `http://127.0.0.1:8008`.
    pub url: String,
    auth: Option<(String, String)>,
}

/// Shows the user name, never the password.
impl std::fmt::Debug for Patroni {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Patroni")
            .field("url", &self.url)
            .field("user", &self.auth.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// `api_url` from a member's etcd value (`http://host:port/patroni`) → its base URL.
pub fn base_url(api_url: &str) -> String {
    api_url
        .trim_end_matches('/')
        .trim_end_matches("/patroni")
        .to_string()
}

impl Patroni {
    pub fn new(url: &str, auth: Option<(String, String)>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Cluster(format!("HTTP client: {e}")))?;
        Ok(Patroni {
            http,
            url: url.trim_end_matches('/').to_string(),
            auth,
        })
    }

    /// The same client, pointed at another member's API (its `api_url` in this cluster's
    /// etcd keys). The credentials go along only over the scheme configured for the local
    /// Patroni: never in clear text to a member that advertises `http://` when `https://` is
    /// configured.
    pub fn at(&self, url: &str) -> Patroni {
        let scheme = |u: &str| u.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        let same_scheme = scheme(url).is_some() && scheme(url) == scheme(&self.url);
        if self.auth.is_some() && !same_scheme {
            tracing::warn!(
                member_api = %url,
                configured = %self.url,
                "not sending Patroni's REST credentials: the member's API does not use the configured scheme"
            );
        }
        Patroni {
            http: self.http.clone(),
            url: url.trim_end_matches('/').to_string(),
            auth: self.auth.clone().filter(|_| same_scheme),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.url));
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    async fn send(&self, what: &str, r: reqwest::RequestBuilder) -> Result<(u16, String)> {
        let resp = r
            .send()
            .await
            .map_err(|e| Error::Cluster(format!("Patroni {} {what}: {e}", self.url)))?;
        let code = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Ok((code, body))
    }

    /// `GET /patroni`: state, role, timeline, pause.
    pub async fn state(&self) -> Result<Value> {
        let (code, body) = self
            .send("GET /patroni", self.req(reqwest::Method::GET, "/patroni"))
            .await?;
        // 503 is how a replica or a stopped member answers; the body is the same JSON.
        serde_json::from_str(&body).map_err(|e| {
            Error::Cluster(format!(
                "Patroni {} GET /patroni answered {code} with unusable JSON: {e}",
                self.url
            ))
        })
    }

    /// Pauses or resumes Patroni (`PATCH /config {"pause": ...}`), then waits until this
    /// member reports the new state.
    pub async fn set_pause(&self, pause: bool, timeout: Duration) -> Result<()> {
        let (code, body) = self
            .send(
                "PATCH /config",
                self.req(reqwest::Method::PATCH, "/config")
                    .json(&json!({ "pause": pause })),
            )
            .await?;
        if !(200..300).contains(&code) {
            return Err(Error::Cluster(format!(
                "Patroni {} PATCH /config pause={pause} answered {code}: {}",
                self.url,
                body.trim()
            )));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let paused = self
                .state()
                .await
                .ok()
                .map(|s| s.get("pause").and_then(Value::as_bool).unwrap_or(false));
            if paused == Some(pause) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Cluster(format!(
                    "Patroni {} did not report pause={pause} within {timeout:?}",
                    self.url
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `POST /reinitialize {"force": true}`: rebuild this replica from the leader's history.
    /// Patroni answers 503 while another action runs; that is retried until `timeout`.
    pub async fn reinitialize(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let (code, body) = self
                .send(
                    "POST /reinitialize",
                    self.req(reqwest::Method::POST, "/reinitialize")
                        .json(&json!({ "force": true })),
                )
                .await?;
            if (200..300).contains(&code) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Cluster(format!(
                    "Patroni {} POST /reinitialize answered {code}: {}",
                    self.url,
                    body.trim()
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_to_another_member_only_over_the_configured_scheme() {
        let p = Patroni::new("https://10.0.0.1:8008", Some(("u".into(), "pw".into()))).unwrap();
        assert!(p.at("https://10.0.0.2:8008").auth.is_some());
        assert!(p.at("http://10.0.0.2:8008").auth.is_none());
        assert!(p.at("10.0.0.2:8008").auth.is_none());
        assert!(!format!("{p:?}").contains("pw"));
    }
}
