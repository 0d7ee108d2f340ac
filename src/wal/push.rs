//! `wal-push`: archive_command.
//!
//! Exit 0 only once the object is durable. An identical existing object is success without an
//! upload; a different one is refused. With look-ahead, one call also starts the upload of other
//! `.ready` segments in a detached process, which records them, so PostgreSQL's later calls for
//! them return after a stat.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::codec::{self, Compression};
use crate::error::{Error, Result};
use crate::selfexec::SelfExec;
use crate::storage::local::ensure_dir;
use crate::wal::gate::{PushDecision, UploadGate};
use crate::wal::names::{check_segment_head, WalName, SEGMENT_HEAD_LEN};
use crate::wal::{sweep_stale_temps, WalContext};

/// Look-ahead uploads run at most this many at once (and at most one per core), to keep memory
/// bounded.
const MAX_PARALLEL: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Uploaded {
        bytes_in: u64,
        bytes_out: u64,
    },
    /// The archive already holds identical content.
    AlreadyArchived,
    /// An earlier look-ahead upload of this very file was recorded.
    Recorded,
}

impl PushOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            PushOutcome::Uploaded { .. } => "uploaded",
            PushOutcome::AlreadyArchived | PushOutcome::Recorded => "already-archived",
        }
    }
}

/// Validates the argument PostgreSQL passed (`%p`): a WAL file name, inside `pg_wal`, readable.
pub fn validate_source(ctx: &WalContext, arg: &Path) -> Result<(WalName, PathBuf)> {
    let path = ctx.resolve_in_pgdata(arg)?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::BadInput(format!("{}: no file name", arg.display())))?;
    let name = WalName::parse(file_name)?;
    if path.parent() != Some(ctx.pg_wal.as_path()) {
        return Err(Error::BadInput(format!(
            "{} is not in {}",
            arg.display(),
            ctx.pg_wal.display()
        )));
    }
    let meta = std::fs::symlink_metadata(&path)
        .map_err(|e| Error::BadInput(format!("{}: cannot archive: {e}", path.display())))?;
    if meta.file_type().is_symlink() {
        return Err(Error::BadInput(format!(
            "{} is a symbolic link; WAL files are regular files",
            path.display()
        )));
    }
    if !meta.is_file() {
        return Err(Error::BadInput(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    File::open(&path)
        .map_err(|e| Error::BadInput(format!("{}: cannot read: {e}", path.display())))?;
    Ok((name, path))
}

/// Archives the file PostgreSQL asked for. With look-ahead configured and `spawn_with` given
/// (the global options to start walkeeper with), it first hands up to N other `.ready` segments
/// to a detached `wal-push-ahead` process: they upload while this call uploads its own, and
/// PostgreSQL's later calls for them wait on their locks and find them recorded. This call
/// returns as soon as its own segment is durable.
pub async fn wal_push(
    ctx: Arc<WalContext>,
    leadership: Arc<dyn UploadGate>,
    arg: &Path,
    spawn_with: Option<&SelfExec>,
) -> Result<(WalName, PushOutcome)> {
    let (name, path) = validate_source(&ctx, arg)?;
    sweep_stale_temps(&ctx.pg_wal);
    sweep_stale_temps(&ctx.state_dir);
    // A running uploader goes on to the newer `.ready` files itself: no listing, no spawn.
    if let (Some(global), true) = (
        spawn_with,
        ctx.settings.push_lookahead > 0 && !AheadLock::is_held(&ctx),
    ) {
        let ahead = lookahead_candidates(&ctx, Some(&name), None, ctx.settings.push_lookahead);
        if !ahead.is_empty() {
            spawn_push_ahead(&ctx, &ahead, global);
        }
    }
    push_one(&ctx, &*leadership, &name, &path, false)
        .await
        .map(|o| (name, o))
}

/// Starts `walkeeper wal-push-ahead` for `names`, detached (its own process group), so that
/// PostgreSQL's archiver is not held up by it.
fn spawn_push_ahead(ctx: &WalContext, names: &[WalName], exec: &SelfExec) {
    let mut args: Vec<OsString> = vec!["wal-push-ahead".into(), "--pgdata".into()];
    args.push(ctx.pgdata.clone().into_os_string());
    args.extend(names.iter().map(|n| OsString::from(n.to_string())));
    match exec.spawn_detached(args) {
        Ok(()) => tracing::debug!(segments = names.len(), "look-ahead started"),
        Err(e) => tracing::warn!(error = %e, "could not start look-ahead"),
    }
}

/// `wal-push-ahead`: the one look-ahead uploader of a data directory (a second one exits at
/// once). It uploads `names`, then the newer `.ready` files as they appear, until none is
/// left, keeping at most `parallel` uploads in flight: one per core on file://, one on a
/// remote store (whose upload holds the compressed object in memory until its PUT;
/// PostgreSQL's own call uploads beside it). Each is claimed first (one whose lock another
/// process holds is left to it) and recorded once durable, so that PostgreSQL's own call for
/// it costs a `stat`. A segment whose `.ready` file is gone was archived by PostgreSQL's own
/// call meanwhile. Failures are only logged, and stop the look-ahead: PostgreSQL retries.
pub async fn push_ahead(
    ctx: Arc<WalContext>,
    leadership: Arc<dyn UploadGate>,
    names: &[WalName],
) -> usize {
    let _ahead = match AheadLock::try_acquire(&ctx) {
        Ok(Some(l)) => l,
        Ok(None) => return 0,
        Err(e) => {
            tracing::warn!(error = %e, "look-ahead: cannot lock");
            return 0;
        }
    };
    let window = ctx.settings.push_lookahead.max(1);
    let parallel = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, MAX_PARALLEL)
        .min(window);
    let mut queue: std::collections::VecDeque<WalName> = names.iter().cloned().collect();
    let mut last: Option<WalName> = None;
    let mut tasks: tokio::task::JoinSet<Option<(WalName, Result<PushOutcome>)>> =
        tokio::task::JoinSet::new();
    let (mut done, mut failed) = (0, false);
    loop {
        if queue.is_empty() && !failed && tasks.len() < parallel {
            queue = lookahead_candidates(&ctx, None, last.as_ref(), window).into();
        }
        let next = if tasks.len() < parallel && !failed {
            queue.pop_front()
        } else {
            None
        };
        let Some(n) = next else {
            // A full window, or nothing new: wait for an upload to end.
            match tasks.join_next().await {
                None => break,
                Some(Ok(Some((n, Ok(outcome))))) => {
                    done += 1;
                    tracing::debug!(segment = %n, outcome = outcome.label(), "look-ahead")
                }
                Some(Ok(Some((n, Err(e))))) => {
                    failed = true;
                    tracing::warn!(segment = %n, error = %e, "look-ahead upload failed; PostgreSQL will retry it")
                }
                Some(Ok(None)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "look-ahead task failed"),
            }
            continue;
        };
        last = Some(n.clone());
        let lock = match NameLock::try_acquire(&ctx, &n).await {
            Ok(Some(lock)) => lock,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(segment = %n, error = %e, "look-ahead: cannot lock");
                continue;
            }
        };
        let (ctx, leadership) = (ctx.clone(), leadership.clone());
        tasks.spawn(async move {
            let ready = ctx.archive_status_dir().join(format!("{n}.ready"));
            if !ready.exists() {
                return None;
            }
            let path = ctx.pg_wal.join(n.to_string());
            let res = push_locked(&ctx, &*leadership, &n, &path, true).await;
            drop(lock);
            Some((n, res))
        });
    }
    done
}

