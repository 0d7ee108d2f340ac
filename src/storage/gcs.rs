//! Google Cloud Storage over its JSON API, as an `object_store::ObjectStore` over reqwest, so it
//! sits behind the same [`super::Store`] (retry policy, create-only writes, streaming) as every
//! other store.
//!
//! - Tokens come from object_store's GCP credential providers (service account, application
//!   default credentials, instance metadata), built from the same `GOOGLE_*` settings as before;
//!   with `STORAGE_EMULATOR_HOST` (what Google's client libraries, and so WAL-G, honour) requests
//!   go to that host without a token.
//! - Single puts are multipart uploads (`uploadType=multipart`) with `ifGenerationMatch=0`:
//!   create-only, GCS answers 412 when the object exists.
//! - Larger objects are resumable uploads opened with `ifGenerationMatch=0`, sent in order in
//!   chunks that are multiples of 256 KiB (the protocol's rule; a part's remainder waits for the
//!   next), and finalized by the last request. Aborting deletes the upload session.
//! - Listings are paged (`pageToken`); `list_with_offset` starts at `startOffset`.
//! - `GCS_ENCRYPTION_KEY` (WAL-G's customer-supplied encryption key, base64 of 32 bytes) goes
//!   with every upload and read as GCS's `x-goog-encryption-*` headers; it is held as a secret.
//! - Errors carry the HTTP status in object_store's wording, so the retry classification
//!   (`retry.rs`) applies unchanged. A missing bucket is reported as such.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::gcp::GcpCredentialProvider;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Digest;
use tokio::sync::watch;

use super::http::header;

const STORE: &str = "GCS";
/// Entries per listing request (the JSON API's maximum is 1,000).
const PAGE: usize = 1000;
/// Every chunk of a resumable upload but the last is a multiple of this.
pub const CHUNK_UNIT: usize = 256 * 1024;
/// The public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://storage.googleapis.com";

pub struct Gcs {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// `https://storage.googleapis.com`, or an emulator's address; no trailing slash.
    base: String,
    bucket: String,
    /// None for an emulator: requests carry no token.
    credentials: Option<GcpCredentialProvider>,
    csek: Option<Csek>,
}

/// A customer-supplied encryption key: the key (base64) and its SHA-256 (base64).
pub struct Csek {
    key: SecretString,
    sha256: String,
}

impl fmt::Debug for Csek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Csek")
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl Csek {
    /// From `GCS_ENCRYPTION_KEY`: standard base64 of exactly 32 bytes (AES-256).
    pub fn parse(text: &str) -> Result<Csek, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let raw = b64
            .decode(text.trim())
            .map_err(|_| "GCS_ENCRYPTION_KEY is not standard base64".to_string())?;
        if raw.len() != 32 {
            return Err(format!(
                "GCS_ENCRYPTION_KEY holds {} bytes; a customer-supplied key is 32 (AES-256)",
                raw.len()
            ));
        }
        Ok(Csek {
            key: SecretString::from(b64.encode(&raw)),
            sha256: b64.encode(sha2::Sha256::digest(&raw)),
        })
    }

    /// The headers of an object the request writes or reads (`source`: the copy source's).
    fn apply(&self, r: RequestBuilder, source: bool) -> RequestBuilder {
        let p = if source {
            "x-goog-copy-source-encryption"
        } else {
            "x-goog-encryption"
        };
        r.header(format!("{p}-algorithm"), "AES256")
            .header(format!("{p}-key"), self.key.expose_secret())
            .header(format!("{p}-key-sha256"), &self.sha256)
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gcs")
            .field("base", &self.base)
            .field("bucket", &self.bucket)
            .field("token", &self.credentials.is_some())
            .field("csek", &self.csek.as_ref().map(|c| &c.sha256))
            .finish()
    }
}

impl fmt::Debug for Gcs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl fmt::Display for Gcs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GCS({})", self.inner.bucket)
    }
}

