//! The agent's HTTP API.
//!
//! | endpoint | |
//! |---|---|
//! | `GET /health` | 200 once the agent is ready (its startup check is done) and no duty is down, else 503 |
//! | `GET /status` | role, leader, last archived segment, archive lag, last backup and its age |
//! | `GET /leadership` | who holds the leader key and how long it lasts (wal-push asks this) |
//! | `GET /backups` | the backup list (JSON) |
//! | `POST /backup-push` | take a base backup now (leader only) |
//! | `GET\|POST /wal-push/{file}`, `/wal-fetch/{file}` | Timescale's WAL-E sidecar contract: push `pg_wal/<file>`, fetch into `pg_wal/<file>` |
//! | `GET /metrics` | Prometheus text |
//! | `POST /restart` | point-in-time restart of the cluster; `GET /restart/{id}` shows it |
//!
//! Mutating endpoints need `Authorization: Bearer <token>` whenever a token is configured, and
//! a token must be configured for any address beyond loopback. File names are WAL names, never
//! paths: no request reaches outside pg_wal or the data directory.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::cluster::agent::Agent;
use crate::cluster::pitr::{self, Refusal, RestartRequest};
use crate::error::Error;
use crate::wal::names::WalName;
use crate::wal::{fetch, push};

type Shared = State<Arc<Agent>>;

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
        Error::Cluster(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn router(agent: Arc<Agent>) -> Router {
    let mutating = Router::new()
        .route("/backup-push", post(backup_push).get(backup_push))
        .route("/wal-push/{*file}", get(wal_push).post(wal_push))
        .route("/wal-fetch/{*file}", get(wal_fetch).post(wal_fetch))
        .route("/restart", post(restart))
        .route_layer(middleware::from_fn_with_state(agent.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .route("/ping", get(|| async { "pong" }))
        .route("/status", get(status))
        .route("/leadership", get(leadership))
        .route("/backups", get(backups))
        .route("/metrics", get(metrics))
        .route("/restart/{id}", get(restart_status))
        .merge(mutating)
        .with_state(agent)
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(agent: Arc<Agent>, listener: TcpListener) {
    if let Err(e) = axum::serve(listener, router(agent)).await {
        tracing::error!(error = %e, "API server stopped");
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(
    State(agent): Shared,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = &agent.cfg.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if same(g.as_bytes(), token.as_bytes()) => {}
            _ => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    Json(json!({ "error": "this endpoint needs Authorization: Bearer <token>" })),
                )
                    .into_response()
            }
        }
    }
    next.run(req).await
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
    let ready = *agent.ready.borrow();
    match health_problem(ready, &agent.supervisor.down()) {
        Some(why) => error(StatusCode::SERVICE_UNAVAILABLE, why),
        None => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "member": agent.me() })),
        )
            .into_response(),
    }
}

async fn status(State(agent): Shared) -> Response {
    Json(agent.status().await).into_response()
}

async fn leadership(State(agent): Shared) -> Response {
    match agent.etcd.leader_status().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn backups(State(agent): Shared) -> Response {
    match crate::backup::list_backups(&agent.archive.store).await {
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
        agent.metrics.render(),
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
    agent.metrics.wal_push_requests.inc();
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
    agent.metrics.wal_fetch_requests.inc();
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
    match pitr::start(&agent, req).await {
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
    let job = agent.jobs.lock().ok().and_then(|j| j.get(&id).cloned());
    match job {
        Some(j) => Json(j.state()).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no restart {id:?}")),
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;

    #[test]
    fn health_is_unavailable_naming_a_duty_that_is_down() {
        assert_eq!(health_problem(true, &[]), None);
        let why = health_problem(true, &["leader-duties".to_string()]).unwrap();
        assert!(why.contains("leader-duties"), "{why}");
        assert!(health_problem(false, &[]).unwrap().contains("startup"));
    }
}
