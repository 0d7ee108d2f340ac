//! The standalone agent's HTTP API: Timescale's WAL-E sidecar contract beside a plain
//! PostgreSQL ([`crate::cluster::standalone`]).
//!
//! | endpoint | |
//! |---|---|
//! | `GET /health`, `GET /ping` | 200 |
//! | `GET` or `POST /wal-push/{file}` | archive `PGWAL/<file>`; 200 only once it is durably stored |
//! | `GET` or `POST /wal-fetch/{file}` | fetch `<file>` into `PGWAL/<file>`; 404 when the archive does not hold it |
//! | `GET` or `POST /backup-push` | take a base backup now |
//!
//! POST needs the API token, as on the cluster agent ([`super::authorize`]). GET works without
//! it only from the networks listed in `WALKEEPER_API_TOKENLESS_NETWORKS` (the docker network of
//! the PostgreSQL container: `archive_command = 'wget wale/wal-push/%f -O -'`), and never from a
//! browser (a request with `Origin`, `Referer` or `Sec-Fetch-*` headers): a web page could
//! otherwise make a visitor's browser send it. Elsewhere GET needs the token as well. The Host
//! header must name the agent as on the cluster agent.
//!
//! PostgreSQL's restore_command with `wget .../wal-fetch/%f -O -` has no `%p`: the file is put
//! in the WAL directory under its own name, where recovery looks next after restore_command
//! (WAL-E's sidecar did the same). The body only says what happened; wget's exit status
//! (non-zero for any status but 2xx) is what PostgreSQL reads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;

use super::{error, host_allowed, status_of, wal_file, BODY_LIMIT, CONCURRENCY};
use super::{QUICK_TIMEOUT, WAL_TIMEOUT};
use crate::cluster::standalone::{in_networks, Standalone};
use crate::error::Error;
use crate::wal::{fetch, push};

type Shared = State<Arc<Standalone>>;

/// Headers browsers send and wget or curl do not.
const BROWSER_HEADERS: [&str; 5] = [
    "origin",
    "referer",
    "sec-fetch-site",
    "sec-fetch-mode",
    "sec-fetch-dest",
];

/// May this request reach a sidecar route? GET from a listed network, by a client that is not
/// a browser, needs no token; anything else is [`super::authorize`]'s to decide.
pub fn sidecar_authorize(
    method: &Method,
    peer: Option<std::net::IpAddr>,
    networks: &[ipnet::IpNet],
    token: &str,
    headers: &HeaderMap,
) -> Result<(), &'static str> {
    let tokenless = method == Method::GET
        && peer.is_some_and(|p| in_networks(p, networks))
        && !BROWSER_HEADERS.iter().any(|h| headers.contains_key(*h));
    if tokenless {
        return Ok(());
    }
    super::authorize(Some(token), headers)
}

async fn require_access(State(s): Shared, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match sidecar_authorize(
        req.method(),
        peer,
        &s.config().tokenless_networks,
        &s.config().token,
        req.headers(),
    ) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            let code = if why.contains("JSON") {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            } else {
                StatusCode::UNAUTHORIZED
            };
            tracing::warn!(
                peer = ?peer,
                method = %req.method(),
                path = req.uri().path(),
                "refused: {why}"
            );
            (
                code,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({ "error": why })),
            )
                .into_response()
        }
    }
}

async fn check_host(State(s): Shared, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let extra: Vec<&str> = s.config().api_hosts.iter().map(String::as_str).collect();
    match host {
        Some(h) if host_allowed(&h, s.config().listen, &extra) => next.run(req).await,
        _ => error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "the Host header must name this agent ({}, localhost, or a name in WALKEEPER_API_HOSTS)",
                s.config().listen
            ),
        ),
    }
}

pub fn router(s: Arc<Standalone>) -> Router {
    let wal = Router::new()
        .route("/wal-push/{*file}", get(wal_push).post(wal_push))
        .route("/wal-fetch/{*file}", get(wal_fetch).post(wal_fetch))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            WAL_TIMEOUT,
        ))
        // A base backup runs in its own task, as long as it takes: no request timeout.
        .route("/backup-push", get(backup_push).post(backup_push))
        .route_layer(middleware::from_fn_with_state(s.clone(), require_access));
    Router::new()
        .route("/health", get(health))
        .route("/ping", get(|| async { "pong" }))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            QUICK_TIMEOUT,
        ))
        .merge(wal)
        .layer(middleware::from_fn_with_state(s.clone(), check_host))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(CONCURRENCY))
        .with_state(s)
}