impl Gcs {
    pub fn new(
        base: &str,
        bucket: &str,
        credentials: Option<GcpCredentialProvider>,
        csek: Option<Csek>,
        connect_timeout: Duration,
    ) -> Result<Gcs, String> {
        let base = base.trim_end_matches('/').to_string();
        url::Url::parse(&base).map_err(|e| format!("GCS endpoint {base:?}: {e}"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Gcs {
            inner: Arc::new(Inner {
                http,
                base,
                bucket: bucket.to_string(),
                credentials,
                csek,
            }),
        })
    }
}

/// The endpoint `STORAGE_EMULATOR_HOST` names, as Google's client libraries read it: a bare
/// `host:port` means plain HTTP.
pub fn emulator_base(host: &str) -> String {
    let host = host.trim();
    if host.contains("://") {
        host.to_string()
    } else {
        format!("http://{host}")
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

/// The message of a JSON API error body (`{"error": {"code": 404, "message": "..."}}`), else a
/// short excerpt of the body.
fn error_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct Outer {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        message: Option<String>,
    }
    match serde_json::from_str::<Outer>(body) {
        Ok(Outer {
            error: Inner { message: Some(m) },
        }) => m,
        _ => body.split_whitespace().collect::<Vec<_>>().join(" "),
    }
    .chars()
    .take(200)
    .collect()
}

/// The error for a non-success answer (see [`super::http::status_error`]).
fn status_error(path: &str, status: StatusCode, body: &str) -> object_store::Error {
    super::http::status_error(STORE, path, status, &error_message(body))
}

/// The bucket does not exist (the wording `retry::classify` reads as a missing bucket, never as
/// a missing object).
fn no_bucket(bucket: &str) -> object_store::Error {
    generic(format!(
        "Server returned non-2xx status code: 404 Not Found: the bucket does not exist: {bucket:?}"
    ))
}

async fn fail(path: &str, resp: Response) -> object_store::Error {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    status_error(path, status, &body)
}

/// An object resource, as listings and uploads return it (sizes are decimal strings).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Resource {
    name: String,
    size: Option<String>,
    updated: Option<String>,
    etag: Option<String>,
    md5_hash: Option<String>,
}

impl Resource {
    fn meta(self) -> object_store::Result<ObjectMeta> {
        let size = match self.size.as_deref() {
            None => 0,
            Some(s) => s
                .parse()
                .map_err(|_| generic(format!("object {:?}: size {s:?}", self.name)))?,
        };
        Ok(ObjectMeta {
            location: Path::from(self.name.as_str()),
            last_modified: self
                .updated
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default(),
            size,
            e_tag: self.etag.or(self.md5_hash),
            version: None,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Listing {
    #[serde(default)]
    items: Vec<Resource>,
    #[serde(default)]
    prefixes: Vec<String>,
    next_page_token: Option<String>,
}

/// One page of a listing.
struct Page {
    objects: Vec<ObjectMeta>,
    prefixes: Vec<Path>,
    next: Option<String>,
}

impl Inner {
    /// `<base>/[upload/]storage/v1/b/<bucket>/o[/<name>]`, the name one percent-encoded segment.
    fn url(&self, upload: bool, name: Option<&str>) -> object_store::Result<url::Url> {
        let mut u = url::Url::parse(&self.base)
            .map_err(|e| generic(format!("GCS endpoint {:?}: {e}", self.base)))?;
        {
            let mut segs = u
                .path_segments_mut()
                .map_err(|_| generic(format!("GCS endpoint {:?} cannot take a path", self.base)))?;
            segs.pop_if_empty();
            if upload {
                segs.push("upload");
            }
            segs.extend(["storage", "v1", "b", &self.bucket, "o"]);
            if let Some(n) = name {
                segs.push(n);
            }
        }
        Ok(u)
    }

    /// Adds the bearer token, when there is one.
    async fn authorize(&self, r: RequestBuilder) -> object_store::Result<RequestBuilder> {
        let Some(c) = &self.credentials else {
            return Ok(r);
        };
        let cred = c.get_credential().await?;
        Ok(if cred.bearer.is_empty() {
            r
        } else {
            r.bearer_auth(&cred.bearer)
        })
    }

    /// The customer-supplied key's headers, when one is set.
    fn encrypted(&self, r: RequestBuilder) -> RequestBuilder {
        match &self.csek {
            Some(k) => k.apply(r, false),
            None => r,
        }
    }

    async fn send(&self, r: RequestBuilder) -> object_store::Result<Response> {
        self.authorize(r).await?.send().await.map_err(transport)
    }

    /// A 404 that does not say which of object and bucket is missing (an emulator's plain "Not
    /// Found"): asks for the bucket.
    async fn not_found(&self, path: &str, resp: Response) -> object_store::Error {
        let body = resp.text().await.unwrap_or_default();
        let msg = error_message(&body);
        if msg.contains("No such object") {
            return status_error(path, StatusCode::NOT_FOUND, &body);
        }
        if msg.contains("bucket does not exist") || !self.bucket_exists().await {
            return no_bucket(&self.bucket);
        }
        status_error(path, StatusCode::NOT_FOUND, &body)
    }

    /// False only when the server says the bucket is missing.
    async fn bucket_exists(&self) -> bool {
        let Ok(mut u) = url::Url::parse(&self.base) else {
            return true;
        };
        if let Ok(mut segs) = u.path_segments_mut() {
            segs.pop_if_empty()
                .extend(["storage", "v1", "b", &self.bucket]);
        }
        match self.send(self.http.get(u)).await {
            Ok(r) => r.status() != StatusCode::NOT_FOUND,
            Err(_) => true,
        }
    }

    async fn page(
        &self,
        prefix: &str,
        token: Option<&str>,
        start: Option<&str>,
        delimiter: bool,
    ) -> object_store::Result<Page> {
        let mut u = self.url(false, None)?;
        {
            let mut q = u.query_pairs_mut();
            q.append_pair("maxResults", &PAGE.to_string());
            if !prefix.is_empty() {
                q.append_pair("prefix", prefix);
            }
            if let Some(t) = token {
                q.append_pair("pageToken", t);
            }
            if let Some(s) = start {
                q.append_pair("startOffset", s);
            }
            if delimiter {
                q.append_pair("delimiter", "/");
            }
        }
        let resp = self.send(self.http.get(u)).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Err(no_bucket(&self.bucket)),
            s if s.is_success() => {}
            _ => return Err(fail(prefix, resp).await),
        }
        let body = resp.bytes().await.map_err(transport)?;
        let listing: Listing = serde_json::from_slice(&body)
            .map_err(|e| generic(format!("listing of bucket {:?}: {e}", self.bucket)))?;
        let mut objects = Vec::with_capacity(listing.items.len());
        for r in listing.items {
            // `startOffset` is inclusive; object_store's offset is not.
            if start.is_some_and(|s| s == r.name) {
                continue;
            }
            objects.push(r.meta()?);
        }
        Ok(Page {
            objects,
            prefixes: listing
                .prefixes
                .iter()
                .map(|p| Path::from(p.trim_end_matches('/')))
                .collect(),
            next: listing.next_page_token.filter(|t| !t.is_empty()),
        })
    }

    /// Every object below `prefix`, from `start` on, page by page.
    fn list_from(
        self: Arc<Self>,
        prefix: Option<&Path>,
        start: Option<String>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let prefix = dir_prefix(prefix);
        futures::stream::try_unfold(Some(None::<String>), move |state| {
            let inner = self.clone();
            let prefix = prefix.clone();
            let start = start.clone();
            async move {
                let Some(token) = state else {
                    return Ok::<_, object_store::Error>(None);
                };
                let page = inner
                    .page(&prefix, token.as_deref(), start.as_deref(), false)
                    .await?;
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

    /// A single create-only (or overwriting) upload of a whole object.
    async fn put_object(
        &self,
        key: &str,
        payload: PutPayload,
        create_only: bool,
    ) -> object_store::Result<PutResult> {
        let mut boundary = [0u8; 12];
        getrandom::fill(&mut boundary).map_err(|e| generic(format!("random boundary: {e}")))?;
        let boundary = format!("walkeeper-{}", hex::encode(boundary));
        let meta = serde_json::to_string(&serde_json::json!({ "name": key }))
            .map_err(|e| generic(e.to_string()))?;
        let head = format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n\
             --{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let mut body = BytesMut::with_capacity(head.len() + payload.content_length() + tail.len());
        body.extend_from_slice(head.as_bytes());
        for b in payload.iter() {
            body.extend_from_slice(b);
        }
        body.extend_from_slice(tail.as_bytes());
        let mut u = self.url(true, None)?;
        u.query_pairs_mut().append_pair("uploadType", "multipart");
        if create_only {
            u.query_pairs_mut().append_pair("ifGenerationMatch", "0");
        }
        let resp = self
            .send(
                self.encrypted(self.http.post(u))
                    .header(
                        "Content-Type",
                        format!("multipart/related; boundary={boundary}"),
                    )
                    .body(body.freeze()),
            )
            .await?;
        self.finished(key, resp, create_only).await
    }

    /// The answer to a request that completes an upload.
    async fn finished(
        &self,
        key: &str,
        resp: Response,
        create_only: bool,
    ) -> object_store::Result<PutResult> {
        match resp.status() {
            s if s.is_success() => {
                let body = resp.bytes().await.map_err(transport)?;
                let r: Option<Resource> = serde_json::from_slice(&body).ok();
                Ok(PutResult {
                    e_tag: r.and_then(|r| r.etag.or(r.md5_hash)),
                    version: None,
                })
            }
            StatusCode::NOT_FOUND => Err(no_bucket(&self.bucket)),
            StatusCode::PRECONDITION_FAILED if create_only => {
                Err(object_store::Error::AlreadyExists {
                    path: key.to_string(),
                    source: "GCS answered 412 Precondition Failed to ifGenerationMatch=0".into(),
                })
            }
            _ => Err(fail(key, resp).await),
        }
    }
}

/// `p/` for a path prefix, empty for none (object_store's prefixes are whole path segments).
fn dir_prefix(prefix: Option<&Path>) -> String {
    prefix
        .map(|p| format!("{}/", p.as_ref()))
        .filter(|p| p != "/")
        .unwrap_or_default()
}

/// `bytes a-b/*`, or `bytes a-b/total` on the last chunk; `bytes */total` for an empty last one.
fn content_range(offset: u64, len: usize, total: Option<u64>) -> String {
    let total = total.map_or("*".to_string(), |t| t.to_string());
    if len == 0 {
        format!("bytes */{total}")
    } else {
        format!("bytes {}-{}/{total}", offset, offset + len as u64 - 1)
    }
}

/// How much of `available` bytes a chunk that is not the last may carry.
fn aligned(available: usize) -> usize {
    available - available % CHUNK_UNIT
}

#[async_trait::async_trait]
impl ObjectStore for Gcs {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let create_only = match opts.mode {
            PutMode::Create => true,
            PutMode::Overwrite => false,
            PutMode::Update(_) => return Err(object_store::Error::NotImplemented),
        };
        self.inner
            .put_object(location.as_ref(), payload, create_only)
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let key = location.to_string();
        let mut u = self.inner.url(true, None)?;
        u.query_pairs_mut()
            .append_pair("uploadType", "resumable")
            .append_pair("name", &key)
            .append_pair("ifGenerationMatch", "0");
        let resp = self
            .inner
            .send(
                self.inner
                    .encrypted(self.inner.http.post(u))
                    .json(&serde_json::json!({ "name": key })),
            )
            .await?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(no_bucket(&self.inner.bucket)),
            _ => return Err(fail(&key, resp).await),
        }
        let session = header(&resp, "location")
            .ok_or_else(|| generic(format!("{key}: the resumable upload has no session URI")))?
            .to_string();
        let (tx, _) = watch::channel(Turn::Part(0));
        Ok(Box::new(ResumableUpload {
            inner: self.inner.clone(),
            key,
            session,
            next: 0,
            turn: Arc::new(tx),
            state: Arc::new(tokio::sync::Mutex::new(Sent {
                offset: 0,
                carry: Bytes::new(),
            })),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let key = location.as_ref();
        let mut u = self.inner.url(false, Some(key))?;
        if options.head {
            let resp = self
                .inner
                .send(self.inner.encrypted(self.inner.http.get(u)))
                .await?;
            match resp.status() {
                s if s.is_success() => {}
                StatusCode::NOT_FOUND => return Err(self.inner.not_found(key, resp).await),
                _ => return Err(fail(key, resp).await),
            }
            let body = resp.bytes().await.map_err(transport)?;
            let r: Resource = serde_json::from_slice(&body)
                .map_err(|e| generic(format!("metadata of {key:?}: {e}")))?;
            let meta = r.meta()?;
            return Ok(GetResult {
                range: 0..meta.size,
                payload: GetResultPayload::Stream(futures::stream::empty().boxed()),
                meta: ObjectMeta {
                    location: location.clone(),
                    ..meta
                },
                attributes: Default::default(),
            });
        }
        u.query_pairs_mut().append_pair("alt", "media");
        let mut r = self
            .inner
            .encrypted(self.inner.http.request(Method::GET, u));
        if let Some(range) = &options.range {
            r = r.header(
                "Range",
                match range {
                    GetRange::Bounded(r) => {
                        format!("bytes={}-{}", r.start, r.end.saturating_sub(1))
                    }
                    GetRange::Offset(o) => format!("bytes={o}-"),
                    GetRange::Suffix(n) => format!("bytes=-{n}"),
                },
            );
        }
        let resp = self.inner.send(r).await?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(self.inner.not_found(key, resp).await),
            _ => return Err(fail(key, resp).await),
        }
        Ok(super::http::get_result(location, resp, false, transport))
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        let key = location.as_ref();
        let u = self.inner.url(false, Some(key))?;
        let resp = self.inner.send(self.inner.http.delete(u)).await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(self.inner.not_found(key, resp).await),
            _ => Err(fail(key, resp).await),
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
        let prefix = dir_prefix(prefix);
        let mut out = ListResult {
            common_prefixes: Vec::new(),
            objects: Vec::new(),
        };
        let mut token: Option<String> = None;
        loop {
            let page = self
                .inner
                .page(&prefix, token.as_deref(), None, true)
                .await?;
            out.objects.extend(page.objects);
            out.common_prefixes.extend(page.prefixes);
            match page.next {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.rewrite(from, to, false).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.rewrite(from, to, true).await
    }
}

impl Gcs {
    /// A server-side copy (`rewriteTo`), repeated with the rewrite token until done.
    async fn rewrite(&self, from: &Path, to: &Path, create_only: bool) -> object_store::Result<()> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Progress {
            done: Option<bool>,
            rewrite_token: Option<String>,
        }
        let inner = &self.inner;
        let mut token: Option<String> = None;
        loop {
            let mut u = inner.url(false, Some(from.as_ref()))?;
            if let Ok(mut segs) = u.path_segments_mut() {
                segs.extend(["rewriteTo", "b", &inner.bucket, "o", to.as_ref()]);
            }
            {
                let mut q = u.query_pairs_mut();
                if create_only {
                    q.append_pair("ifGenerationMatch", "0");
                }
                if let Some(t) = &token {
                    q.append_pair("rewriteToken", t);
                }
            }
            let resp = inner
                .send({
                    let r = inner.encrypted(inner.http.post(u));
                    match &inner.csek {
                        Some(k) => k.apply(r, true),
                        None => r,
                    }
                    .header("Content-Length", "0")
                })
                .await?;
            match resp.status() {
                s if s.is_success() => {}
                StatusCode::PRECONDITION_FAILED if create_only => {
                    return Err(object_store::Error::AlreadyExists {
                        path: to.to_string(),
                        source: "GCS answered 412 Precondition Failed".into(),
                    })
                }
                StatusCode::NOT_FOUND => {
                    return Err(inner.not_found(from.as_ref(), resp).await);
                }
                _ => return Err(fail(from.as_ref(), resp).await),
            }
            let body = resp.bytes().await.map_err(transport)?;
            let p: Progress = serde_json::from_slice(&body)
                .map_err(|e| generic(format!("rewrite of {from} to {to}: {e}")))?;
            match (p.done, p.rewrite_token) {
                (Some(false), Some(t)) => token = Some(t),
                _ => return Ok(()),
            }
        }
    }
}

/// Whose turn it is to send: parts go out in the order `put_part` was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Part(usize),
    /// A part failed: the session's content is unknown, every later part fails too.
    Failed,
}

/// What the session holds so far, and the bytes (under one chunk unit) waiting for the next
/// part or the final request.
#[derive(Debug)]
struct Sent {
    offset: u64,
    carry: Bytes,
}

/// A resumable upload being written.
#[derive(Debug)]
struct ResumableUpload {
    inner: Arc<Inner>,
    key: String,
    /// The session URI the initiation answered.
    session: String,
    next: usize,
    turn: Arc<watch::Sender<Turn>>,
    state: Arc<tokio::sync::Mutex<Sent>>,
}

impl ResumableUpload {
    /// Waits until every part before `n` has been sent.
    async fn wait_turn(
        turn: &watch::Sender<Turn>,
        n: usize,
        key: &str,
    ) -> object_store::Result<()> {
        let mut rx = turn.subscribe();
        let t = rx
            .wait_for(|t| *t == Turn::Part(n) || *t == Turn::Failed)
            .await
            .map_err(|_| generic(format!("{key}: the upload was dropped")))?;
        if *t == Turn::Failed {
            return Err(generic(format!(
                "{key}: an earlier part of the resumable upload failed"
            )));
        }
        Ok(())
    }

    /// Sends `body` at `offset`: `total` set on the last request.
    async fn send_chunk(
        inner: &Inner,
        session: &str,
        key: &str,
        offset: u64,
        body: Bytes,
        total: Option<u64>,
    ) -> object_store::Result<Response> {
        let range = content_range(offset, body.len(), total);
        let r = inner
            .encrypted(inner.http.put(session))
            .header("Content-Range", range)
            .body(body);
        let resp = inner.send(r).await?;
        // A chunk that is not the last is answered 308 Resume Incomplete.
        if total.is_none() && resp.status().as_u16() != 308 {
            return Err(fail(key, resp).await);
        }
        Ok(resp)
    }
}

#[async_trait::async_trait]
impl MultipartUpload for ResumableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let n = self.next;
        self.next += 1;
        let inner = self.inner.clone();
        let session = self.session.clone();
        let key = self.key.clone();
        let turn = self.turn.clone();
        let state = self.state.clone();
        Box::pin(async move {
            Self::wait_turn(&turn, n, &key).await?;
            let mut st = state.lock().await;
            let mut buf = BytesMut::with_capacity(st.carry.len() + data.content_length());
            buf.extend_from_slice(&st.carry);
            for b in data.iter() {
                buf.extend_from_slice(b);
            }
            let mut buf = buf.freeze();
            let send = aligned(buf.len());
            let res = if send == 0 {
                Ok(())
            } else {
                let chunk = buf.split_to(send);
                let offset = st.offset;
                match Self::send_chunk(&inner, &session, &key, offset, chunk, None).await {
                    Ok(resp) => {
                        let held = header(&resp, "range")
                            .and_then(|r| r.strip_prefix("bytes=0-"))
                            .and_then(|n| n.parse::<u64>().ok())
                            .map(|n| n + 1);
                        let end = offset + send as u64;
                        match held {
                            Some(h) if h != end => Err(generic(format!(
                                "{key}: GCS holds {h} bytes of the resumable upload, {end} were sent"
                            ))),
                            _ => {
                                st.offset = end;
                                Ok(())
                            }
                        }
                    }
                    Err(e) => Err(e),
                }
            };
            match res {
                Ok(()) => {
                    st.carry = buf;
                    turn.send_replace(Turn::Part(n + 1));
                    Ok(())
                }
                Err(e) => {
                    turn.send_replace(Turn::Failed);
                    Err(e)
                }
            }
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        Self::wait_turn(&self.turn, self.next, &self.key).await?;
        let mut st = self.state.lock().await;
        let carry = std::mem::take(&mut st.carry);
        let total = st.offset + carry.len() as u64;
        let resp = Self::send_chunk(
            &self.inner,
            &self.session,
            &self.key,
            st.offset,
            carry,
            Some(total),
        )
        .await?;
        // The session is gone once it answers; a 404 here is not a missing bucket.
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(generic(format!(
                "{}: the resumable upload session is gone (404)",
                self.key
            )));
        }
        let res = self.inner.finished(&self.key, resp, true).await?;
        st.offset = total;
        Ok(res)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.turn.send_replace(Turn::Failed);
        let resp = self
            .inner
            .send(self.inner.http.delete(&self.session))
            .await?;
        // GCS answers 499 to a cancelled session; 404/410 means it is already gone.
        match resp.status().as_u16() {
            499 | 404 | 410 => Ok(()),
            s if (200..300).contains(&s) => Ok(()),
            _ => Err(fail(&self.key, resp).await),
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
            r#"{"error":{"code":503,"message":"Backend Error"}}"#,
        );
        assert_eq!(classify(&e), Class::Transient);
        assert!(
            e.to_string()
                .contains("503 Service Unavailable: Backend Error"),
            "{e}"
        );
        assert_eq!(
            classify(&status_error("k", StatusCode::NOT_FOUND, "")),
            Class::NotFound
        );
        assert_eq!(classify(&no_bucket("b")), Class::NoBucket);
        assert_eq!(
            classify(&status_error("k", StatusCode::FORBIDDEN, "")),
            Class::Permanent
        );
        assert_eq!(
            classify(&status_error("k", StatusCode::TOO_MANY_REQUESTS, "")),
            Class::Transient
        );
    }

    #[test]
    fn chunks_but_the_last_are_whole_units_and_ranges_name_the_total_only_at_the_end() {
        assert_eq!(aligned(5 * 1024 * 1024 + 17), 5 * 1024 * 1024);
        assert_eq!(aligned(CHUNK_UNIT - 1), 0);
        assert_eq!(content_range(0, CHUNK_UNIT, None), "bytes 0-262143/*");
        assert_eq!(
            content_range(262144, 10, Some(262154)),
            "bytes 262144-262153/262154"
        );
        assert_eq!(content_range(262144, 0, Some(262144)), "bytes */262144");
    }

    #[test]
    fn listings_and_resources_parse() {
        let body = br#"{"kind":"storage#objects","prefixes":["a/c/"],"nextPageToken":"t1",
            "items":[{"name":"a/b","size":"5","updated":"2026-12-04T02:37:21.004122Z","etag":"XUFA"}]}"#;
        let l: Listing = serde_json::from_slice(body).unwrap();
        assert_eq!(l.prefixes, vec!["a/c/"]);
        assert_eq!(l.next_page_token.as_deref(), Some("t1"));
        let m = l.items.into_iter().next().unwrap().meta().unwrap();
        assert_eq!(m.size, 5);
        assert_eq!(m.location.as_ref(), "a/b");
        assert_eq!(
            m.last_modified.to_rfc3339(),
            "2026-12-04T02:37:21.004122+00:00"
        );
        let empty: Listing = serde_json::from_slice(br#"{"kind":"storage#objects"}"#).unwrap();
        assert!(empty.items.is_empty() && empty.next_page_token.is_none());
        let bad = Resource {
            name: "x".into(),
            size: Some("five".into()),
            updated: None,
            etag: None,
            md5_hash: None,
        };
        assert!(bad.meta().is_err());
        assert_eq!(emulator_base("127.0.0.1:4443"), "http://127.0.0.1:4443");
    }

    #[test]
    fn a_customer_supplied_key_is_32_bytes_of_base64_sent_with_its_hash_and_never_shown() {
        // 32 zero bytes, and their SHA-256, as GCS's documentation computes them.
        let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let k = Csek::parse(key).unwrap();
        assert_eq!(k.sha256, "Zmh6rfhivXdsj8GLjp+OIAiXFIVu4jOzkCpZHQ1fKSU=");
        let r = k
            .apply(reqwest::Client::new().get("http://127.0.0.1:9/x"), false)
            .build()
            .unwrap();
        assert_eq!(r.headers()["x-goog-encryption-algorithm"], "AES256");
        assert_eq!(r.headers()["x-goog-encryption-key"], key);
        let g = Gcs::new(
            "http://127.0.0.1:9",
            "b",
            None,
            Some(k),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!format!("{g:?}").contains(key));
        assert!(Csek::parse("AAAA").unwrap_err().contains("3 bytes"));
        assert!(Csek::parse("not base64!").is_err());
        assert_eq!(emulator_base("https://h:1"), "https://h:1");
    }
}
