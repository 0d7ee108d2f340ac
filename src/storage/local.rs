//! Durable writes for the file:// backend.
//!
//! The object is written under `<root>/.walkeeper-tmp/`, fsynced, hard-linked to its final name
//! (which fails instead of replacing an existing object), and the directory is fsynced. A crash
//! at any point leaves either no object or the complete one under the final name.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::PutError;
use crate::codec::Counting;
use crate::error::Error;

const TMP_DIR: &str = ".walkeeper-tmp";

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
    let tmp = tmp_dir.join(format!(
        "{}.{}.{}",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object"),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let guard = TmpGuard(tmp.clone());
    let file = File::create(&tmp).map_err(|e| store_err(&tmp, e))?;
    let mut counted = Counting {
        inner: io::BufWriter::with_capacity(256 * 1024, file),
        n: 0,
    };
    // Errors while producing the bytes may be either side's; the source reports its own with
    // context, so pass them through as source errors.
    produce(&mut counted).map_err(|e| PutError::Source(Error::io(target.clone(), e)))?;
    let file = counted
        .inner
        .into_inner()
        .map_err(|e| store_err(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| store_err(&tmp, e))?;
    drop(file);
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
    sync_dir(parent).map_err(|e| store_err(parent, e))?;
    Ok(counted.n)
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
    let file = File::create(&tmp)?;
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
