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

use crate::cluster::{Leadership, PushDecision};
use crate::codec::{self, Compression};
use crate::error::{Error, Result};
use crate::storage::local::ensure_dir;
use crate::wal::names::WalName;
use crate::wal::WalContext;

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
    leadership: Arc<Leadership>,
    arg: &Path,
    spawn_with: Option<&[OsString]>,
) -> Result<(WalName, PushOutcome)> {
    let (name, path) = validate_source(&ctx, arg)?;
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
    push_one(&ctx, &leadership, &name, &path, false)
        .await
        .map(|o| (name, o))
}

/// Starts `walkeeper wal-push-ahead` for `names`, detached (its own process group), so that
/// PostgreSQL's archiver is not held up by it.
fn spawn_push_ahead(ctx: &WalContext, names: &[WalName], global: &[OsString]) {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(global)
        .arg("wal-push-ahead")
        .arg("--pgdata")
        .arg(&ctx.pgdata)
        .args(names.iter().map(|n| n.to_string()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    match cmd.spawn() {
        Ok(_) => tracing::debug!(segments = names.len(), "look-ahead started"),
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
    leadership: Arc<Leadership>,
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
            let res = push_locked(&ctx, &leadership, &n, &path, true).await;
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
    leadership: &Leadership,
    name: &WalName,
    path: &Path,
) -> Result<PushOutcome> {
    push_one(ctx, leadership, name, path, false).await
}

/// Archives one file under its per-name lock.
async fn push_one(
    ctx: &Arc<WalContext>,
    leadership: &Leadership,
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
    leadership: &Leadership,
    name: &WalName,
    path: &Path,
    record: bool,
) -> Result<PushOutcome> {
    let started = Instant::now();

    // A look-ahead upload of this very file, recorded once durable.
    let rec = record_path(ctx, name);
    if let Ok(saved) = std::fs::read_to_string(&rec) {
        let now = file_identity(path).map_err(|e| Error::io(path, e))?;
        if saved.trim() == now {
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
    let outcome = if let Some((key, _)) = existing.first() {
        // Identical content is success for any member; no need to ask who leads.
        compare_existing(ctx, name, path, key).await?;
        PushOutcome::AlreadyArchived
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
            Ok(bytes_out) => PushOutcome::Uploaded {
                bytes_in: bytes_in.load(std::sync::atomic::Ordering::Relaxed),
                bytes_out,
            },
            Err(Error::Storage {
                source: object_store::Error::AlreadyExists { .. },
                ..
            }) => {
                // Another writer won the race; it must have stored the same bytes.
                compare_existing(ctx, name, path, &key).await?;
                PushOutcome::AlreadyArchived
            }
            Err(e) => return Err(e),
        }
    };
    if record {
        let id = file_identity(path).map_err(|e| Error::io(path, e))?;
        let dir = ctx.state_dir.join("pushed");
        ensure_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        std::fs::write(&rec, id).map_err(|e| Error::io(&rec, e))?;
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
