//! Durable writes for the file:// backend.
//!
//! The object is written under `<root>/.walkeeper-tmp/`, fsynced, hard-linked to its final name
//! (which fails instead of replacing an existing object), and the directory is fsynced. A crash
//! at any point leaves either no object or the complete one under the final name.
//!
//! A writer holds an exclusive `flock` on its temporary file from creating it until it is gone,
//! so a writer killed mid-write leaves a file nobody holds. Every put first sweeps the
//! temporary folder ([`sweep`]): it removes the files whose lock it can take, never one a live
//! writer holds.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::PutError;
use crate::error::Error;

const TMP_DIR: &str = ".walkeeper-tmp";
/// The most entries one sweep looks at, so a put never pays for a huge folder at once.
const SWEEP_MAX: usize = 256;
/// A file this young may be one a writer created and has not locked yet: left alone.
const SWEEP_MIN_AGE: Duration = Duration::from_secs(2);
/// A writer that counts the bytes it passes on.
pub struct Counting<W> {
    pub inner: W,
    pub n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

pub(crate) async fn put<F>(
    root: &Path,
    rel: &str,
    produce: Arc<F>,
    cutoff: Option<Instant>,
) -> Result<u64, PutError>
where
    F: Fn(&mut dyn io::Write) -> io::Result<()> + Send + Sync + 'static,
{
    let root = root.to_path_buf();
    let rel = rel.to_string();
    tokio::task::spawn_blocking(move || put_blocking(&root, &rel, &*produce, cutoff))
        .await
        .map_err(|e| PutError::Source(Error::io("upload task", io::Error::other(e.to_string()))))?
}

fn put_blocking<F>(
    root: &Path,
    rel: &str,
    produce: &F,
    cutoff: Option<Instant>,
) -> Result<u64, PutError>
where
    F: Fn(&mut dyn io::Write) -> io::Result<()>,
{
    let target = root.join(rel);
    let store_err = |path: &Path, e: io::Error| {
        PutError::Store(object_store::Error::Generic {
            store: "file",
            source: Box::new(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        })
    };
    let parent = target.parent().unwrap_or(root);
    ensure_dir(parent).map_err(|e| store_err(parent, e))?;
    let tmp_dir = root.join(TMP_DIR);
    ensure_dir(&tmp_dir).map_err(|e| store_err(&tmp_dir, e))?;
    sweep(&tmp_dir, SWEEP_MIN_AGE);
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let (tmp, file) = create_locked(&tmp_dir, name).map_err(|e| store_err(&tmp_dir, e))?;
    let guard = TmpGuard(tmp.clone());
    let mut counted = Counting {
        inner: SinkWatch {
            inner: io::BufWriter::with_capacity(256 * 1024, file),
            failed: false,
        },
        n: 0,
    };
    // Errors while producing the bytes may be either side's: a failed write to the temporary
    // file (a full disk) is the store's, and retried (the retry's sweep may free space); any
    // other is the source's, reported with its own context.
    if let Err(e) = produce(&mut counted) {
        return Err(if counted.inner.failed {
            store_err(&tmp, e)
        } else {
            PutError::Source(Error::io(target.clone(), e))
        });
    }
    let file = counted
        .inner
        .inner
        .into_inner()
        .map_err(|e| store_err(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| store_err(&tmp, e))?;
    // The file stays open (and locked against sweeps) until its temporary name is gone.
    // Linking makes the object appear: never after the cutoff.
    if cutoff.is_some_and(|c| Instant::now() >= c) {
        return Err(PutError::Source(Error::Deadline {
            key: rel.to_string(),
        }));
    }
    match fs::hard_link(&tmp, &target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(PutError::Store(object_store::Error::AlreadyExists {
                path: target.display().to_string(),
                source: Box::new(e),
            }))
        }
        Err(e) => return Err(store_err(&target, e)),
    }
    drop(guard);
    drop(file);
    sync_dir(parent).map_err(|e| store_err(parent, e))?;
    Ok(counted.n)
}

/// Creates a new, uniquely named temporary file in `dir` and takes an exclusive lock on it, held
/// for as long as the returned file is open.
fn create_locked(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    loop {
        let tmp = dir.join(format!(
            "{name}.{}.{nanos:08x}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", tmp.display()))),
        };
        file.try_lock().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io::Error::other(format!("{}: cannot lock: {e}", tmp.display()))
        })?;
        return Ok((tmp, file));
    }
}

