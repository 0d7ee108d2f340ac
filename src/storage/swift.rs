//! OpenStack Swift as an `object_store::ObjectStore`, over reqwest, so it sits behind the same
//! [`super::Store`] (retry policy, create-only writes, streaming) as every other store.
//!
//! - Tokens come from [`super::swift_auth`] (v1, Keystone v2.0, v3). A token is renewed before
//!   the expiry the server announced, and once more when a request is answered 401.
//! - Single puts are create-only (`If-None-Match: *`; Swift answers 412 when the object exists).
//! - Multipart uploads are Static Large Objects: each part is a segment object in
//!   `<container>_segments` (python-swiftclient's convention), and the manifest is written last,
//!   itself with `If-None-Match: *`. Aborting deletes the segments; deleting a manifest deletes
//!   its segments (`multipart-manifest=delete`).
//! - Listings are paged (`limit`, `marker`); `list_with_offset` starts at the marker, so it
//!   reads only the range asked for.
//! - Errors carry the HTTP status in object_store's wording, so the retry classification
//!   (`retry.rs`) applies unchanged. A missing container is reported as such.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::http::{header, unquote};
use super::swift_auth::{self, AuthVersion, Issued, SwiftAuth};

const STORE: &str = "Swift";
/// Entries per listing request (Swift's own maximum is 10,000).
const PAGE: usize = 1000;
/// SLO's default `max_manifest_segments`.
pub const MAX_SEGMENTS: usize = 1000;

/// A token in use and when to renew it.
struct Session {
    issued: Issued,
    renew_at: Option<Instant>,
}

pub struct Swift {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    auth: SwiftAuth,
    container: String,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

impl fmt::Debug for Swift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Swift")
            .field("container", &self.inner.container)
            .field("auth", &self.inner.auth)
            .finish()
    }
}

impl fmt::Display for Swift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Swift({})", self.inner.container)
    }
}

impl Swift {
    pub fn new(
        auth: SwiftAuth,
        container: &str,
        connect_timeout: Duration,
    ) -> Result<Swift, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Swift {
            inner: Arc::new(Inner {
                http,
                auth,
                container: container.to_string(),
                session: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

fn generic(msg: impl Into<String>) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: msg.into().into(),
    }
}

fn transport(e: reqwest::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(e),
    }
}

/// A short, one-line excerpt of an error body (Swift answers errors in small HTML pages).
fn excerpt(body: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let line = out.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(200).collect()
}

/// The error for a non-success answer (see [`super::http::status_error`]).
fn status_error(path: &str, status: StatusCode, body: &str) -> object_store::Error {
    super::http::status_error(STORE, path, status, &excerpt(body))
}

/// A 404 on a container or on a write into it: the container does not exist (the wording
/// `retry::classify` reads as a missing bucket, never as a missing object).
fn no_container(container: &str) -> object_store::Error {
    generic(format!(
        "Server returned non-2xx status code: 404 Not Found: ContainerNotFound: \
         container {container:?} does not exist"
    ))
}

async fn fail(path: &str, resp: Response) -> object_store::Error {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    status_error(path, status, &body)
}

/// Swift's listing times: `2026-12-03T18:55:39.231380`, UTC without a zone.
fn parse_listing_time(s: &str) -> DateTime<Utc> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|n| n.and_utc())
        .unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Object {
        name: String,
        bytes: u64,
        hash: Option<String>,
        last_modified: Option<String>,
        slo_etag: Option<String>,
    },
    Subdir {
        subdir: String,
    },
}

/// One page of a listing: objects, common prefixes, and the marker for the next page.
struct Page {
    objects: Vec<ObjectMeta>,
    prefixes: Vec<Path>,
    next: Option<String>,
}

