//! WAL archiving: wal-push (archive_command) and wal-fetch (restore_command).

pub mod fetch;
pub mod history;
pub mod names;
pub mod push;

use std::path::{Component, Path, PathBuf};

use crate::archive::Archive;
use crate::config::Settings;
use crate::error::{Error, Result};

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
        Ok(WalContext {
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
}
