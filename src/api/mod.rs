//! The agent's HTTP API.
//!
//! | endpoint | |
//! |---|---|
//! | `GET /health` | 200 once the agent is ready (its startup check is done) and no duty is down, else 503 |
//! | `GET /status` | role, leader, last archived segment, archive lag, last backup and its age |
//! | `GET /leadership` | who holds the leader key and how long it lasts (wal-push asks this) |
//! | `GET /backups` | the backup list (JSON) |
//! | `POST /backup-push` | take a base backup now (leader only) |
//! | `POST /wal-push/{file}`, `/wal-fetch/{file}` | Timescale's WAL-E sidecar contract: push `pg_wal/<file>`, fetch into `pg_wal/<file>` |
//! | `GET /metrics` | Prometheus text |
//! | `POST /restart` | point-in-time restart of the cluster; `GET /restart/{id}` shows it |
//!
//! Mutating endpoints need `Authorization: Bearer <token>`, always, on loopback too: a token is
//! configured (required for any address beyond loopback), or the agent makes a random one at
//! start in `<state dir>/api-token` (mode 0600), where walkeeper's own commands read it. They
//! take POST only, and a body only as JSON, so a web page in a browser on the host cannot
//! trigger them. Every request's Host must name the listen address (an IP literal or
//! `localhost`, or a name in `WALKEEPER_API_HOSTS`), against DNS rebinding. Bodies are limited
//! to 64 KiB, headers must arrive within 10 s, requests are bounded in time and number.
//! `GET /leadership?nonce=N` answers with a proof of knowing the token
//! ([`crate::security::leadership_proof`]), so wal-push trusts only the real agent.
//! File names are WAL names, never paths: no request reaches outside pg_wal or the data
//! directory.

pub mod sidecar;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;

use crate::cluster::agent::ApiHandle;
use crate::cluster::pitr::{self, Refusal, RestartRequest};
use crate::error::Error;
use crate::wal::names::WalName;
use crate::wal::{fetch, push};

type Shared = State<ApiHandle>;

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

/// The HTTP status for a library error.
fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::BadInput(_) | Error::Config(_) => StatusCode::BAD_REQUEST,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::NotLeader(_) | Error::Conflict { .. } | Error::Deadline { .. } => {
            StatusCode::CONFLICT
        }
        Error::Cluster(_) | Error::Postgres(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The largest request body any endpoint takes.
pub const BODY_LIMIT: usize = 64 * 1024;
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a quick request (status, leadership, starting a restart) may take.
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a sidecar's WAL request may take.
pub const WAL_TIMEOUT: Duration = Duration::from_secs(600);
/// Requests served at once; more wait.
pub const CONCURRENCY: usize = 32;
/// Connections open at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 128;

pub fn router(agent: ApiHandle) -> Router {
    let quick = TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, QUICK_TIMEOUT);
    let mutating = Router::new()
        // A base backup runs in its own task, as long as it takes: no request timeout.
        .route("/backup-push", post(backup_push))
        .merge(
            Router::new()
                .route("/wal-push/{*file}", post(wal_push))
                .route("/wal-fetch/{*file}", post(wal_fetch))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    WAL_TIMEOUT,
                )),
        )
        .merge(Router::new().route("/restart", post(restart)).layer(quick))
        .route_layer(middleware::from_fn_with_state(agent.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .route("/ping", get(|| async { "pong" }))
        .route("/status", get(status))
        .route("/leadership", get(leadership))
        .route("/backups", get(backups))
        .route("/metrics", get(metrics))
        .route("/restart/{id}", get(restart_status))
        .layer(quick)
        .merge(mutating)
        .layer(middleware::from_fn_with_state(agent.clone(), check_host))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(CONCURRENCY))
        .with_state(agent)
}

/// Serves the agent's API on `listener` until the task is dropped.
pub async fn serve(agent: ApiHandle, listener: TcpListener) {
    tokio::spawn(keep_token_file(agent.clone()));
    serve_app(router(agent), listener).await
}

/// Serves `app` on `listener` until the task is dropped: HTTP/1.1 with a deadline for the
/// request headers (against clients that hold connections open) and a bound on connections.
/// Each request carries its peer's address (`ConnectInfo`), for the sidecar's networks.
pub(crate) async fn serve_app(app: Router, listener: TcpListener) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "API connection ended");
            }
            drop(permit);
        });
    }
}