/// The oldest `.ready` files other than `current` (and newer than `after`), not yet recorded
/// as pushed nor being pushed.
fn lookahead_candidates(
    ctx: &WalContext,
    current: Option<&WalName>,
    after: Option<&WalName>,
    n: usize,
) -> Vec<WalName> {
    let Ok(entries) = std::fs::read_dir(ctx.archive_status_dir()) else {
        return Vec::new();
    };
    let mut names: Vec<WalName> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let f = e.file_name();
            let base = f.to_str()?.strip_suffix(".ready")?.to_string();
            WalName::parse(&base).ok()
        })
        .filter(|w| Some(w) != current && after.is_none_or(|a| w > a))
        .collect();
    names.sort_by_key(|w| w.to_string());
    names
        .into_iter()
        .filter(|w| !record_path(ctx, w).exists() && !NameLock::is_held(ctx, w))
        .take(n)
        .collect()
}

fn record_path(ctx: &WalContext, name: &WalName) -> PathBuf {
    ctx.state_dir.join("pushed").join(name.to_string())
}

/// What a look-ahead upload records: which local file (by identity) went to which object of
/// which archive, and how large that object is. It is trusted only for the same file and the
/// same archive, and only while a HEAD of the object finds it with that size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PushRecord {
    identity: String,
    archive: String,
    key: String,
    size: u64,
}

impl PushRecord {
    const VERSION: &'static str = "walkeeper-pushed-v2";

    fn render(&self) -> String {
        format!(
            "{}\nidentity {}\narchive {}\nkey {}\nsize {}\n",
            Self::VERSION,
            self.identity,
            self.archive,
            self.key,
            self.size
        )
    }

    /// None for anything else (an older record without archive or key is not trusted).
    fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()? != Self::VERSION {
            return None;
        }
        let mut field = |name: &str| -> Option<String> {
            lines
                .next()?
                .strip_prefix(name)?
                .strip_prefix(' ')
                .map(String::from)
        };
        Some(PushRecord {
            identity: field("identity")?,
            archive: field("archive")?,
            key: field("key")?,
            size: field("size")?.parse().ok()?,
        })
    }
}

