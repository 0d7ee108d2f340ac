//! One storage abstraction over object_store: file://, s3://, gs://, az:// (wabs:// alias),
//! swift:// (OpenStack Swift, [`swift`]).
//!
//! Reads, lists and deletes go through object_store for every scheme. Writes to file:// go
//! through [`local`] (temporary name, fsync, link into place, fsync the directory), because
//! object_store's local backend does not fsync. Every write is create-only. Errors go through
//! one retry policy ([`retry`]): transient ones are retried within `retry_timeout` (small calls)
//! or until `retry_timeout` passes without progress (large transfers); permanent ones fail at
//! once.

mod gcs;
mod http;
pub mod local;
mod retry;
mod swift;
pub mod swift_auth;
mod url;

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{
    GetResultPayload, MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};
use retry::{Backoff, Class};

use crate::config::Settings;
use crate::error::{Error, Result};
pub use url::{parse_prefix, Location};

/// Part size for uploads larger than one request (S3's minimum part size).
const UPLOAD_BUFFER: usize = 5 * 1024 * 1024;
/// The most time spent aborting a failed multipart upload.
const ABORT_BUDGET: Duration = Duration::from_secs(3);
/// Parts of one upload sent at once, when it is the process's only upload. Uploads running
/// side by side (backup partitions) each send a part and wait for it before filling the next:
/// they keep the connections busy between them, and every part held costs [`UPLOAD_BUFFER`]
/// bytes of memory, so a process holds about one part per upload.
const PARTS_IN_FLIGHT: usize = 2;

/// Remote uploads running in this process.
static ACTIVE_UPLOADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts one remote upload while it lives.
struct Active;