/// Keeps the agent's own token in `<state dir>/api-token` for walkeeper's commands: written once
/// the state directory can exist (a new member has no pg_wal yet), and again if it is removed.
async fn keep_token_file(agent: ApiHandle) {
    let access = agent.access();
    let (Some(token), Some(path)) = (access.token.clone(), access.token_file.clone()) else {
        return;
    };
    let mut written = false;
    loop {
        match crate::security::persist_token(&path, &token) {
            Ok(true) if !written => {
                tracing::info!(file = %path.display(), "the API token is in this file (mode 0600)");
                written = true;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("writing the API token file: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(if written { 5 } else { 1 })).await;
    }
}

/// May this request reach a mutating endpoint? Only with the API token, on every address,
/// compared in constant time. An agent without a token refuses every mutation.
///
/// The one place that decides access: an opt-in for token-less requests (a sidecar) belongs
/// here.
fn authorize(token: Option<&str>, headers: &HeaderMap) -> Result<(), &'static str> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match (token, given) {
        (Some(t), Some(g)) if crate::security::tokens_equal(g.as_bytes(), t.as_bytes()) => {}
        _ => return Err("this endpoint needs Authorization: Bearer <token> (the agent's API token: WALKEEPER_API_TOKEN, or the file api-token in its state directory)"),
    }
    // A body is JSON only: a browser sends JSON only after a CORS preflight this API never
    // answers.
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if has_body && !json {
        return Err("a request body must be JSON (Content-Type: application/json)");
    }
    Ok(())
}

async fn require_token(
    State(agent): Shared,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    match authorize(agent.access().token.as_deref(), &headers) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            let code = if why.contains("JSON") {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            } else {
                StatusCode::UNAUTHORIZED
            };
            (
                code,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({ "error": why })),
            )
                .into_response()
        }
    }
}

/// Does `host` (a Host header) name this API? An IP literal or `localhost` with the listen
/// port, or a name the operator listed in `WALKEEPER_API_HOSTS`. A DNS name an attacker
/// controls, pointed at 127.0.0.1, is refused (DNS rebinding).
fn host_allowed(host: &str, listen: SocketAddr, extra: &[&str]) -> bool {
    let host = host.trim();
    let (name, port) = match host.rsplit_once(':') {
        Some((n, _)) if !n.ends_with(']') && n.contains(':') => (host, None), // bare IPv6
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let port_ok = match port {
        Some(p) => p.parse::<u16>().ok() == Some(listen.port()),
        None => listen.port() == 80,
    };
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    let name_ok = bare.parse::<std::net::IpAddr>().is_ok()
        || bare.eq_ignore_ascii_case("localhost")
        || extra.iter().any(|e| e.eq_ignore_ascii_case(bare));
    port_ok && name_ok
}

async fn check_host(State(agent): Shared, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let access = agent.access();
    let extra: Vec<&str> = access.hosts.iter().map(String::as_str).collect();
    match host {
        Some(h) if host_allowed(&h, access.listen, &extra) => next.run(req).await,
        _ => error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "the Host header must name this agent ({}, localhost, or a name in WALKEEPER_API_HOSTS)",
                access.listen
            ),
        ),
    }
}

/// Why `/health` answers 503, if it does: a duty that is down, or the startup check not done.
fn health_problem(ready: bool, down: &[String]) -> Option<String> {
    if !down.is_empty() {
        return Some(format!(
            "agent duty down (failed; restarting): {}",
            down.join(", ")
        ));
    }
    (!ready).then(|| "starting: the startup check is not done yet".to_string())
}

async fn health(State(agent): Shared) -> Response {
    match health_problem(agent.is_ready(), &agent.duties_down()) {
        Some(why) => error(StatusCode::SERVICE_UNAVAILABLE, why),
        None => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "member": agent.member() })),
        )
            .into_response(),
    }
}

async fn status(State(agent): Shared) -> Response {
    Json(agent.status().await).into_response()
}

#[derive(serde::Deserialize)]
struct ProofQuery {
    nonce: Option<String>,
}

/// Who leads. With `?nonce=N`, the answer carries the proof that this agent knows the API token
/// (`x-walkeeper-proof`), which wal-push checks before it believes the answer.
async fn leadership(State(agent): Shared, Query(q): Query<ProofQuery>) -> Response {
    let status = match agent.leader_status().await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let body = match serde_json::to_vec(&status) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut resp = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.clone(),
    )
        .into_response();
    if let (Some(nonce), Some(token)) = (q.nonce.as_deref(), agent.access().token.as_deref()) {
        if nonce.len() <= 256 {
            let proof = crate::security::leadership_proof(token, nonce, &body);
            if let Ok(v) = HeaderValue::from_str(&proof) {
                resp.headers_mut().insert(crate::security::PROOF_HEADER, v);
            }
        }
    }
    resp
}

async fn backups(State(agent): Shared) -> Response {
    match agent.list_backups().await {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(status_of(&e), e.to_string()),
    }
}

async fn metrics(State(agent): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        agent.metrics().render(),
    )
        .into_response()
}