impl Inner {
    /// The current token, authenticating first when there is none or it is about to expire.
    async fn session(&self) -> object_store::Result<Arc<Session>> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref() {
            if s.renew_at.is_none_or(|t| Instant::now() < t) {
                return Ok(s.clone());
            }
            tracing::debug!(auth = %self.auth.describe(), "Swift token about to expire; renewing");
        }
        let issued = self.authenticate().await?;
        // Renew a little before the announced expiry: a tenth of the lifetime, at most 60 s.
        let renew_at = issued.lifetime.map(|l| {
            let margin = (l / 10).min(Duration::from_secs(60));
            Instant::now() + l.saturating_sub(margin)
        });
        let s = Arc::new(Session { issued, renew_at });
        *guard = Some(s.clone());
        Ok(s)
    }

    /// Drops `old` (answered 401), unless another request has already replaced it.
    async fn invalidate(&self, old: &Arc<Session>) {
        let mut guard = self.session.lock().await;
        if guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, old)) {
            *guard = None;
        }
    }

    async fn authenticate(&self) -> object_store::Result<Issued> {
        let a = &self.auth;
        let url = a.token_url();
        let req = match a.version {
            AuthVersion::V1 => self
                .http
                .get(&url)
                .header("X-Auth-User", &a.user)
                .header("X-Auth-Key", a.password()),
            AuthVersion::V2 | AuthVersion::V3 => self.http.post(&url).json(&a.request_body()),
        };
        let resp = req.send().await.map_err(|e| {
            generic(format!(
                "{}: {}",
                a.describe(),
                super::retry::chain_text(&e)
            ))
        })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let source: Box<dyn std::error::Error + Send + Sync> = format!(
                "{}: Server returned non-2xx status code: {status}: {}",
                a.describe(),
                excerpt(&body)
            )
            .into();
            return Err(match status.as_u16() {
                401 | 403 => object_store::Error::Unauthenticated { path: url, source },
                _ => object_store::Error::Generic {
                    store: STORE,
                    source,
                },
            });
        }
        let bad = |why: String| generic(format!("{}: {why}", a.describe()));
        let now = Utc::now();
        let issued = match a.version {
            AuthVersion::V1 => swift_auth::parse_v1(
                header(&resp, "x-storage-url"),
                header(&resp, "x-auth-token"),
                header(&resp, "x-auth-token-expires"),
            ),
            AuthVersion::V2 => {
                let body = resp.bytes().await.map_err(transport)?;
                swift_auth::parse_v2(&body, a.region.as_deref(), a.interface, now)
            }
            AuthVersion::V3 => {
                let subject = header(&resp, "x-subject-token").map(String::from);
                let body = resp.bytes().await.map_err(transport)?;
                swift_auth::parse_v3(
                    subject.as_deref(),
                    &body,
                    a.region.as_deref(),
                    a.interface,
                    now,
                )
            }
        }
        .map_err(bad)?;
        tracing::debug!(auth = %a.describe(), storage_url = %issued.storage_url, lifetime = ?issued.lifetime, "Swift token issued");
        Ok(issued)
    }

    /// `<storage url>/<container>/<key>` with every part percent-encoded.
    fn url(
        &self,
        s: &Session,
        container: &str,
        key: Option<&str>,
    ) -> object_store::Result<url::Url> {
        let mut u = url::Url::parse(&s.issued.storage_url)
            .map_err(|e| generic(format!("storage URL {:?}: {e}", s.issued.storage_url)))?;
        {
            let mut segs = u.path_segments_mut().map_err(|_| {
                generic(format!(
                    "storage URL {:?} cannot take a path",
                    s.issued.storage_url
                ))
            })?;
            segs.pop_if_empty().push(container);
            if let Some(k) = key {
                segs.extend(k.split('/'));
            }
        }
        Ok(u)
    }

    /// Sends a request built by `build` (called again for a retry) with the token; a 401 makes
    /// it authenticate again and send once more.
    async fn send(
        &self,
        container: &str,
        key: Option<&str>,
        build: impl Fn(url::Url) -> RequestBuilder,
    ) -> object_store::Result<Response> {
        let mut renewed = false;
        loop {
            let s = self.session().await?;
            let url = self.url(&s, container, key)?;
            let resp = build(url)
                .header("X-Auth-Token", &s.issued.token)
                .send()
                .await
                .map_err(transport)?;
            if resp.status() == StatusCode::UNAUTHORIZED && !renewed {
                tracing::debug!("Swift answered 401; authenticating again");
                self.invalidate(&s).await;
                renewed = true;
                continue;
            }
            return Ok(resp);
        }
    }

    async fn put_object(
        &self,
        container: &str,
        key: &str,
        body: Bytes,
        create_only: bool,
        query: Option<&'static str>,
    ) -> object_store::Result<PutResult> {
        let resp = self
            .send(container, Some(key), |mut url| {
                if let Some(q) = query {
                    url.set_query(Some(q));
                }
                let mut r = self.http.request(Method::PUT, url).body(body.clone());
                if create_only {
                    r = r.header("If-None-Match", "*");
                }
                r
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(PutResult {
                e_tag: header(&resp, "etag").map(unquote),
                version: None,
            }),
            StatusCode::NOT_FOUND => Err(no_container(container)),
            StatusCode::PRECONDITION_FAILED if create_only => {
                Err(object_store::Error::AlreadyExists {
                    path: key.to_string(),
                    source: "Swift answered 412 Precondition Failed to If-None-Match: *".into(),
                })
            }
            _ => Err(fail(key, resp).await),
        }
    }

    async fn delete_object(&self, container: &str, key: &str) -> object_store::Result<()> {
        let resp = self
            .send(container, Some(key), |url| self.http.delete(url))
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(fail(key, resp).await)
        }
    }

    async fn page(
        &self,
        prefix: &str,
        marker: Option<&str>,
        delimiter: bool,
    ) -> object_store::Result<Page> {
        let container = self.container.clone();
        let resp = self
            .send(&container, None, |mut url| {
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("format", "json")
                        .append_pair("limit", &PAGE.to_string());
                    if !prefix.is_empty() {
                        q.append_pair("prefix", prefix);
                    }
                    if let Some(m) = marker {
                        q.append_pair("marker", m);
                    }
                    if delimiter {
                        q.append_pair("delimiter", "/");
                    }
                }
                self.http.get(url)
            })
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Err(no_container(&self.container)),
            StatusCode::NO_CONTENT => {
                return Ok(Page {
                    objects: Vec::new(),
                    prefixes: Vec::new(),
                    next: None,
                })
            }
            s if s.is_success() => {}
            _ => return Err(fail(prefix, resp).await),
        }
        let body = resp.bytes().await.map_err(transport)?;
        let entries: Vec<Entry> = serde_json::from_slice(&body)
            .map_err(|e| generic(format!("container listing of {:?}: {e}", self.container)))?;
        let full = entries.len() >= PAGE;
        let mut last = None;
        let mut objects = Vec::new();
        let mut prefixes = Vec::new();
        for e in entries {
            match e {
                Entry::Object {
                    name,
                    bytes,
                    hash,
                    last_modified,
                    slo_etag,
                } => {
                    objects.push(ObjectMeta {
                        location: Path::from(name.as_str()),
                        last_modified: last_modified
                            .as_deref()
                            .map(parse_listing_time)
                            .unwrap_or_default(),
                        size: bytes,
                        e_tag: slo_etag.map(|s| unquote(&s)).or(hash),
                        version: None,
                    });
                    last = Some(name);
                }
                Entry::Subdir { subdir } => {
                    prefixes.push(Path::from(subdir.trim_end_matches('/')));
                    last = Some(subdir);
                }
            }
        }
        Ok(Page {
            objects,
            prefixes,
            next: if full { last } else { None },
        })
    }

    /// Every object below `prefix`, after `marker`, page by page.
    fn list_from(
        self: Arc<Self>,
        prefix: Option<&Path>,
        marker: Option<String>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let prefix = prefix
            .map(|p| format!("{}/", p.as_ref()))
            .filter(|p| p != "/")
            .unwrap_or_default();
        futures::stream::try_unfold(Some(marker), move |state| {
            let inner = self.clone();
            let prefix = prefix.clone();
            async move {
                let Some(marker) = state else {
                    return Ok::<_, object_store::Error>(None);
                };
                let page = inner.page(&prefix, marker.as_deref(), false).await?;
                let next = page.next.map(Some);
                Ok(Some((
                    futures::stream::iter(page.objects.into_iter().map(Ok)),
                    next,
                )))
            }
        })
        .try_flatten()
        .boxed()
    }

    fn segment_container(&self) -> String {
        format!("{}_segments", self.container)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Swift {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let create_only = match opts.mode {
            PutMode::Create => true,
            PutMode::Overwrite => false,
            PutMode::Update(_) => {
                return Err(object_store::Error::NotImplemented);
            }
        };
        let body: Bytes = payload.into();
        self.inner
            .put_object(
                &self.inner.container,
                location.as_ref(),
                body,
                create_only,
                None,
            )
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        // The segments' container; creating an existing one is a no-op (202).
        let seg = self.inner.segment_container();
        let resp = self
            .inner
            .send(&seg, None, |url| {
                self.inner.http.put(url).header("Content-Length", "0")
            })
            .await?;
        if !resp.status().is_success() {
            return Err(fail(&seg, resp).await);
        }
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| generic(format!("random upload id: {e}")))?;
        Ok(Box::new(SloUpload {
            inner: self.inner.clone(),
            key: location.to_string(),
            segment_prefix: format!(
                "{}/{}-{}",
                location.as_ref(),
                Utc::now().format("%Y%m%dT%H%M%S%.6f"),
                hex::encode(id)
            ),
            next: 0,
            parts: Arc::new(std::sync::Mutex::new(Vec::new())),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let key = location.as_ref();
        let range_header = options.range.as_ref().map(|r| match r {
            GetRange::Bounded(r) => format!("bytes={}-{}", r.start, r.end.saturating_sub(1)),
            GetRange::Offset(o) => format!("bytes={o}-"),
            GetRange::Suffix(n) => format!("bytes=-{n}"),
        });
        let method = if options.head {
            Method::HEAD
        } else {
            Method::GET
        };
        let resp = self
            .inner
            .send(&self.inner.container, Some(key), |url| {
                let mut r = self.inner.http.request(method.clone(), url);
                if let Some(h) = &range_header {
                    r = r.header("Range", h);
                }
                r
            })
            .await?;
        if !resp.status().is_success() {
            return Err(fail(key, resp).await);
        }
        Ok(super::http::get_result(
            location,
            resp,
            options.head,
            transport,
        ))
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        let key = location.as_ref();
        let c = &self.inner.container;
        let head = self
            .inner
            .send(c, Some(key), |url| self.inner.http.head(url))
            .await?;
        if !head.status().is_success() {
            return Err(fail(key, head).await);
        }
        let slo =
            header(&head, "x-static-large-object").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if !slo {
            return self.inner.delete_object(c, key).await;
        }
        // The manifest and its segments, in one bulk delete whose outcome is in the body.
        let resp = self
            .inner
            .send(c, Some(key), |mut url| {
                url.set_query(Some("multipart-manifest=delete"));
                self.inner
                    .http
                    .delete(url)
                    .header("Accept", "application/json")
            })
            .await?;
        if !resp.status().is_success() {
            return Err(fail(key, resp).await);
        }
        let body = resp.bytes().await.map_err(transport)?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let status = v
            .get("Response Status")
            .and_then(|s| s.as_str())
            .unwrap_or("200 OK");
        match status.split(' ').next() {
            Some(s) if s.starts_with('2') => Ok(()),
            Some("404") => Err(object_store::Error::NotFound {
                path: key.to_string(),
                source: "Swift: the manifest is gone".into(),
            }),
            _ => Err(generic(format!(
                "Server returned non-2xx status code: {status}: deleting the large object {key:?} and its segments: {}",
                v.get("Errors").map(|e| e.to_string()).unwrap_or_default()
            ))),
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.clone().list_from(prefix, None)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner
            .clone()
            .list_from(prefix, Some(offset.as_ref().to_string()))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let prefix = prefix
            .map(|p| format!("{}/", p.as_ref()))
            .filter(|p| p != "/")
            .unwrap_or_default();
        let mut out = ListResult {
            common_prefixes: Vec::new(),
            objects: Vec::new(),
        };
        let mut marker: Option<String> = None;
        loop {
            let page = self.inner.page(&prefix, marker.as_deref(), true).await?;
            out.objects.extend(page.objects);
            out.common_prefixes.extend(page.prefixes);
            match page.next {
                Some(m) => marker = Some(m),
                None => return Ok(out),
            }
        }
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.copy_opts(from, to, false).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.copy_opts(from, to, true).await
    }
}

impl Swift {
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        create_only: bool,
    ) -> object_store::Result<()> {
        let c = &self.inner.container;
        // `X-Copy-From: /<container>/<object>`, percent-encoded like a path.
        let source = {
            let mut u = url::Url::parse("http://x/").map_err(|e| generic(e.to_string()))?;
            if let Ok(mut s) = u.path_segments_mut() {
                s.pop_if_empty().push(c).extend(from.as_ref().split('/'));
            }
            u.path().to_string()
        };
        let resp = self
            .inner
            .send(c, Some(to.as_ref()), |url| {
                let mut r = self
                    .inner
                    .http
                    .put(url)
                    .header("X-Copy-From", &source)
                    .header("Content-Length", "0");
                if create_only {
                    r = r.header("If-None-Match", "*");
                }
                r
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::PRECONDITION_FAILED if create_only => {
                Err(object_store::Error::AlreadyExists {
                    path: to.to_string(),
                    source: "Swift answered 412 Precondition Failed".into(),
                })
            }
            _ => Err(fail(from.as_ref(), resp).await),
        }
    }
}

/// One uploaded segment.
#[derive(Debug, Clone)]
struct Segment {
    name: String,
    etag: Option<String>,
    size: u64,
}

/// A Static Large Object being written: segments first, the manifest last.
#[derive(Debug)]
struct SloUpload {
    inner: Arc<Inner>,
    key: String,
    /// `<key>/<time>-<random>`: segment `n` is `<segment_prefix>/<n:08>`.
    segment_prefix: String,
    next: usize,
    parts: Arc<std::sync::Mutex<Vec<Option<Segment>>>>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Swift")
            .field("container", &self.container)
            .field("auth", &self.auth)
            .finish()
    }
}

impl SloUpload {
    fn uploaded(&self) -> Vec<Option<Segment>> {
        self.parts
            .lock()
            .map(|p| p.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

#[async_trait::async_trait]
impl MultipartUpload for SloUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let n = self.next;
        self.next += 1;
        if n >= MAX_SEGMENTS {
            let key = self.key.clone();
            return Box::pin(async move {
                Err(object_store::Error::NotSupported {
                    source: format!(
                        "{key}: more than {MAX_SEGMENTS} segments (Swift's default limit for one large object)"
                    )
                    .into(),
                })
            });
        }
        let inner = self.inner.clone();
        let parts = self.parts.clone();
        let name = format!("{}/{n:08}", self.segment_prefix);
        Box::pin(async move {
            let body: Bytes = data.into();
            let size = body.len() as u64;
            let seg = inner.segment_container();
            let res = inner.put_object(&seg, &name, body, false, None).await?;
            let mut p = parts.lock().unwrap_or_else(|e| e.into_inner());
            if p.len() <= n {
                p.resize(n + 1, None);
            }
            p[n] = Some(Segment {
                name,
                etag: res.e_tag,
                size,
            });
            Ok(())
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let seg = self.inner.segment_container();
        let mut manifest = Vec::new();
        for (i, s) in self.uploaded().into_iter().enumerate() {
            let s =
                s.ok_or_else(|| generic(format!("{}: segment {i} was not uploaded", self.key)))?;
            manifest.push(serde_json::json!({
                "path": format!("/{seg}/{}", s.name),
                "etag": s.etag,
                "size_bytes": s.size,
            }));
        }
        if manifest.is_empty() {
            return Err(generic(format!(
                "{}: a large object without segments",
                self.key
            )));
        }
        let body = Bytes::from(serde_json::to_vec(&manifest).map_err(|e| generic(e.to_string()))?);
        let container = self.inner.container.clone();
        self.inner
            .put_object(
                &container,
                &self.key,
                body,
                true,
                Some("multipart-manifest=put"),
            )
            .await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let seg = self.inner.segment_container();
        let mut first_err = None;
        for s in self.uploaded().into_iter().flatten() {
            match self.inner.delete_object(&seg, &s.name).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_the_status_where_the_retry_policy_reads_it() {
        use crate::storage::retry::{classify, Class};
        let e = status_error(
            "k",
            StatusCode::SERVICE_UNAVAILABLE,
            "<html><h1>Service Unavailable</h1></html>",
        );
        assert_eq!(classify(&e), Class::Transient);
        assert!(e.to_string().contains("503 Service Unavailable"), "{e}");
        assert_eq!(
            classify(&status_error("k", StatusCode::NOT_FOUND, "")),
            Class::NotFound
        );
        assert_eq!(classify(&no_container("c")), Class::NoBucket);
        assert_eq!(
            classify(&status_error("k", StatusCode::FORBIDDEN, "")),
            Class::Permanent
        );
        assert_eq!(
            classify(&status_error("k", StatusCode::BAD_REQUEST, "")),
            Class::Permanent
        );
        assert_eq!(
            classify(&status_error("k", StatusCode::TOO_MANY_REQUESTS, "")),
            Class::Transient
        );
    }

    #[test]
    fn listing_entries_and_times_parse() {
        let body = br#"[{"bytes": 5, "hash": "5d41", "name": "a/b", "last_modified": "2026-12-03T18:55:39.231380"},
            {"subdir": "a/c/"},
            {"bytes": 2000100, "hash": "f1a6", "name": "m", "last_modified": "2026-12-03T18:55:39.586440", "slo_etag": "\"520c\""}]"#;
        let v: Vec<Entry> = serde_json::from_slice(body).unwrap();
        assert_eq!(v.len(), 3);
        assert!(matches!(&v[1], Entry::Subdir { subdir } if subdir == "a/c/"));
        let t = parse_listing_time("2026-12-03T18:55:39.231380");
        assert_eq!(t.to_rfc3339(), "2026-12-03T18:55:39.231380+00:00");
        assert_eq!(
            excerpt("<html><h1>Not Found</h1><p>The resource.</p></html>"),
            "Not Found The resource."
        );
    }
}