/// Serves the standalone API on `listener` until the task is dropped, as the cluster agent's
/// ([`super::serve_app`]: header deadline, bounded connections, each request's peer address for
/// the token-less networks).
pub async fn serve(s: Arc<Standalone>, listener: TcpListener) {
    tokio::spawn(keep_token_file(s.clone()));
    super::serve_app(router(s), listener).await
}

/// Keeps the token in `<state dir>/api-token` (0600) for walkeeper's own commands, once the
/// directory can exist, and again if it is removed.
async fn keep_token_file(s: Arc<Standalone>) {
    let mut written = false;
    loop {
        match crate::security::persist_token(&s.config().token_file, &s.config().token) {
            Ok(true) if !written => {
                tracing::info!(file = %s.config().token_file.display(), "the API token is in this file (mode 0600)");
                written = true;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("writing the API token file: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(if written { 5 } else { 1 })).await;
    }
}

async fn health(State(s): Shared) -> Response {
    Json(json!({ "status": "ok", "mode": "standalone", "pgdata": s.config().pgdata }))
        .into_response()
}

async fn wal_push(State(s): Shared, Path(file): Path<String>) -> Response {
    let name = match wal_file(&file) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let result = async {
        let ctx = s.wal_context()?;
        let path = ctx.pg_wal.join(name.to_string());
        // Returns once the object is durable in the archive: only then does wget exit 0.
        push::wal_push(ctx, Arc::new(s.leadership()), &path, None).await
    }
    .await;
    match result {
        Ok((n, outcome)) => (
            StatusCode::OK,
            format!("Pushed wal {n} ({})\n", outcome.label()),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(file = %name, "wal-push failed: {e}");
            error(status_of(&e), e.to_string())
        }
    }
}

async fn wal_fetch(State(s): Shared, Path(file): Path<String>) -> Response {
    let name = match wal_file(&file) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let result = async {
        let ctx = s.wal_context()?;
        let dest = ctx.pg_wal.join(name.to_string());
        fetch::wal_fetch(ctx, &name.to_string(), &dest).await
    }
    .await;
    match result {
        Ok((n, _)) => (StatusCode::OK, format!("Fetched wal {n}\n")).into_response(),
        Err(e) => {
            if !matches!(e, Error::NotFound { .. }) {
                tracing::error!(file = %name, "wal-fetch failed: {e}");
            }
            error(status_of(&e), e.to_string())
        }
    }
}

async fn backup_push(State(s): Shared) -> Response {
    // In its own task: a client that hangs up does not cancel a running backup.
    let task = tokio::spawn(async move { s.backup("requested through the API").await });
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokenless_get_only_from_listed_networks_and_never_from_a_browser() {
        let nets = crate::cluster::standalone::parse_networks("172.18.0.0/16").unwrap();
        let inside = Some("172.18.0.3".parse().unwrap());
        let outside = Some("10.1.2.3".parse().unwrap());
        let none = HeaderMap::new();
        let ok = |m: &Method, peer, nets: &[ipnet::IpNet], h: &HeaderMap| {
            sidecar_authorize(m, peer, nets, "tok", h).is_ok()
        };
        assert!(ok(&Method::GET, inside, &nets, &none));
        assert!(!ok(&Method::GET, outside, &nets, &none));
        assert!(!ok(&Method::GET, inside, &[], &none), "no opt-in");
        assert!(
            !ok(&Method::POST, inside, &nets, &none),
            "POST always needs the token"
        );
        assert!(!ok(&Method::GET, None, &nets, &none));
        let mut browser = HeaderMap::new();
        browser.insert("sec-fetch-mode", HeaderValue::from_static("no-cors"));
        assert!(!ok(&Method::GET, inside, &nets, &browser));
        let mut page = HeaderMap::new();
        page.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!ok(&Method::GET, inside, &nets, &page));
        // With the token, from anywhere, either method.
        let mut t = HeaderMap::new();
        t.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        assert!(ok(&Method::GET, outside, &[], &t));
        assert!(ok(&Method::POST, outside, &[], &t));
    }
}