impl Active {
    fn new() -> Active {
        ACTIVE_UPLOADS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE_UPLOADS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How many parts one upload may have in flight while it fills the next one.
fn parts_in_flight() -> usize {
    if ACTIVE_UPLOADS.load(std::sync::atomic::Ordering::SeqCst) > 1 {
        0
    } else {
        PARTS_IN_FLIGHT
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// Key prefix inside the bucket (empty for file://).
    root: String,
    /// Set for file://: the directory that holds the archive.
    local_root: Option<PathBuf>,
    retry_timeout: Duration,
    /// Where the archive is, for messages (never holds credentials).
    pub description: String,
    /// The bucket or container, for messages.
    bucket: Option<String>,
    /// The store's name in messages.
    scheme: &'static str,
    /// Can a single put be made create-only (S3 `If-None-Match: *`, GCS generation 0, Azure)?
    create_only_put: bool,
    /// Can a multipart upload's completion be made create-only (S3 `If-None-Match: *`)?
    create_only_multipart: bool,
    /// Attributes every upload carries (the S3 storage class).
    put_attributes: object_store::Attributes,
}

impl Store {
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let prefix = settings.require_prefix()?;
        let location = parse_prefix(prefix)?;
        let description = location.describe();
        let built = url::build(&location, settings)?;
        let (bucket, scheme) = match &location {
            Location::File(_) => (None, "file"),
            Location::S3 { bucket, .. } => (Some(bucket.clone()), "S3"),
            Location::Gcs { bucket, .. } => (Some(bucket.clone()), "GCS"),
            Location::Azure { container, .. } => (Some(container.clone()), "Azure"),
            Location::Swift { container, .. } => (Some(container.clone()), "Swift"),
        };
        Ok(Store {
            inner: built.store,
            root: built.root,
            local_root: built.local_root,
            retry_timeout: settings.retry_timeout,
            description,
            bucket,
            scheme,
            create_only_put: built.create_only_put,
            create_only_multipart: built.create_only_multipart,
            put_attributes: built.put_attributes,
        })
    }

    fn put_mode(&self) -> PutMode {
        if self.create_only_put {
            PutMode::Create
        } else {
            PutMode::Overwrite
        }
    }

    /// The full object key of a path relative to the archive prefix.
    pub fn key(&self, rel: &str) -> ObjPath {
        if self.root.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{}", self.root, rel))
        }
    }

    fn strip<'a>(&self, key: &'a str) -> &'a str {
        if self.root.is_empty() {
            key
        } else {
            key.strip_prefix(self.root.as_str())
                .map(|k| k.trim_start_matches('/'))
                .unwrap_or(key)
        }
    }

    /// The longest one request (or one received chunk of a stream) may take without an answer.
    fn idle(&self) -> Duration {
        self.retry_timeout.max(retry::MIN_ATTEMPT)
    }

    /// The error a failed call ends with: one line, naming the archive (and so the bucket) and
    /// the cause, and whether it was retried.
    fn fail(&self, op: &'static str, rel: &str, e: object_store::Error, b: &Backoff) -> Error {
        let class = retry::classify(&e);
        let source = match (&e, class) {
            // Callers act on these (a writer that lost a race): keep them as they are.
            (object_store::Error::AlreadyExists { .. }, _) => e,
            (object_store::Error::NotFound { .. }, Class::NotFound) => e,
            (_, Class::NoBucket) => self.message(format!(
                "{} {:?} of {} does not exist ({}); not retried",
                self.container_word(),
                self.bucket.as_deref().unwrap_or(""),
                self.description,
                retry::cause(&e)
            )),
            (_, Class::Permanent | Class::NotFound) => self.message(format!(
                "{}: {}; not retried",
                self.description,
                retry::cause(&e)
            )),
            (_, Class::Transient) => self.message(format!(
                "{}: {} (gave up after {} attempt{} within WALKEEPER_RETRY_TIMEOUT={}s)",
                self.description,
                retry::cause(&e),
                b.attempts,
                if b.attempts == 1 { "" } else { "s" },
                self.retry_timeout.as_secs()
            )),
        };
        Error::Storage {
            op,
            key: rel.to_string(),
            source,
        }
    }

    fn container_word(&self) -> &'static str {
        if self.description.starts_with("az://") || self.description.starts_with("swift://") {
            "container"
        } else {
            "bucket"
        }
    }

    fn message(&self, msg: String) -> object_store::Error {
        object_store::Error::Generic {
            store: self.scheme,
            source: msg.into(),
        }
    }

    /// Runs one small call until it succeeds, fails permanently, or the retry timeout passes;
    /// every attempt is cut off at that deadline, so the whole call ends by it.
    async fn retry<T, F, Fut>(&self, what: &'static str, rel: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let deadline = Instant::now() + self.retry_timeout;
        let mut backoff = Backoff::new();
        loop {
            let limit = retry::attempt_limit(Instant::now(), deadline);
            let res = match tokio::time::timeout_at(limit.into(), op()).await {
                Ok(r) => r,
                Err(_) => Err(retry::stalled(what, self.retry_timeout)),
            };
            let e = match res {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match retry::classify(&e) {
                Class::NotFound => {
                    return Err(Error::NotFound {
                        key: rel.to_string(),
                    })
                }
                Class::Transient => {
                    if let Some(d) = backoff.next_delay(Instant::now(), deadline) {
                        tracing::warn!(op = what, key = rel, attempt = backoff.attempts - 1, error = %retry::cause(&e), "transient storage error, retrying");
                        tokio::time::sleep(d).await;
                        continue;
                    }
                    return Err(self.fail(what, rel, e, &backoff));
                }
                Class::Permanent | Class::NoBucket => return Err(self.fail(what, rel, e, &backoff)),
            }
        }
    }

    /// Runs one listing until it succeeds, fails permanently, or the retry timeout passes with
    /// no progress: every page must arrive within the retry timeout, however long the whole
    /// listing takes.
    async fn retry_list<'s>(
        &'s self,
        what: &'static str,
        rel: &str,
        mut open: impl FnMut() -> BoxStream<'s, object_store::Result<ObjectMeta>>,
        more: impl Fn(&str) -> bool,
    ) -> Result<Vec<ObjectMeta>> {
        let progress = Progress::new();
        let mut backoff = Backoff::new();
        let idle = self.idle();
        let sorted = self.local_root.is_none();
        loop {
            let mut s = open();
            let mut out = Vec::new();
            let res: object_store::Result<()> = async {
                loop {
                    match tokio::time::timeout(idle, s.try_next()).await {
                        Err(_) => return Err(retry::stalled(what, idle)),
                        Ok(Err(e)) => return Err(e),
                        Ok(Ok(None)) => return Ok(()),
                        Ok(Ok(Some(m))) => {
                            progress.touch();
                            if more(self.strip(m.location.as_ref())) {
                                out.push(m);
                            } else if sorted {
                                return Ok(());
                            }
                        }
                    }
                }
            }
            .await;
            let e = match res {
                Ok(()) => return Ok(out),
                Err(e) => e,
            };
            match retry::classify(&e) {
                Class::NotFound => return Ok(Vec::new()),
                Class::Transient => {
                    if let Some(d) =
                        backoff.next_delay(Instant::now(), progress.last() + self.retry_timeout)
                    {
                        tracing::warn!(op = what, key = rel, attempt = backoff.attempts - 1, error = %retry::cause(&e), "transient storage error, retrying");
                        tokio::time::sleep(d).await;
                        continue;
                    }
                    return Err(self.fail(what, rel, e, &backoff));
                }
                Class::Permanent | Class::NoBucket => return Err(self.fail(what, rel, e, &backoff)),
            }
        }
    }

    /// Metadata of an object, or None when it does not exist.
    pub async fn head(&self, rel: &str) -> Result<Option<ObjectMeta>> {
        let key = self.key(rel);
        match self.retry("head", rel, || self.inner.head(&key)).await {
            Ok(m) => Ok(Some(m)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens an object for streaming. None when it does not exist. The request is bounded by
    /// the retry timeout; each chunk of the body must then arrive within it.
    pub async fn get(&self, rel: &str) -> Result<Option<object_store::GetResult>> {
        let key = self.key(rel);
        match self.retry("get", rel, || self.inner.get(&key)).await {
            Ok(mut r) => {
                if let GetResultPayload::Stream(s) = r.payload {
                    r.payload = GetResultPayload::Stream(idle_bounded(s, self.idle()));
                }
                Ok(Some(r))
            }
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists objects under a relative prefix, with keys relative to the archive prefix.
    pub async fn list(&self, rel_prefix: &str) -> Result<Vec<(String, ObjectMeta)>> {
        let key = self.key(rel_prefix.trim_end_matches('/'));
        let metas = self
            .retry_list("list", rel_prefix, || self.inner.list(Some(&key)), |_| true)
            .await?;
        Ok(metas
            .into_iter()
            .map(|m| (self.strip(m.location.as_ref()).to_string(), m))
            .collect())
    }

    /// Lists the objects directly in a folder (not in its subfolders): one call with a delimiter.
    pub async fn list_top(&self, rel_folder: &str) -> Result<Vec<(String, ObjectMeta)>> {
        let key = self.key(rel_folder.trim_end_matches('/'));
        let res = match self
            .retry("list", rel_folder, || {
                self.inner.list_with_delimiter(Some(&key))
            })
            .await
        {
            Ok(r) => r.objects,
            Err(Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(res
            .into_iter()
            .map(|m| (self.strip(m.location.as_ref()).to_string(), m))
            .collect())
    }

    /// Reads a small object (a sentinel, metadata) whole.
    pub async fn get_bytes(&self, rel: &str) -> Result<Bytes> {
        let key = self.key(rel);
        self.retry("get", rel, || async {
            match self.inner.get(&key).await {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Is this a file:// store (uploads are writes to a local directory)?
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// Stores a small object durably; fails if it exists (see [`Store::put_stream`]).
    pub async fn put_bytes(&self, rel: &str, body: Bytes) -> Result<u64> {
        self.put_stream(rel, move |w| w.write_all(&body)).await
    }

    /// The objects named `<rel_stem>.<ext>` for one of `exts` (every codec's copy of one WAL
    /// file). On file:// this stats the candidates instead of listing a folder that may hold
    /// millions of files.
    pub async fn find_stem(
        &self,
        rel_stem: &str,
        exts: &[&str],
    ) -> Result<Vec<(String, ObjectMeta)>> {
        if self.local_root.is_some() {
            let mut out = Vec::new();
            for ext in exts {
                let rel = format!("{rel_stem}.{ext}");
                if let Some(m) = self.head(&rel).await? {
                    out.push((rel, m));
                }
            }
            return Ok(out);
        }
        // Keys sharing the stem also include longer names (`<segment>.<offset>.backup` after
        // `<segment>`): keep exactly `<stem>.<ext>`.
        let (folder, _) = rel_stem.rsplit_once('/').unwrap_or(("", rel_stem));
        let stem = rel_stem.to_string();
        let all = self
            .list_after(folder, rel_stem, move |k| k.starts_with(&stem))
            .await?;
        Ok(all
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix(rel_stem)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|ext| exts.contains(&ext))
            })
            .collect())
    }

    /// Lists the objects in `folder` whose keys sort after `after` (both relative to the
    /// archive prefix), in key order, while `more` holds. Object stores list in key order, so
    /// this reads only the range asked for; a local directory lists in no order, so there every
    /// entry is read and filtered.
    pub async fn list_after(
        &self,
        folder: &str,
        after: &str,
        more: impl Fn(&str) -> bool + Clone,
    ) -> Result<Vec<(String, ObjectMeta)>> {
        let folder_key = self.key(folder);
        let after_key = self.key(after);
        let metas = self
            .retry_list(
                "list",
                after,
                || self.inner.list_with_offset(Some(&folder_key), &after_key),
                more,
            )
            .await?;
        let mut out: Vec<(String, ObjectMeta)> = metas
            .into_iter()
            .map(|m| (self.strip(m.location.as_ref()).to_string(), m))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Opens an object as a blocking reader (for the decoders, which are synchronous). None when
    /// it does not exist. Errors of a remote stream (a cut or stalled body included) surface as
    /// `ConnectionAborted` reads.
    pub async fn open_read(&self, rel: &str) -> Result<Option<Box<dyn io::Read + Send>>> {
        if let Some(root) = &self.local_root {
            let path = root.join(rel);
            return match std::fs::File::open(&path) {
                Ok(f) => Ok(Some(Box::new(f))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(path, e)),
            };
        }
        let Some(res) = self.get(rel).await? else {
            return Ok(None);
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
        let mut stream = res.into_stream();
        tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let item = item.map_err(|e| {
                    io::Error::new(io::ErrorKind::ConnectionAborted, retry::cause(&e))
                });
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Some(Box::new(ChannelReader {
            rx,
            cur: Bytes::new(),
        })))
    }

    pub async fn delete(&self, rel: &str) -> Result<()> {
        let key = self.key(rel);
        match self.retry("delete", rel, || self.inner.delete(&key)).await {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stores `body`, produced by a blocking encoder, under `rel`. The object appears under its
    /// final name only once it is complete and durable, and only if no object of that name
    /// exists: the error is then `Error::Storage` with `object_store::Error::AlreadyExists`
    /// (file://: a hard link; S3, GCS, Azure: a create-only put; see DESIGN.md for the stores
    /// and sizes where this cannot be guaranteed). Returns the stored size in bytes.
    ///
    /// `produce` writes the object's bytes into the given writer; it runs on a blocking thread
    /// and may be called again when a transient error makes the upload restart. An upload that
    /// fails leaves no multipart upload open.
    pub async fn put_stream<F>(&self, rel: &str, produce: F) -> Result<u64>
    where
        F: Fn(&mut dyn io::Write) -> io::Result<()> + Send + Sync + 'static,
    {
        self.put_stream_before(rel, None, produce).await
    }

    /// [`Store::put_stream`], but the object must be complete before `cutoff`: past it, the
    /// upload is abandoned before the object could appear, and the error is
    /// [`Error::Deadline`]. (wal-push on a cluster member: the leader key's lease.)
    pub async fn put_stream_before<F>(
        &self,
        rel: &str,
        cutoff: Option<Instant>,
        produce: F,
    ) -> Result<u64>
    where
        F: Fn(&mut dyn io::Write) -> io::Result<()> + Send + Sync + 'static,
    {
        let produce = Arc::new(produce);
        let progress = Progress::new();
        let mut backoff = Backoff::new();
        loop {
            let res = match &self.local_root {
                Some(root) => {
                    let attempt = local::put(root, rel, produce.clone(), cutoff);
                    match cutoff {
                        Some(c) => match tokio::time::timeout_at(c.into(), attempt).await {
                            Ok(r) => r,
                            Err(_) => Err(PutError::Source(Error::Deadline {
                                key: rel.to_string(),
                            })),
                        },
                        None => attempt.await,
                    }
                }
                None => {
                    self.put_remote(rel, produce.clone(), cutoff, &progress)
                        .await
                }
            };
            let e = match res {
                Ok(n) => return Ok(n),
                Err(PutError::Source(e)) => return Err(e),
                Err(PutError::Store(e)) => e,
            };
            // A missing object during an upload is a multipart upload the store lost: start
            // over.
            if matches!(retry::classify(&e), Class::Transient | Class::NotFound) {
                let mut deadline = progress.last() + self.retry_timeout;
                if let Some(c) = cutoff {
                    deadline = deadline.min(c);
                }
                if let Some(d) = backoff.next_delay(Instant::now(), deadline) {
                    tracing::warn!(key = rel, attempt = backoff.attempts - 1, error = %retry::cause(&e), "transient storage error during upload, retrying");
                    tokio::time::sleep(d).await;
                    continue;
                }
            }
            return Err(self.fail("put", rel, e, &backoff));
        }
    }

    /// One attempt at an upload to an object store. Small objects (under one part) go in one
    /// create-only put; larger ones in a multipart upload of [`UPLOAD_BUFFER`] parts, completed
    /// create-only where the store allows it. Every request must answer within the retry
    /// timeout; any failure aborts the multipart upload before returning.
    async fn put_remote<F>(
        &self,
        rel: &str,
        produce: Arc<F>,
        cutoff: Option<Instant>,
        progress: &Progress,
    ) -> Result<u64, PutError>
    where
        F: Fn(&mut dyn io::Write) -> io::Result<()> + Send + Sync + 'static,
    {
        let _active = Active::new();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
        let producer = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter::new(tx);
            produce(&mut w)?;
            w.finish()
        });
        let mut up = Upload {
            store: self,
            rel,
            key: self.key(rel),
            upload: std::sync::Mutex::new(None),
            parts: VecDeque::new(),
            cutoff,
            progress,
        };
        let res = up.run(rx, producer).await;
        if res.is_err() {
            up.abort().await;
        }
        res
    }
}

/// One attempt at a remote upload, and the multipart upload it may have opened.
struct Upload<'a> {
    store: &'a Store,
    rel: &'a str,
    key: ObjPath,
    /// In a mutex only to make the attempt's future `Send` (`dyn MultipartUpload` is not
    /// `Sync`); reached through `get_mut`, never locked.
    upload: std::sync::Mutex<Option<Box<dyn MultipartUpload>>>,
    parts: VecDeque<tokio::task::JoinHandle<object_store::Result<()>>>,
    cutoff: Option<Instant>,
    progress: &'a Progress,
}

impl Upload<'_> {
    fn open_upload(&mut self) -> &mut Option<Box<dyn MultipartUpload>> {
        self.upload
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `fut` within the retry timeout (and the cutoff, if sooner).
    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, PutError> {
        let idle = self.store.idle();
        // Nothing runs on once the retry timeout has passed since the last progress.
        let now = Instant::now();
        let mut limit = retry::attempt_limit(
            now,
            (now + idle).min(self.progress.last() + self.store.retry_timeout),
        );
        let by_cutoff = self.cutoff.is_some_and(|c| c < limit);
        if let Some(c) = self.cutoff {
            limit = limit.min(c);
        }
        match tokio::time::timeout_at(limit.into(), fut).await {
            Ok(Ok(v)) => {
                self.progress.touch();
                Ok(v)
            }
            Ok(Err(e)) => Err(PutError::Store(e)),
            Err(_) if by_cutoff => Err(self.deadline()),
            Err(_) => Err(PutError::Store(retry::stalled(what, idle))),
        }
    }

    /// Where the store cannot refuse to overwrite, look first (this narrows the race to the
    /// time of one request; it cannot close it).
    async fn refuse_existing(&self) -> Result<(), PutError> {
        match self.bounded("head", self.store.inner.head(&self.key)).await {
            Ok(_) => Err(PutError::Store(object_store::Error::AlreadyExists {
                path: self.key.to_string(),
                source: "the object already exists".into(),
            })),
            Err(PutError::Store(object_store::Error::NotFound { .. })) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn deadline(&self) -> PutError {
        PutError::Source(Error::Deadline {
            key: self.rel.to_string(),
        })
    }

    fn past_cutoff(&self) -> bool {
        self.cutoff.is_some_and(|c| Instant::now() >= c)
    }

    /// Waits for the oldest part in flight.
    async fn join_oldest(&mut self) -> Result<(), PutError> {
        if let Some(mut h) = self.parts.pop_front() {
            // A part still in flight at the cutoff abandons the upload: waiting for it could
            // only end in an object that appears after the lease may have passed.
            let joined = match self.cutoff {
                Some(c) => match tokio::time::timeout_at(c.into(), &mut h).await {
                    Ok(r) => r,
                    Err(_) => {
                        h.abort();
                        return Err(self.deadline());
                    }
                },
                None => h.await,
            };
            match joined {
                Ok(Ok(())) => self.progress.touch(),
                Ok(Err(e)) => return Err(PutError::Store(e)),
                Err(e) => return Err(PutError::Store(task_failed(e))),
            }
        }
        Ok(())
    }

    /// Sends one part; at most [`parts_in_flight`] are in flight.
    async fn send_part(&mut self, payload: PutPayload) -> Result<(), PutError> {
        if self.open_upload().is_none() {
            let opened = self
                .bounded(
                    "create multipart upload",
                    self.store.inner.put_multipart_opts(
                        &self.key,
                        PutMultipartOptions {
                            attributes: self.store.put_attributes.clone(),
                            ..Default::default()
                        },
                    ),
                )
                .await?;
            *self.open_upload() = Some(opened);
        }
        while self.parts.len() >= parts_in_flight().max(1) {
            self.join_oldest().await?;
        }
        let Some(upload) = self.open_upload().as_mut() else {
            return Ok(());
        };
        let fut = upload.put_part(payload);
        let idle = self.store.idle();
        self.parts.push_back(tokio::spawn(async move {
            match tokio::time::timeout(idle, fut).await {
                Ok(r) => r,
                Err(_) => Err(retry::stalled("upload part", idle)),
            }
        }));
        if parts_in_flight() == 0 {
            self.join_oldest().await?;
        }
        Ok(())
    }

    async fn run(
        &mut self,
        mut rx: tokio::sync::mpsc::Receiver<Bytes>,
        producer: tokio::task::JoinHandle<io::Result<()>>,
    ) -> Result<u64, PutError> {
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_len = 0usize;
        let mut total = 0u64;
        let mut failed = None;
        loop {
            // Past the cutoff the upload is abandoned, however slow the producer is.
            let next = match self.cutoff {
                Some(c) => match tokio::time::timeout_at(c.into(), rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        failed = Some(self.deadline());
                        break;
                    }
                },
                None => rx.recv().await,
            };
            let Some(chunk) = next else { break };
            total += chunk.len() as u64;
            pending_len += chunk.len();
            pending.push(chunk);
            if pending_len >= UPLOAD_BUFFER {
                let payload: PutPayload = std::mem::take(&mut pending).into_iter().collect();
                pending_len = 0;
                if let Err(e) = self.send_part(payload).await {
                    failed = Some(e);
                    break;
                }
            }
        }
        // The producer stops at its next write once the channel is gone.
        drop(rx);
        let produced = producer
            .await
            .map_err(|e| PutError::Source(Error::io(self.rel, io::Error::other(e.to_string()))))?;
        if let Some(e) = failed {
            return Err(e);
        }
        // A producer that failed has sent only part of the object: never complete it.
        produced.map_err(|e| PutError::Source(Error::io(self.rel, e)))?;
        if self.past_cutoff() {
            return Err(self.deadline());
        }
        let payload: PutPayload = pending.into_iter().collect();
        if self.open_upload().is_none() {
            if !self.store.create_only_put {
                self.refuse_existing().await?;
            }
            let opts = PutOptions {
                attributes: self.store.put_attributes.clone(),
                ..PutOptions::from(self.store.put_mode())
            };
            self.bounded("put", self.store.inner.put_opts(&self.key, payload, opts))
                .await
                .map_err(already_exists)?;
            return Ok(total);
        }
        if payload.content_length() > 0 {
            self.send_part(payload).await?;
        }
        while !self.parts.is_empty() {
            self.join_oldest().await?;
        }
        if !self.store.create_only_multipart {
            self.refuse_existing().await?;
        }
        if self.past_cutoff() {
            return Err(self.deadline());
        }
        let mut upload = self.open_upload().take();
        let res = match upload.as_mut() {
            Some(u) => {
                self.bounded("complete multipart upload", u.complete())
                    .await
            }
            None => Ok(PutResult {
                e_tag: None,
                version: None,
            }),
        };
        match res {
            Ok(_) => Ok(total),
            Err(e) => {
                *self.open_upload() = upload;
                Err(already_exists(e))
            }
        }
    }

    /// Aborts the multipart upload, if one is open: its parts in flight first, then the upload
    /// itself, within the retry timeout. A failed abort is logged (the store's lifecycle rules
    /// are then the only cleanup).
    async fn abort(&mut self) {
        for h in self.parts.drain(..) {
            h.abort();
            let _ = h.await;
        }
        let Some(mut upload) = self.open_upload().take() else {
            return;
        };
        // A short budget of its own: the call has already spent its retry timeout.
        let budget = self
            .store
            .retry_timeout
            .clamp(retry::MIN_ATTEMPT, ABORT_BUDGET);
        let deadline = Instant::now() + budget;
        let mut backoff = Backoff::new();
        loop {
            let res = match tokio::time::timeout_at(deadline.into(), upload.abort()).await {
                Ok(r) => r,
                Err(_) => Err(retry::stalled("abort multipart upload", budget)),
            };
            match res {
                Ok(()) => return,
                // Completed after all, or already gone.
                Err(object_store::Error::NotFound { .. }) => return,
                Err(e) => {
                    if retry::classify(&e) == Class::Transient {
                        if let Some(d) = backoff.next_delay(Instant::now(), deadline) {
                            tokio::time::sleep(d).await;
                            continue;
                        }
                    }
                    tracing::warn!(key = self.rel, error = %retry::cause(&e), "could not abort the multipart upload; it stays open until the store's lifecycle rules remove it");
                    return;
                }
            }
        }
    }
}

/// A create-only put that found the object there is a writer that lost a race.
fn already_exists(e: PutError) -> PutError {
    match e {
        PutError::Store(
            e
            @ (object_store::Error::Precondition { .. } | object_store::Error::NotModified { .. }),
        ) => PutError::Store(object_store::Error::AlreadyExists {
            path: match &e {
                object_store::Error::Precondition { path, .. }
                | object_store::Error::NotModified { path, .. } => path.clone(),
                _ => String::new(),
            },
            source: Box::new(e),
        }),
        other => other,
    }
}

fn task_failed(e: tokio::task::JoinError) -> object_store::Error {
    object_store::Error::Generic {
        store: "walkeeper",
        source: Box::new(e),
    }
}

/// When a long call last made progress (a request answered, a chunk arrived).
#[derive(Debug, Clone)]
pub(crate) struct Progress(Arc<std::sync::Mutex<Instant>>);

impl Progress {
    fn new() -> Self {
        Progress(Arc::new(std::sync::Mutex::new(Instant::now())))
    }
    fn touch(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = Instant::now();
        }
    }
    fn last(&self) -> Instant {
        self.0.lock().map(|t| *t).unwrap_or_else(|_| Instant::now())
    }
}

/// A stream whose every item must arrive within `idle`; a stall ends it with an error.
fn idle_bounded(
    s: BoxStream<'static, object_store::Result<Bytes>>,
    idle: Duration,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    futures::stream::unfold(Some(s), move |state| async move {
        let mut s = state?;
        match tokio::time::timeout(idle, s.next()).await {
            Ok(Some(item)) => Some((item, Some(s))),
            Ok(None) => None,
            Err(_) => Some((Err(retry::stalled("download", idle)), None)),
        }
    })
    .boxed()
}

/// Why an upload failed: the data source (not retried) or the store (retried when transient).
pub(crate) enum PutError {
    Source(Error),
    Store(object_store::Error),
}

/// A blocking writer that hands fixed-size chunks to an async consumer.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

const CHANNEL_CHUNK: usize = 256 * 1024;

impl ChannelWriter {
    fn new(tx: tokio::sync::mpsc::Sender<Bytes>) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHANNEL_CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHANNEL_CHUNK));
        self.tx
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))
    }

    fn finish(mut self) -> io::Result<()> {
        self.send()
    }
}

impl io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHANNEL_CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHANNEL_CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A blocking reader over chunks sent by an async task.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}