/// Removes temporary files that no live writer holds: those older than `min_age` whose lock
/// can be taken (their writer died; a live writer holds its lock until the file is gone). Looks
/// at no more than [`SWEEP_MAX`] entries. Returns how many files it removed. Failures are
/// logged, never fatal: a sweep only frees space.
pub fn sweep(tmp_dir: &Path, min_age: Duration) -> usize {
    let Ok(entries) = fs::read_dir(tmp_dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.take(SWEEP_MAX).flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let young = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_none_or(|age| age < min_age);
        if young {
            continue;
        }
        let Ok(f) = fs::OpenOptions::new().read(true).open(&path) else {
            continue;
        };
        if f.try_lock().is_err() {
            continue; // a live writer holds it
        }
        // Still ours under that name? (It might have been swept and replaced meanwhile.)
        let same = fs::metadata(&path).ok().is_some_and(|m| {
            use std::os::unix::fs::MetadataExt;
            f.metadata()
                .is_ok_and(|fm| fm.ino() == m.ino() && fm.dev() == m.dev())
        });
        if same {
            match fs::remove_file(&path) {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(file = %path.display(), bytes = meta.len(), "removed a temporary file left by a writer that died");
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove a stale temporary file")
                }
            }
        }
    }
    removed
}

/// A writer that remembers whether a write to it failed.
struct SinkWatch<W> {
    inner: W,
    failed: bool,
}

impl<W: Write> Write for SinkWatch<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|_| self.failed = true)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

/// Removes the temporary file on every exit path.
struct TmpGuard(PathBuf);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Creates `dir` and its missing parents, fsyncing each parent that gained an entry.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a local file atomically and durably: temporary name in the same directory, fsync,
/// rename over the destination, fsync the directory.
pub fn write_atomic_with<F>(dest: &Path, produce: F) -> io::Result<u64>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.walkeeper.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let guard = TmpGuard(tmp.clone());
    // Private (0600), like every file walkeeper creates.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
    };
    let mut counted = Counting {
        inner: io::BufWriter::with_capacity(256 * 1024, file),
        n: 0,
    };
    produce(&mut counted)?;
    let file = counted.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dest)?;
    std::mem::forget(guard);
    sync_dir(dir)?;
    Ok(counted.n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_removes_files_of_dead_writers_and_never_a_live_writers() {
        let dir = tempfile::tempdir().unwrap();
        let (live, live_file) = create_locked(dir.path(), "live").unwrap();
        // A writer that died: its file exists, nobody holds its lock.
        let (dead, dead_file) = create_locked(dir.path(), "dead").unwrap();
        drop(dead_file);
        assert_eq!(sweep(dir.path(), Duration::ZERO), 1);
        assert!(live.exists(), "a live writer's file was removed");
        assert!(!dead.exists(), "a dead writer's file was left");
        drop(live_file);
        assert_eq!(sweep(dir.path(), Duration::ZERO), 1);
        assert!(!live.exists());
    }

    #[test]
    fn sweep_leaves_young_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (young, f) = create_locked(dir.path(), "young").unwrap();
        drop(f);
        assert_eq!(sweep(dir.path(), Duration::from_secs(3600)), 0);
        assert!(young.exists());
    }

    #[test]
    fn temporary_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _fa) = create_locked(dir.path(), "x").unwrap();
        let (b, _fb) = create_locked(dir.path(), "x").unwrap();
        assert_ne!(a, b);
    }
}
