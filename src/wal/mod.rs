//! WAL archiving: wal-push (archive_command) and wal-fetch (restore_command).

pub mod fetch;
pub mod gate;
pub mod history;
mod lsn;
pub mod names;
pub mod push;

pub use lsn::Lsn;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::archive::Archive;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::storage::local::{sync_dir, Counting};

/// Where the agent records the cluster's system identifier in the archive.
pub const SYSID_KEY: &str = "sysids/sysid";
/// How long "this archive knows no system identifier" is believed without asking again.
const NO_SYSID_TTL: Duration = Duration::from_secs(60);

/// Everything a WAL command needs, resolved once: the archive plus the data directory.
#[derive(Debug)]
pub struct WalContext {
    pub archive: Archive,
    /// The canonical data directory.
    pub pgdata: PathBuf,
    /// The canonical `pg_wal` directory (it may be a symlink in the data directory).
    pub pg_wal: PathBuf,
    /// walkeeper's own state: look-ahead records, locks, prefetched segments.
    pub state_dir: PathBuf,
    /// Names the archive (see [`archive_fingerprint`]): local records are bound to it.
    pub archive_id: String,
}

impl std::ops::Deref for WalContext {
    type Target = Archive;
    fn deref(&self) -> &Archive {
        &self.archive
    }
}

impl WalContext {
    /// `pgdata`: the `--pgdata` option; without it, the current directory (PostgreSQL runs
    /// archive_command and restore_command in the data directory).
    pub fn new(settings: Settings, pgdata: Option<&Path>) -> Result<Self> {
        let dir = match pgdata {
            Some(p) => p.to_path_buf(),
            None => std::env::current_dir().map_err(|e| Error::io(".", e))?,
        };
        let pgdata = dir
            .canonicalize()
            .map_err(|e| Error::BadInput(format!("data directory {}: {e}", dir.display())))?;
        let pg_wal = pgdata.join("pg_wal").canonicalize().map_err(|e| {
            Error::BadInput(format!(
                "{} is not a PostgreSQL data directory (pg_wal: {e})",
                pgdata.display()
            ))
        })?;
        let state_dir = settings
            .state_dir
            .clone()
            .unwrap_or_else(|| pg_wal.join(".walkeeper"));
        // Private from the start (mode 0700): it holds the agent's API token, locks and staged
        // WAL. Only a hint here: the commands that need it report a failure to create it.
        let _ = crate::security::ensure_private_dir(&state_dir);
        // Every WAL path (the CLI, the agent's healing and API) refuses encryption it would
        // otherwise ignore.
        settings.refuse_unimplemented_encryption()?;
        let archive_id = archive_fingerprint(&settings);
        Ok(WalContext {
            archive_id,
            archive: Archive::open(settings)?,
            pgdata,
            pg_wal,
            state_dir,
        })
    }

    /// The data directory a WAL path names by itself: `<PGDATA>/pg_wal/<file>` given as an
    /// absolute path (Patroni's pre-rewind archive run and pg_rewind do not run the command in
    /// the data directory, but pass such paths). None for anything else.
    pub fn pgdata_of(arg: &Path) -> Option<PathBuf> {
        if !arg.is_absolute() {
            return None;
        }
        let dir = arg.parent()?;
        (dir.file_name()? == "pg_wal").then(|| dir.parent().map(Path::to_path_buf))?
    }

    /// Resolves a path argument (relative to the data directory) lexically, refusing anything
    /// that leaves the data directory.
    pub fn resolve_in_pgdata(&self, arg: &Path) -> Result<PathBuf> {
        let joined = if arg.is_absolute() {
            arg.to_path_buf()
        } else {
            self.pgdata.join(arg)
        };
        let mut out = PathBuf::new();
        for c in joined.components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                other => out.push(other.as_os_str()),
            }
        }
        let inside = |p: &Path| p.starts_with(&self.pgdata) || p.starts_with(&self.pg_wal);
        if !inside(&out) {
            return Err(Error::BadInput(format!(
                "{} is outside the data directory {}",
                arg.display(),
                self.pgdata.display()
            )));
        }
        // Follow symlinks of the parent (pg_wal may be one) and check again.
        if let Some(parent) = out.parent() {
            if let Ok(real) = parent.canonicalize() {
                let real = real.join(out.file_name().unwrap_or_default());
                if !inside(&real) {
                    return Err(Error::BadInput(format!(
                        "{} resolves to {}, outside the data directory {}",
                        arg.display(),
                        real.display(),
                        self.pgdata.display()
                    )));
                }
                return Ok(real);
            }
        }
        Ok(out)
    }

    pub fn archive_status_dir(&self) -> PathBuf {
        self.pg_wal.join("archive_status")
    }
}