/// Is the look-ahead record of `name` proof that `path` is archived? Only when it was made for
/// this very file, for this archive, and the object is still there with the recorded size.
async fn record_holds(ctx: &WalContext, rec: &Path, path: &Path) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(rec) else {
        return Ok(false);
    };
    let Some(r) = PushRecord::parse(&text) else {
        return Ok(false);
    };
    let now = file_identity(path).map_err(|e| Error::io(path, e))?;
    if r.identity != now || r.archive != ctx.archive_id {
        return Ok(false);
    }
    Ok(ctx
        .store
        .head(&r.key)
        .await?
        .is_some_and(|m| m.size == r.size))
}

/// Refuses a segment file that is not a whole segment of this cluster: its long page header
/// must name this segment (address, timeline, segment size), its size must be the header's
/// segment size, and its system identifier the archive's, when the archive knows one.
/// `.partial`, `.history` and `.backup` files keep their own rules.
async fn check_source_segment(ctx: &WalContext, name: &WalName, path: &Path) -> Result<()> {
    let WalName::Segment(seg) = name else {
        return Ok(());
    };
    let refuse = |msg: String| {
        Error::BadInput(format!(
            "{}: not archiving: not segment {name} of this cluster: {msg}",
            path.display()
        ))
    };
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = Vec::with_capacity(SEGMENT_HEAD_LEN);
    (&mut f)
        .take(SEGMENT_HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    if head.len() < SEGMENT_HEAD_LEN {
        return Err(refuse(format!("{len} bytes, shorter than a page header")));
    }
    let (h, size) = check_segment_head(&head, seg, None).map_err(refuse)?;
    if len != size.get() {
        return Err(refuse(format!(
            "{len} bytes, but its header's segment size is {size}"
        )));
    }
    match ctx.archive_sysid(h.system_identifier).await? {
        Some(archived) if archived != h.system_identifier => Err(refuse(format!(
            "its system identifier is {}, but the archive {} belongs to the cluster with system \
             identifier {archived}; two clusters must not share a prefix",
            h.system_identifier, ctx.store.description
        ))),
        _ => Ok(()),
    }
}

/// The identity of a local file, cheap to check: size, mtime and inode.
fn file_identity(path: &Path) -> io::Result<String> {
    let m = std::fs::metadata(path)?;
    Ok(format!(
        "{} {} {} {}",
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    ))
}

/// Archives one WAL file that is known to be a valid, complete file in pg_wal (gap healing,
/// the agent's `/wal-push`), under the same checks as archive_command.
pub async fn push_file(
    ctx: &Arc<WalContext>,
    leadership: &dyn UploadGate,
    name: &WalName,
    path: &Path,
) -> Result<PushOutcome> {
    push_one(ctx, leadership, name, path, false).await
}

/// Archives one file under its per-name lock.
async fn push_one(
    ctx: &Arc<WalContext>,
    leadership: &dyn UploadGate,
    name: &WalName,
    path: &Path,
    record: bool,
) -> Result<PushOutcome> {
    let _lock = NameLock::acquire(ctx, name).await?;
    push_locked(ctx, leadership, name, path, record).await
}

/// Archives one file; the caller holds its lock.
async fn push_locked(
    ctx: &Arc<WalContext>,
    leadership: &dyn UploadGate,
    name: &WalName,
    path: &Path,
    record: bool,
) -> Result<PushOutcome> {
    let started = Instant::now();
    check_source_segment(ctx, name, path).await?;

    // A look-ahead upload of this very file to this archive, recorded once durable, and still
    // there.
    let rec = record_path(ctx, name);
    if rec.exists() {
        if record_holds(ctx, &rec, path).await? {
            if !record {
                let _ = std::fs::remove_file(&rec);
            }
            log_outcome(name, PushOutcome::Recorded, started);
            return Ok(PushOutcome::Recorded);
        }
        let _ = std::fs::remove_file(&rec);
    }

    let stem = name.key_stem();
    let exts: Vec<&str> = Compression::ALL.iter().map(|c| c.ext()).collect();
    let existing = ctx.store.find_stem(&stem, &exts).await?;
    let (outcome, stored) = if let Some((key, meta)) = existing.first() {
        // Identical content is success for any member; no need to ask who leads.
        compare_existing(ctx, name, path, key).await?;
        (PushOutcome::AlreadyArchived, (key.clone(), meta.size))
    } else {
        let size = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        let deadline = match leadership.decide(name, size, &ctx.archive).await? {
            PushDecision::Upload { deadline } => deadline,
            PushDecision::VerifyOnly { reason } => {
                return Err(Error::NotLeader(format!(
                    "{name}: not archived and this member may not upload it: {reason}"
                )))
            }
        };
        let compression = ctx.settings.compression;
        let key = format!("{stem}.{}", compression.ext());
        let (src_path, ctx2) = (path.to_path_buf(), ctx.clone());
        let bytes_in = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = bytes_in.clone();
        let put = ctx
            .store
            .put_stream_before(&key, deadline, move |sink| {
                let f = File::open(&src_path)?;
                let (_, stats) = codec::encode(f, sink, compression, ctx2.encryption.as_ref())?;
                counter.store(stats.bytes_in, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            })
            .await;
        match put {
            Ok(bytes_out) => (
                PushOutcome::Uploaded {
                    bytes_in: bytes_in.load(std::sync::atomic::Ordering::Relaxed),
                    bytes_out,
                },
                (key, bytes_out),
            ),
            Err(Error::Storage {
                source: object_store::Error::AlreadyExists { .. },
                ..
            }) => {
                // Another writer won the race; it must have stored the same bytes.
                compare_existing(ctx, name, path, &key).await?;
                let size = ctx.store.head(&key).await?.map(|m| m.size).unwrap_or(0);
                (PushOutcome::AlreadyArchived, (key, size))
            }
            Err(e) => return Err(e),
        }
    };
    if record {
        let r = PushRecord {
            identity: file_identity(path).map_err(|e| Error::io(path, e))?,
            archive: ctx.archive_id.clone(),
            key: stored.0,
            size: stored.1,
        };
        let dir = ctx.state_dir.join("pushed");
        ensure_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        // Not fsynced: a torn record does not parse, or names a size the HEAD does not find.
        std::fs::write(&rec, r.render()).map_err(|e| Error::io(&rec, e))?;
    }
    log_outcome(name, outcome, started);
    Ok(outcome)
}

fn log_outcome(name: &WalName, outcome: PushOutcome, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match outcome {
        PushOutcome::Uploaded {
            bytes_in,
            bytes_out,
        } => tracing::info!(
            segment = %name,
            outcome = outcome.label(),
            bytes_in,
            bytes_out,
            ms = format!("{ms:.1}"),
            "archived"
        ),
        _ => {
            tracing::info!(segment = %name, outcome = outcome.label(), ms = format!("{ms:.1}"), "archived")
        }
    }
}

/// Succeeds when the archived object decodes to exactly the local file's bytes; otherwise a
/// [`Error::Conflict`] naming both sizes and digests.
async fn compare_existing(
    ctx: &Arc<WalContext>,
    name: &WalName,
    path: &Path,
    key: &str,
) -> Result<()> {
    let compression = key
        .rsplit_once('.')
        .and_then(|(_, ext)| Compression::from_ext(ext))
        .ok_or_else(|| Error::Corrupt {
            key: key.to_string(),
            msg: "unknown codec extension".into(),
        })?;
    let reader = ctx
        .store
        .open_read(key)
        .await?
        .ok_or_else(|| Error::NotFound {
            key: key.to_string(),
        })?;
    let (ctx2, path2, key2) = (ctx.clone(), path.to_path_buf(), key.to_string());
    let (archived, local) = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut hasher = HashWriter::default();
        let archived = codec::decode(reader, &mut hasher, compression, ctx2.decryption.as_ref())
            .map(|n| (n, hex::encode(hasher.0.finalize())));
        let local = sha256_file(&path2).map_err(|e| Error::io(&path2, e))?;
        Ok((archived, local))
    })
    .await
    .map_err(|e| Error::io(path, io::Error::other(e.to_string())))??;
    let (archived_size, archived_sha256) = match archived {
        Ok(v) => v,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // Encrypted and no identity here: cannot compare, so cannot claim it is identical.
            return Err(Error::Corrupt {
                key: key2,
                msg: format!("already archived but cannot be compared: {e}"),
            });
        }
        Err(e) => {
            return Err(Error::Corrupt {
                key: key2,
                msg: format!("already archived but unreadable: {e}"),
            })
        }
    };
    if (archived_size, &archived_sha256) == (local.0, &local.1) {
        return Ok(());
    }
    Err(Error::Conflict {
        name: name.to_string(),
        archived_size,
        archived_sha256,
        local_size: local.0,
        local_sha256: local.1,
    })
}

fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; codec::CHUNK];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

#[derive(Default)]
struct HashWriter(Sha256);

impl io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An exclusive per-name lock in the state directory, removed when released.
struct NameLock {
    path: PathBuf,
    _file: File,
}

impl NameLock {
    async fn acquire(ctx: &WalContext, name: &WalName) -> Result<Self> {
        let dir = ctx.state_dir.join("locks");
        let path = dir.join(name.to_string());
        tokio::task::spawn_blocking(move || -> Result<NameLock> {
            ensure_dir(&dir).map_err(|e| Error::io(&dir, e))?;
            loop {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|e| Error::io(&path, e))?;
                file.lock().map_err(|e| Error::io(&path, e))?;
                // The holder before us may have removed the file; lock the one that is there.
                let held = file.metadata().map_err(|e| Error::io(&path, e))?.ino();
                match std::fs::metadata(&path) {
                    Ok(m) if m.ino() == held => return Ok(NameLock { path, _file: file }),
                    _ => continue,
                }
            }
        })
        .await
        .map_err(|e| Error::io("lock", io::Error::other(e.to_string())))?
    }
}

impl NameLock {
    /// The lock if nobody holds it now, else None.
    async fn try_acquire(ctx: &WalContext, name: &WalName) -> Result<Option<Self>> {
        let dir = ctx.state_dir.join("locks");
        let path = dir.join(name.to_string());
        tokio::task::spawn_blocking(move || -> Result<Option<NameLock>> {
            ensure_dir(&dir).map_err(|e| Error::io(&dir, e))?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            let held = file.metadata().map_err(|e| Error::io(&path, e))?.ino();
            match std::fs::metadata(&path) {
                Ok(m) if m.ino() == held => Ok(Some(NameLock { path, _file: file })),
                // Its holder removed it as we opened it: it was just done.
                _ => Ok(None),
            }
        })
        .await
        .map_err(|e| Error::io("lock", io::Error::other(e.to_string())))?
    }