async fn backup_push(State(agent): Shared) -> Response {
    // In its own task: a client that hangs up does not cancel a running backup.
    let task = tokio::spawn(async move { agent.backup("requested through the API").await });
    let result = match task.await {
        Ok(r) => r,
        Err(e) => Err(Error::Cluster(format!("backup task: {e}"))),
    };
    match result {
        Ok(s) => Json(json!({
            "start_lsn": s.start_lsn.to_string(),
            "finish_lsn": s.finish_lsn.to_string(),
            "timeline": s.timeline,
            "uncompressed_size": s.uncompressed_size,
            "compressed_size": s.compressed_size,
        }))
        .into_response(),
        Err(e) => error(status_of(&e), e.to_string()),
    }
}

/// The WAL file a sidecar path names: its last component, which must be a WAL name.
fn wal_file(path: &str) -> Result<WalName, Box<Response>> {
    let last = path.rsplit('/').next().unwrap_or("");
    WalName::parse(last).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e.to_string())))
}

async fn wal_push(State(agent): Shared, Path(file): Path<String>) -> Response {
    agent.metrics().wal_push_requests.inc();
    let name = match wal_file(&file) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let result = async {
        let ctx = agent.wal_context()?;
        let path = ctx.pg_wal.join(name.to_string());
        push::wal_push(ctx, Arc::new(agent.leadership()), &path, None).await
    }
    .await;
    match result {
        Ok((n, outcome)) => (
            StatusCode::OK,
            format!("Pushed wal {n} ({})\n", outcome.label()),
        )
            .into_response(),
        Err(e) => error(status_of(&e), e.to_string()),
    }
}

async fn wal_fetch(State(agent): Shared, Path(file): Path<String>) -> Response {
    agent.metrics().wal_fetch_requests.inc();
    let name = match wal_file(&file) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let result = async {
        let ctx = agent.wal_context()?;
        let dest = ctx.pg_wal.join(name.to_string());
        fetch::wal_fetch(ctx, &name.to_string(), &dest).await
    }
    .await;
    match result {
        Ok((n, _)) => (StatusCode::OK, format!("Fetched wal {n}\n")).into_response(),
        Err(e) => error(status_of(&e), e.to_string()),
    }
}

async fn restart(State(agent): Shared, body: axum::body::Bytes) -> Response {
    let req: RestartRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body must be JSON like {{\"recovery_target_time\": \"2026-11-23T12:00:00+00:00\"}}: {e}"),
            )
        }
    };
    match pitr::start(agent.restarts(), req).await {
        Ok(job) => (
            StatusCode::ACCEPTED,
            Json(json!({ "id": job.id, "status_url": format!("/restart/{}", job.id), "job": job.state() })),
        )
            .into_response(),
        Err(Refusal::BadRequest(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(Refusal::Conflict { reason, leader }) => {
            (StatusCode::CONFLICT, Json(json!({ "error": reason, "leader": leader }))).into_response()
        }
        Err(Refusal::Unavailable(m)) => error(StatusCode::SERVICE_UNAVAILABLE, m),
    }
}

async fn restart_status(State(agent): Shared, Path(id): Path<String>) -> Response {
    let job = agent.restarts().jobs().get(&id);
    match job {
        Some(j) => Json(j.state()).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no restart {id:?}")),
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;

    #[test]
    fn only_hosts_that_name_the_listen_address_are_served() {
        let listen: SocketAddr = "127.0.0.1:8432".parse().unwrap();
        for ok in [
            "127.0.0.1:8432",
            "localhost:8432",
            "[::1]:8432",
            "10.0.0.5:8432",
        ] {
            assert!(host_allowed(ok, listen, &[]), "{ok}");
        }
        for bad in [
            "evil.example:8432",
            "127.0.0.1:80",
            "localhost",
            "127.0.0.1.nip.io:8432",
        ] {
            assert!(!host_allowed(bad, listen, &[]), "{bad}");
        }
        assert!(host_allowed("pg1:8432", listen, &["pg1"]));
    }

    #[test]
    fn mutations_need_the_token_and_a_json_body() {
        let mut h = HeaderMap::new();
        assert!(authorize(Some("t"), &h).is_err());
        assert!(authorize(None, &h).is_err());
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(authorize(Some("t"), &h).is_err());
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert!(authorize(Some("t"), &h).is_ok());
        assert!(authorize(None, &h).is_err());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(authorize(Some("t"), &h).unwrap_err().contains("JSON"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(authorize(Some("t"), &h).is_ok());
    }

    #[test]
    fn health_is_unavailable_naming_a_duty_that_is_down() {
        assert_eq!(health_problem(true, &[]), None);
        let why = health_problem(true, &["leader-duties".to_string()]).unwrap();
        assert!(why.contains("leader-duties"), "{why}");
        assert!(health_problem(false, &[]).unwrap().contains("startup"));
    }
}