/// A digest that names the archive objects go to: the prefix, the variables that choose the
/// endpoint or account, and the encryption recipients (public keys; no secret is part of it).
/// Local state about "what is archived" is only trusted for the archive it names.
pub fn archive_fingerprint(settings: &Settings) -> String {
    let mut h = Sha256::new();
    h.update(b"walkeeper-archive-v1\0");
    h.update(settings.prefix.as_deref().unwrap_or_default().as_bytes());
    for var in [
        "AWS_ENDPOINT",
        "WALE_S3_ENDPOINT",
        "AWS_REGION",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_ENDPOINT",
        "GOOGLE_CLOUD_PROJECT",
        "STORAGE_EMULATOR_HOST",
        "SWIFT_AUTHURL",
        "OS_AUTH_URL",
        "SWIFT_TENANT",
        "OS_PROJECT_NAME",
        "SWIFT_REGION",
        "OS_REGION_NAME",
    ] {
        h.update(b"\0");
        h.update(var.as_bytes());
        h.update(b"=");
        h.update(settings.vars.get(var).unwrap_or_default().as_bytes());
    }
    let mut recipients = settings.age_recipients.clone();
    recipients.sort();
    for r in recipients {
        h.update(b"\0age=");
        h.update(r.as_bytes());
    }
    hex::encode(h.finalize())
}

impl WalContext {
    /// The system identifier recorded in the archive (`sysids/sysid`), if any.
    pub async fn recorded_sysid(&self) -> Result<Option<u64>> {
        match self.store.get_bytes(SYSID_KEY).await {
            Ok(b) => {
                let text = String::from_utf8_lossy(&b);
                text.trim().parse().map(Some).map_err(|_| Error::Corrupt {
                    key: SYSID_KEY.into(),
                    msg: format!("{:?} is not a system identifier", text.trim()),
                })
            }
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The system identifier of the cluster this archive belongs to: `sysids/sysid`, else the
    /// newest backup's sentinel, else None. `seen` is the one a local segment carries: when it
    /// is the one remembered for this archive, no request is made (a cluster's identifier never
    /// changes); "unknown" is remembered for a minute.
    pub async fn archive_sysid(&self, seen: u64) -> Result<Option<u64>> {
        let cache = self.state_dir.join("archive-sysid");
        if let Ok(text) = fs::read_to_string(&cache) {
            let mut it = text.split_whitespace();
            if it.next() == Some(self.archive_id.as_str()) {
                match it.next() {
                    Some("none") => {
                        let fresh = fs::metadata(&cache)
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|t| SystemTime::now().duration_since(t).ok())
                            .is_some_and(|age| age < NO_SYSID_TTL);
                        if fresh {
                            return Ok(None);
                        }
                    }
                    Some(v) if v.parse() == Ok(seen) => return Ok(Some(seen)),
                    _ => {}
                }
            }
        }
        let found = match self.recorded_sysid().await? {
            Some(s) => Some(s),
            None => self.newest_backup_sysid().await?,
        };
        let line = match found {
            Some(s) => format!("{} {s}\n", self.archive_id),
            None => format!("{} none\n", self.archive_id),
        };
        // Only a hint: a failure to remember costs a request next time.
        let _ = crate::storage::local::ensure_dir(&self.state_dir)
            .and_then(|_| write_atomic_locked(&cache, |w| w.write_all(line.as_bytes())));
        Ok(found)
    }

    /// The system identifier in the newest backup's sentinel (WAL-G's `SystemIdentifier`).
    async fn newest_backup_sysid(&self) -> Result<Option<u64>> {
        use crate::archive::{BACKUP_FOLDER, SENTINEL_SUFFIX};
        let entries = self.store.list_top(BACKUP_FOLDER).await?;
        let Some((key, _)) = entries
            .into_iter()
            .filter(|(k, _)| k.ends_with(SENTINEL_SUFFIX))
            .max_by_key(|(_, m)| m.last_modified)
        else {
            return Ok(None);
        };
        let bytes = match self.store.get_bytes(&key).await {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("SystemIdentifier")?.as_u64()))
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Is `name` one of walkeeper's temporary files (`.<dest>.walkeeper.<pid>.<n>`)?
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".walkeeper.")
}

