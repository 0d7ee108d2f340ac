//! One storage abstraction over object_store: file://, s3://, gs://, az:// (wabs:// alias).
//!
//! Reads, lists and deletes go through object_store for every scheme. Writes to file:// go
//! through [`local::LocalWriter`] (temporary name, fsync, link into place, fsync the directory),
//! because object_store's local backend does not fsync. Transient errors are retried with
//! backoff within `retry_timeout`.

pub mod local;
mod url;

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjPath;
use object_store::{ObjectMeta, ObjectStore};
use tokio::io::AsyncWriteExt;

use crate::config::Settings;
use crate::error::{Error, Result};
pub use url::{parse_prefix, Location};

/// Part size for uploads larger than one request (S3's minimum part size).
const UPLOAD_BUFFER: usize = 5 * 1024 * 1024;

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
}

impl Store {
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let prefix = settings.require_prefix()?;
        let location = parse_prefix(prefix)?;
        let description = location.describe();
        let (inner, root, local_root) = url::build(&location, settings)?;
        Ok(Store {
            inner,
            root,
            local_root,
            retry_timeout: settings.retry_timeout,
            description,
        })
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

    /// Runs `op` until it succeeds, fails with a non-transient error, or the retry bound passes.
    async fn retry<T, F, Fut>(&self, what: &'static str, rel: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let deadline = Instant::now() + self.retry_timeout;
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1u32;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(Error::NotFound {
                        key: rel.to_string(),
                    })
                }
                Err(e) if is_permanent(&e) || Instant::now() + delay > deadline => {
                    return Err(Error::Storage {
                        op: what,
                        key: rel.to_string(),
                        source: e,
                    })
                }
                Err(e) => {
                    tracing::warn!(op = what, key = rel, attempt, error = %e, "transient storage error, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
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

    /// Opens an object for streaming. None when it does not exist.
    pub async fn get(&self, rel: &str) -> Result<Option<object_store::GetResult>> {
        let key = self.key(rel);
        match self.retry("get", rel, || self.inner.get(&key)).await {
            Ok(r) => Ok(Some(r)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists objects under a relative prefix, with keys relative to the archive prefix.
    pub async fn list(&self, rel_prefix: &str) -> Result<Vec<(String, ObjectMeta)>> {
        let key = self.key(rel_prefix.trim_end_matches('/'));
        let metas: Vec<ObjectMeta> = match self
            .retry("list", rel_prefix, || {
                self.inner.list(Some(&key)).try_collect()
            })
            .await
        {
            Ok(m) => m,
            Err(Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
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

    /// Stores a small object durably; fails if it exists on file://.
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
        let metas: Vec<ObjectMeta> = match self
            .retry("list", after, || {
                let mut s = self.inner.list_with_offset(Some(&folder_key), &after_key);
                let more = more.clone();
                let sorted = self.local_root.is_none();
                async move {
                    let mut out = Vec::new();
                    while let Some(m) = s.try_next().await? {
                        if more(self.strip(m.location.as_ref())) {
                            out.push(m);
                        } else if sorted {
                            break;
                        }
                    }
                    Ok(out)
                }
            })
            .await
        {
            Ok(m) => m,
            Err(Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut out: Vec<(String, ObjectMeta)> = metas
            .into_iter()
            .map(|m| (self.strip(m.location.as_ref()).to_string(), m))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Opens an object as a blocking reader (for the decoders, which are synchronous). None when
    /// it does not exist. Errors of a remote stream surface as `ConnectionAborted` reads.
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
                let item = item
                    .map_err(|e| io::Error::new(io::ErrorKind::ConnectionAborted, e.to_string()));
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
    /// final name only once it is complete and durable. Returns the stored size in bytes.
    ///
    /// `produce` writes the object's bytes into the given writer; it runs on a blocking thread
    /// and may be called again when a transient error makes the upload restart.
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
        let deadline = Instant::now() + self.retry_timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            let attempt = async {
                match &self.local_root {
                    Some(root) => local::put(root, rel, produce.clone(), cutoff).await,
                    None => self.put_remote(rel, produce.clone(), cutoff).await,
                }
            };
            let res = match cutoff {
                Some(c) => match tokio::time::timeout_at(c.into(), attempt).await {
                    Ok(r) => r,
                    Err(_) => Err(PutError::Source(Error::Deadline {
                        key: rel.to_string(),
                    })),
                },
                None => attempt.await,
            };
            match res {
                Ok(n) => return Ok(n),
                Err(PutError::Source(e)) => return Err(e),
                Err(PutError::Store(e))
                    if is_permanent(&e)
                        || Instant::now() + delay > deadline
                        || cutoff.is_some_and(|c| Instant::now() + delay > c) =>
                {
                    return Err(Error::Storage {
                        op: "put",
                        key: rel.to_string(),
                        source: e,
                    })
                }
                Err(PutError::Store(e)) => {
                    tracing::warn!(key = rel, error = %e, "transient storage error during upload, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn put_remote<F>(
        &self,
        rel: &str,
        produce: Arc<F>,
        cutoff: Option<Instant>,
    ) -> Result<u64, PutError>
    where
        F: Fn(&mut dyn io::Write) -> io::Result<()> + Send + Sync + 'static,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(2);
        let rel_owned = rel.to_string();
        let producer = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter::new(tx);
            produce(&mut w)?;
            w.finish()
        });
        let mut writer = BufWriter::with_capacity(self.inner.clone(), self.key(rel), UPLOAD_BUFFER)
            .with_max_concurrency(2);
        let mut total = 0u64;
        let mut upload_err = None;
        while let Some(chunk) = rx.recv().await {
            total += chunk.len() as u64;
            if let Err(e) = writer.put(chunk).await {
                upload_err = Some(e);
                break;
            }
        }
        drop(rx);
        let produced = producer.await.map_err(|e| {
            PutError::Source(Error::io(
                rel_owned.clone(),
                io::Error::other(e.to_string()),
            ))
        })?;
        if let Some(e) = upload_err {
            let _ = writer.abort().await;
            return Err(PutError::Store(e));
        }
        if let Err(e) = produced {
            let _ = writer.abort().await;
            return Err(PutError::Source(Error::io(rel_owned, e)));
        }
        if cutoff.is_some_and(|c| Instant::now() >= c) {
            let _ = writer.abort().await;
            return Err(PutError::Source(Error::Deadline { key: rel_owned }));
        }
        match writer.shutdown().await {
            Ok(()) => Ok(total),
            Err(e) => {
                let _ = writer.abort().await;
                Err(PutError::Store(object_store::Error::Generic {
                    store: "upload",
                    source: Box::new(e),
                }))
            }
        }
    }
}

/// Why an upload failed: the data source (not retried) or the store (retried when transient).
pub(crate) enum PutError {
    Source(Error),
    Store(object_store::Error),
}

fn is_permanent(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
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