    /// Does another process hold the lock of `name` right now?
    fn is_held(ctx: &WalContext, name: &WalName) -> bool {
        lock_is_held(&ctx.state_dir.join("locks").join(name.to_string()))
    }
}

/// Does a process hold the exclusive lock on `path` right now?
fn lock_is_held(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

/// Held by the running look-ahead uploader of a data directory, for its lifetime.
struct AheadLock {
    _file: File,
}

impl AheadLock {
    fn path(ctx: &WalContext) -> PathBuf {
        ctx.state_dir.join("ahead.lock")
    }

    /// The lock if no other uploader holds it, else None.
    fn try_acquire(ctx: &WalContext) -> Result<Option<Self>> {
        ensure_dir(&ctx.state_dir).map_err(|e| Error::io(&ctx.state_dir, e))?;
        let path = Self::path(ctx);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(AheadLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }

    /// Is an uploader running for this data directory?
    fn is_held(ctx: &WalContext) -> bool {
        lock_is_held(&Self::path(ctx))
    }
}

impl Drop for NameLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    const SYSID: u64 = 7_000_000_000_000_000_001;
    const SEG: usize = 1 << 20;

    struct Env {
        _dir: tempfile::TempDir,
        archive: PathBuf,
        pgdata: PathBuf,
    }

    impl Env {
        fn new() -> Env {
            let dir = tempfile::tempdir().unwrap();
            let archive = dir.path().join("archive");
            let pgdata = dir.path().join("data");
            std::fs::create_dir_all(&archive).unwrap();
            std::fs::create_dir_all(pgdata.join("pg_wal/archive_status")).unwrap();
            Env {
                _dir: dir,
                archive,
                pgdata,
            }
        }

        fn ctx_at(&self, archive: &Path) -> Arc<WalContext> {
            let process = [(
                "WALG_FILE_PREFIX".to_string(),
                archive.display().to_string(),
            )]
            .into_iter()
            .collect();
            let settings = Settings::from_sources(process, None, None).unwrap();
            Arc::new(WalContext::new(settings, Some(&self.pgdata)).unwrap())
        }

        fn ctx(&self) -> Arc<WalContext> {
            self.ctx_at(&self.archive)
        }

        /// Writes a 1 MiB segment file whose header says `(tli, segno, sysid)`, under `name`.
        fn segment(&self, name: &str, tli: u32, segno: u64, sysid: u64) -> PathBuf {
            let mut v = vec![0x5au8; SEG];
            v[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
            v[2..4].copy_from_slice(&2u16.to_le_bytes());
            v[4..8].copy_from_slice(&tli.to_le_bytes());
            v[8..16].copy_from_slice(&(segno * SEG as u64).to_le_bytes());
            v[24..32].copy_from_slice(&sysid.to_le_bytes());
            v[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
            v[36..40].copy_from_slice(&8192u32.to_le_bytes());
            let p = self.pgdata.join("pg_wal").join(name);
            std::fs::write(&p, v).unwrap();
            p
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn leadership() -> crate::wal::gate::AlwaysUpload {
        crate::wal::gate::AlwaysUpload
    }

    fn objects(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.retain(|p| !p.starts_with(".walkeeper-tmp"));
        out.sort();
        out
    }

    #[test]
    fn a_record_renders_and_parses_back_and_rejects_older_or_torn_ones() {
        let r = PushRecord {
            identity: "16777216 1 2 3".into(),
            archive: "ab".repeat(32),
            key: "wal_005/000000010000000000000001.lz4".into(),
            size: 1234,
        };
        assert_eq!(PushRecord::parse(&r.render()), Some(r.clone()));
        // The record format before archives were bound: identity only.
        assert_eq!(PushRecord::parse("16777216 1 2 3"), None);
        let text = r.render();
        for cut in 0..text.len() - " 1234\n".len() {
            assert_eq!(PushRecord::parse(&text[..cut]), None, "{cut}");
        }
    }

    #[test]
    fn a_record_holds_only_for_its_file_its_archive_and_an_object_still_there() {
        let env = Env::new();
        let rt = rt();
        let ctx = env.ctx();
        let name = WalName::parse("000000010000000000000001").unwrap();
        let path = env.segment(&name.to_string(), 1, 1, SYSID);
        let l = leadership();
        let pushed = rt
            .block_on(push_locked(&ctx, &l, &name, &path, true))
            .unwrap();
        assert!(matches!(pushed, PushOutcome::Uploaded { .. }));
        let rec = record_path(&ctx, &name);
        assert!(rt.block_on(record_holds(&ctx, &rec, &path)).unwrap());
        assert_eq!(
            rt.block_on(push_locked(&ctx, &l, &name, &path, true))
                .unwrap(),
            PushOutcome::Recorded
        );

        // Another archive: the record says nothing about it.
        let other = env.archive.with_file_name("other");
        std::fs::create_dir_all(&other).unwrap();
        let ctx2 = env.ctx_at(&other);
        assert!(!rt.block_on(record_holds(&ctx2, &rec, &path)).unwrap());

        // The object removed behind walkeeper's back.
        let key = env.archive.join(objects(&env.archive)[0].clone());
        std::fs::remove_file(&key).unwrap();
        assert!(!rt.block_on(record_holds(&ctx, &rec, &path)).unwrap());
        let again = rt
            .block_on(push_locked(&ctx, &l, &name, &path, false))
            .unwrap();
        assert!(matches!(again, PushOutcome::Uploaded { .. }), "{again:?}");
        assert!(key.exists());

        // The same name, another file (a recycled segment rewritten): not this record's.
        rt.block_on(push_locked(&ctx, &l, &name, &path, true))
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        env.segment(&name.to_string(), 1, 1, SYSID);
        assert!(!rt.block_on(record_holds(&ctx, &rec, &path)).unwrap());
    }

    #[test]
    fn segment_files_that_are_not_this_segment_are_refused_before_any_upload() {
        let env = Env::new();
        let rt = rt();
        let ctx = env.ctx();
        let l = leadership();
        let name = WalName::parse("000000020000000000000003").unwrap();
        let path = env.pgdata.join("pg_wal").join(name.to_string());
        let full = |tli, segno, sysid| {
            env.segment(&name.to_string(), tli, segno, sysid);
            std::fs::read(&path).unwrap()
        };
        let good = full(2, 3, SYSID);
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("half", good[..SEG / 2].to_vec()),
            ("longer", [good.clone(), vec![0; 4096]].concat()),
            ("another segment", full(2, 4, SYSID)),
            ("a later timeline", full(3, 3, SYSID)),
        ];
        let mut bad_magic = good.clone();
        bad_magic[0] = 0;
        cases.push(("magic", bad_magic));
        for (what, bytes) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let e = rt
                .block_on(push_locked(&ctx, &l, &name, &path, false))
                .unwrap_err();
            assert!(matches!(e, Error::BadInput(_)), "{what}: {e}");
            assert_eq!(e.exit_code(), 2, "{what}");
            assert!(objects(&env.archive).is_empty(), "{what}");
        }
        // The old timeline's segment copied at promotion keeps its tli: archived.
        std::fs::write(&path, full(1, 3, SYSID)).unwrap();
        rt.block_on(push_locked(&ctx, &l, &name, &path, false))
            .unwrap();
        assert_eq!(objects(&env.archive).len(), 1);
    }

    #[test]
    fn a_segment_of_another_cluster_is_refused_naming_both_identifiers() {
        let env = Env::new();
        let rt = rt();
        let l = leadership();
        std::fs::create_dir_all(env.archive.join("sysids")).unwrap();
        std::fs::write(env.archive.join("sysids/sysid"), format!("{SYSID}\n")).unwrap();
        let ctx = env.ctx();
        let name = WalName::parse("000000010000000000000001").unwrap();
        let path = env.segment(&name.to_string(), 1, 1, SYSID + 1);
        let e = rt
            .block_on(push_locked(&ctx, &l, &name, &path, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&SYSID.to_string()), "{e}");
        assert!(e.contains(&(SYSID + 1).to_string()), "{e}");
        assert_eq!(objects(&env.archive), vec!["sysids/sysid".to_string()]);
        env.segment(&name.to_string(), 1, 1, SYSID);
        rt.block_on(push_locked(&ctx, &l, &name, &path, false))
            .unwrap();
        // Remembered for this archive: the next segment costs no request, and another cluster's
        // is still refused (the remembered value is only a shortcut for a match).
        let again = WalName::parse("000000010000000000000002").unwrap();
        let p2 = env.segment(&again.to_string(), 1, 2, SYSID + 1);
        assert!(rt
            .block_on(push_locked(&ctx, &l, &again, &p2, false))
            .is_err());
    }

    #[test]
    fn a_sentinel_names_the_cluster_when_no_sysid_is_recorded() {
        let env = Env::new();
        let rt = rt();
        let l = leadership();
        let b = env.archive.join("basebackups_005");
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(
            b.join("base_000000010000000000000002_backup_stop_sentinel.json"),
            format!(r#"{{"LSN":"0/2000028","FinishLSN":"0/2000100","SystemIdentifier":{SYSID}}}"#),
        )
        .unwrap();
        let ctx = env.ctx();
        let name = WalName::parse("000000010000000000000003").unwrap();
        let path = env.segment(&name.to_string(), 1, 3, 5);
        let e = rt
            .block_on(push_locked(&ctx, &l, &name, &path, false))
            .unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
    }

    #[test]
    fn history_partial_and_backup_files_keep_their_own_rules() {
        let env = Env::new();
        let rt = rt();
        let ctx = env.ctx();
        let l = leadership();
        for n in [
            "00000002.history",
            "000000010000000000000005.partial",
            "000000010000000000000002.00000028.backup",
        ] {
            let path = env.pgdata.join("pg_wal").join(n);
            std::fs::write(&path, b"not a segment header").unwrap();
            let name = WalName::parse(n).unwrap();
            rt.block_on(push_locked(&ctx, &l, &name, &path, false))
                .unwrap();
        }
        assert_eq!(objects(&env.archive).len(), 3);
    }

    #[test]
    fn a_name_lock_is_exclusive_and_its_release_frees_it() {
        let env = Env::new();
        let rt = rt();
        let ctx = env.ctx();
        let name = WalName::parse("000000010000000000000001").unwrap();
        let held = rt.block_on(NameLock::acquire(&ctx, &name)).unwrap();
        assert!(NameLock::is_held(&ctx, &name));
        assert!(rt
            .block_on(NameLock::try_acquire(&ctx, &name))
            .unwrap()
            .is_none());
        drop(held);
        assert!(!NameLock::is_held(&ctx, &name));
        let again = rt.block_on(NameLock::try_acquire(&ctx, &name)).unwrap();
        assert!(again.is_some());

        let ahead = AheadLock::try_acquire(&ctx).unwrap().expect("free");
        assert!(AheadLock::is_held(&ctx));
        assert!(AheadLock::try_acquire(&ctx).unwrap().is_none());
        drop(ahead);
        assert!(!AheadLock::is_held(&ctx));
    }

    /// A member that may not upload: it only verifies what the archive holds.
    #[derive(Debug)]
    struct NeverUpload;

    impl UploadGate for NeverUpload {
        fn decide<'a>(
            &'a self,
            _name: &'a WalName,
            _seg_size: u64,
            _archive: &'a crate::archive::Archive,
        ) -> futures::future::BoxFuture<'a, Result<PushDecision>> {
            Box::pin(async {
                Ok(PushDecision::VerifyOnly {
                    reason: "pg2 holds the leader key".into(),
                })
            })
        }
    }

    #[test]
    fn only_a_regular_wal_file_inside_pg_wal_is_taken_as_the_source() {
        let env = Env::new();
        let ctx = env.ctx();
        let seg = "000000010000000000000001";
        env.segment(seg, 1, 1, SYSID);
        let (name, path) = validate_source(&ctx, Path::new(&format!("pg_wal/{seg}"))).unwrap();
        assert_eq!(name.to_string(), seg);
        assert_eq!(path.parent(), Some(ctx.pg_wal.as_path()));
        let abs = ctx.pg_wal.join(seg);
        assert_eq!(validate_source(&ctx, &abs).unwrap().1, path);

        let wal = env.pgdata.join("pg_wal");
        std::fs::write(wal.join("notes.txt"), b"x").unwrap();
        std::fs::write(env.pgdata.join("000000010000000000000002"), b"x").unwrap();
        std::fs::create_dir(wal.join("000000010000000000000003")).unwrap();
        std::os::unix::fs::symlink(&abs, wal.join("000000010000000000000004")).unwrap();
        let outside = env.archive.join("000000010000000000000005");
        std::fs::write(&outside, b"x").unwrap();
        for (arg, why) in [
            ("pg_wal/notes.txt".to_string(), ""),
            ("000000010000000000000002".to_string(), "is not in"),
            (
                "pg_wal/000000010000000000000003".to_string(),
                "not a regular file",
            ),
            (
                "pg_wal/000000010000000000000004".to_string(),
                "symbolic link",
            ),
            (
                "pg_wal/000000010000000000000006".to_string(),
                "cannot archive",
            ),
            (outside.display().to_string(), "outside the data directory"),
            (
                "pg_wal/../../archive/000000010000000000000005".to_string(),
                "outside the data directory",
            ),
        ] {
            let e = validate_source(&ctx, Path::new(&arg)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{arg}: {e}");
            assert!(e.to_string().contains(why), "{arg}: {e}");
        }
    }

    #[test]
    fn a_member_that_may_not_upload_succeeds_only_for_an_identical_archived_copy() {
        let env = Env::new();
        let rt = rt();
        let ctx = env.ctx();
        let name = WalName::parse("000000010000000000000001").unwrap();
        let path = env.segment(&name.to_string(), 1, 1, SYSID);
        let e = rt
            .block_on(push_locked(&ctx, &NeverUpload, &name, &path, false))
            .unwrap_err();
        assert!(matches!(e, Error::NotLeader(_)), "{e}");
        assert_eq!(e.exit_code(), crate::error::EXIT_NOT_LEADER);
        assert!(e.to_string().contains("pg2 holds the leader key"), "{e}");
        assert!(objects(&env.archive).is_empty());

        let up = rt
            .block_on(push_locked(&ctx, &leadership(), &name, &path, false))
            .unwrap();
        assert!(matches!(up, PushOutcome::Uploaded { .. }), "{up:?}");
        assert_eq!(
            rt.block_on(push_locked(&ctx, &NeverUpload, &name, &path, false))
                .unwrap(),
            PushOutcome::AlreadyArchived
        );
    }

    #[test]
    fn an_archived_copy_with_other_bytes_is_a_conflict_and_stays_as_it_was() {
        let env = Env::new();
        let rt = rt();
        let ctx = env.ctx();
        let l = leadership();
        let name = WalName::parse("000000010000000000000001").unwrap();
        let path = env.segment(&name.to_string(), 1, 1, SYSID);
        rt.block_on(push_locked(&ctx, &l, &name, &path, false))
            .unwrap();
        let key = env.archive.join(&objects(&env.archive)[0]);
        let stored = std::fs::read(&key).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SEG - 1] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let e = rt
            .block_on(push_locked(&ctx, &l, &name, &path, false))
            .unwrap_err();
        match &e {
            Error::Conflict {
                name: n,
                archived_size,
                archived_sha256,
                local_size,
                local_sha256,
            } => {
                assert_eq!(n, &name.to_string());
                assert_eq!((*archived_size, *local_size), (SEG as u64, SEG as u64));
                assert_ne!(archived_sha256, local_sha256);
                assert_eq!(local_sha256, &hex::encode(Sha256::digest(&bytes)));
            }
            other => panic!("not a conflict: {other}"),
        }
        assert_eq!(e.exit_code(), crate::error::EXIT_CONFLICT);
        assert_eq!(
            std::fs::read(&key).unwrap(),
            stored,
            "the archived copy is kept"
        );
    }

    #[test]
    fn look_ahead_takes_the_oldest_ready_files_not_current_recorded_or_being_pushed() {
        let env = Env::new();
        let rt = rt();
        let ctx = env.ctx();
        let status = ctx.archive_status_dir();
        let seg = |n: u64| WalName::parse(&format!("0000000100000000{n:08X}")).unwrap();
        for n in (1..=6).rev() {
            std::fs::write(status.join(format!("{}.ready", seg(n))), b"").unwrap();
        }
        std::fs::write(status.join(format!("{}.done", seg(7))), b"").unwrap();
        std::fs::write(status.join("garbage.ready"), b"").unwrap();
        let rec = record_path(&ctx, &seg(2));
        std::fs::create_dir_all(rec.parent().unwrap()).unwrap();
        std::fs::write(&rec, b"").unwrap();
        let held = rt.block_on(NameLock::acquire(&ctx, &seg(3))).unwrap();
        assert_eq!(
            lookahead_candidates(&ctx, Some(&seg(1)), None, 2),
            vec![seg(4), seg(5)]
        );
        assert_eq!(
            lookahead_candidates(&ctx, Some(&seg(1)), Some(&seg(4)), 10),
            vec![seg(5), seg(6)]
        );
        drop(held);
        assert_eq!(
            lookahead_candidates(&ctx, None, None, 3),
            vec![seg(1), seg(3), seg(4)]
        );
        assert!(lookahead_candidates(&ctx, None, Some(&seg(6)), 3).is_empty());
    }
}