/// Writes `dest` atomically and durably, like [`crate::storage::local::write_atomic_with`], but
/// holds an exclusive `flock` on the temporary file for as long as it is written, so
/// [`sweep_stale_temps`] can tell a live writer's file from one a killed process left behind.
pub fn write_atomic_locked<F>(dest: &Path, produce: F) -> io::Result<u64>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let (tmp, file) = loop {
        let tmp = dir.join(format!(
            ".{name}.walkeeper.{}.{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?
        };
        file.lock()?;
        // A sweeper may have taken it between creation and lock: then it is gone; start over.
        match fs::symlink_metadata(&tmp) {
            Ok(m) if m.ino() == file.metadata()?.ino() => break (tmp, file),
            _ => continue,
        }
    };
    struct Guard(PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }
    let guard = Guard(tmp.clone());
    let mut counted = Counting {
        inner: io::BufWriter::with_capacity(256 * 1024, file),
        n: 0,
    };
    produce(&mut counted)?;
    let file = counted.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&tmp, dest)?;
    std::mem::forget(guard);
    drop(file);
    sync_dir(dir)?;
    Ok(counted.n)
}

/// Removes walkeeper's temporary files in `dir` that no live process writes: those whose
/// `flock` can be taken (a writer holds it until the file is renamed or removed). Returns how
/// many were removed.
pub fn sweep_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_temp_name(name) || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = e.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if file.try_lock().is_err() {
            continue; // a live writer
        }
        let same = match (fs::symlink_metadata(&path), file.metadata()) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same && fs::remove_file(&path).is_ok() {
            tracing::info!(file = %path.display(), "removed a temporary file a killed process left");
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absolute_pg_wal_path_names_its_data_directory() {
        assert_eq!(
            WalContext::pgdata_of(Path::new("/srv/pg/data/pg_wal/000000010000000000000001")),
            Some(PathBuf::from("/srv/pg/data"))
        );
        assert_eq!(
            WalContext::pgdata_of(Path::new("pg_wal/000000010000000000000001")),
            None
        );
        assert_eq!(WalContext::pgdata_of(Path::new("/etc/passwd")), None);
    }

    #[test]
    fn a_sweep_removes_only_temporary_files_nobody_writes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Left by a killed writer: no lock held.
        std::fs::write(d.join(".RECOVERYXLOG.walkeeper.1.0"), b"partial").unwrap();
        // A live writer's file: locked.
        let live = d.join(".RECOVERYXLOG.walkeeper.2.0");
        let f = File::create(&live).unwrap();
        f.lock().unwrap();
        // Not temporary files.
        std::fs::write(d.join("000000010000000000000001"), b"wal").unwrap();
        std::fs::create_dir(d.join(".walkeeper")).unwrap();
        assert_eq!(sweep_stale_temps(d), 1);
        assert!(live.exists());
        assert!(d.join("000000010000000000000001").exists());
        assert!(d.join(".walkeeper").is_dir());
        drop(f);
        assert_eq!(sweep_stale_temps(d), 1);
        assert!(!live.exists());
    }

    #[test]
    fn a_locked_write_leaves_only_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let n = write_atomic_locked(&dest, |w| {
            // While it is written, a sweep must leave it alone.
            assert_eq!(sweep_stale_temps(dest.parent().unwrap()), 0);
            w.write_all(b"hello")
        })
        .unwrap();
        assert_eq!(n, 5);
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        let failed = write_atomic_locked(&dir.path().join("X"), |_| Err(io::Error::other("no")));
        assert!(failed.is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("RECOVERYXLOG")]);
    }

    #[test]
    fn the_archive_fingerprint_changes_with_prefix_endpoint_and_recipients() {
        let settings = |pairs: &[(&str, &str)]| {
            let process = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Settings::from_sources(process, None, None).unwrap()
        };
        let a = archive_fingerprint(&settings(&[("WALG_S3_PREFIX", "s3://b/p")]));
        assert_eq!(
            a,
            archive_fingerprint(&settings(&[("WALG_S3_PREFIX", "s3://b/p")]))
        );
        for other in [
            settings(&[("WALG_S3_PREFIX", "s3://b/q")]),
            settings(&[
                ("WALG_S3_PREFIX", "s3://b/p"),
                ("AWS_ENDPOINT", "http://127.0.0.1:9"),
            ]),
            settings(&[
                ("WALG_S3_PREFIX", "s3://b/p"),
                ("WALKEEPER_AGE_RECIPIENT", "age1xyz"),
            ]),
        ] {
            assert_ne!(a, archive_fingerprint(&other));
        }
        let secret = settings(&[
            ("WALG_S3_PREFIX", "s3://b/p"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ]);
        assert_eq!(a, archive_fingerprint(&secret));
    }
}
