//! Seeding a new data directory from an old one before a delta restore: the old files the backup recorded unchanged are cloned (reflink) or copied, with their times.
//!
//! The PITR restart moves the data directory aside and keeps it, untouched, until the restart
//! succeeds (its rollback). A delta restore over the aside copy itself would break that, and hard
//! links would too (PostgreSQL writes relation files in place during recovery). A reflink
//! (`FICLONE`) gives the new directory its own copy-on-write file sharing the old one's blocks:
//! O(metadata), and writes to either never reach the other. Where the file system cannot clone,
//! seeding is a full local copy of the kept bytes, worth it only against a remote archive
//! ([`choose`]).

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use super::fetch::{load_chain, matches_record, MEMBER_FILES};
use crate::archive::Archive;
use crate::error::{Error, Result};

/// The file a reflink probe makes (and removes) in the new directory.
const PROBE: &str = ".walkeeper-reflink-probe";

/// What seeding a new directory from an old one would bring, against the whole backup.
#[derive(Debug, Clone, Default)]
pub struct Estimate {
    pub backup: String,
    /// Files of the old directory that are those the backup recorded: relative path and size.
    pub files: Vec<(String, u64)>,
    /// Their bytes.
    pub kept_bytes: u64,
    /// The bytes of every file the backup records.
    pub backup_bytes: u64,
    /// Does the backup have per-file records (walkeeper's and WAL-G's files_metadata)?
    pub has_records: bool,
    /// Can files of the old directory be cloned into the new one (reflink)?
    pub reflink: bool,
}

/// What seeding did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seeded {
    pub files: usize,
    pub bytes: u64,
    /// Cloned (reflink) rather than copied.
    pub cloned: bool,
}

/// Compares the old data directory `old` with the records of backup `which` (LATEST or a name)
/// and probes whether `new` (made here, empty, mode 0700) can hold clones of `old`'s files.
/// Files under `pg_tblspc/` (tablespaces live elsewhere), pg_control and the member's own
/// configuration files are never seeded.
pub async fn estimate(archive: &Archive, which: &str, old: &Path, new: &Path) -> Result<Estimate> {
    let (info, layers) = load_chain(archive, which).await?;
    let mut est = Estimate {
        backup: info.name.clone(),
        ..Default::default()
    };
    if let Some((_, Some(files))) = layers.last() {
        est.has_records = true;
        for (name, d) in &files.files {
            let Some(rel) = super::files::relative(name) else {
                continue;
            };
            let size = d.size.unwrap_or(0).max(0) as u64;
            est.backup_bytes += size;
            if MEMBER_FILES.contains(&rel.as_str())
                || rel.starts_with("pg_tblspc/")
                || rel == "global/pg_control"
            {
                continue;
            }
            if std::fs::symlink_metadata(old.join(&rel)).is_ok_and(|m| matches_record(&m, d)) {
                est.kept_bytes += size;
                est.files.push((rel, size));
            }
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(new)
        .map_err(|e| Error::io(new, e))?;
    est.reflink = probe_reflink(old, new);
    Ok(est)
}

/// Clones `old`'s PG_VERSION into `new` and removes the clone again: can this pair of
/// directories share blocks?
fn probe_reflink(old: &Path, new: &Path) -> bool {
    let probe = new.join(PROBE);
    let _ = std::fs::remove_file(&probe);
    let ok = reflink_copy::reflink(old.join("PG_VERSION"), &probe);
    let _ = std::fs::remove_file(&probe);
    match ok {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, dir = %new.display(), "no reflink between the old and the new data directory");
            false
        }
    }
}

/// Whether to seed (then delta-restore) rather than fetch the backup whole into the empty
/// directory, and why. A clone costs no data, so it always wins when something matches. A copy
/// reads and writes every kept byte on this machine: against a local (file://) archive the
/// fetch reads fewer (compressed) bytes and writes the same, so the copy never wins; against a
/// remote one it saves downloading the kept bytes, which is worth it when they are at least
/// half the backup (the delta still downloads every partition holding a changed file).
pub fn choose(est: &Estimate, store_is_local: bool) -> (bool, String) {
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let share = format!(
        "{} files, {} of the backup's {}, are unchanged in the old data directory",
        est.files.len(),
        mb(est.kept_bytes),
        mb(est.backup_bytes)
    );
    if !est.has_records {
        return (
            false,
            "full fetch: the backup has no per-file records to compare the old data directory \
             with"
                .into(),
        );
    }
    if est.files.is_empty() || est.kept_bytes == 0 {
        return (
            false,
            format!("full fetch: no file of the old data directory is unchanged ({share})"),
        );
    }
    if est.reflink {
        return (
            true,
            format!("delta restore: {share}; they are cloned (reflink), sharing their blocks"),
        );
    }
    if store_is_local {
        return (
            false,
            format!(
                "full fetch: {share}, but this file system cannot clone files (reflink) and the \
                 archive is local, so copying them costs what fetching them does"
            ),
        );
    }
    if est.kept_bytes.saturating_mul(2) >= est.backup_bytes {
        (
            true,
            format!(
                "delta restore: {share}; this file system cannot clone files (reflink), so they \
                 are copied locally, which saves downloading them"
            ),
        )
    } else {
        (
            false,
            format!(
                "full fetch: {share}; this file system cannot clone files (reflink), and copying \
                 less than half of the backup locally does not pay"
            ),
        )
    }
}

/// Seeds `new` from `old`: the directory tree (not the tablespace links or pg_wal's contents),
/// then each file of the estimate, cloned when `est.reflink` (else copied), with its mode and
/// its modification time (so the delta restore keeps it), the member's configuration files
/// (copied), and PG_VERSION (which the delta restore needs to see a data directory; rewritten
/// by it unless it is unchanged). `old` is only read.
pub fn seed(est: &Estimate, old: &Path, new: &Path) -> Result<Seeded> {
    let mut done = Seeded {
        cloned: est.reflink,
        ..Default::default()
    };
    for e in walkdir::WalkDir::new(old).follow_links(false).min_depth(1) {
        let e = e.map_err(|err| Error::io(old, io::Error::other(err.to_string())))?;
        if !e.file_type().is_dir() {
            continue;
        }
        let Ok(rel) = e.path().strip_prefix(old) else {
            continue;
        };
        let to = new.join(rel);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&to)
            .map_err(|err| Error::io(&to, err))?;
    }
    for (rel, size) in &est.files {
        let (from, to) = (old.join(rel), new.join(rel));
        if let Some(parent) = to.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|err| Error::io(parent, err))?;
        }
        if clone_file(&from, &to, est.reflink)? {
            done.files += 1;
            done.bytes += size;
        }
    }
    // The member's own configuration: the delta restore keeps what it finds.
    for f in MEMBER_FILES {
        let (from, to) = (old.join(f), new.join(f));
        if from.is_file() && !to.exists() {
            std::fs::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
        }
    }
    let version = new.join("PG_VERSION");
    if !version.exists() {
        std::fs::copy(old.join("PG_VERSION"), &version).map_err(|e| Error::io(&version, e))?;
    }
    Ok(done)
}

/// One file: a clone (or a copy), with the original's mode and modification time. False (and
/// nothing left at `to`) when the original changed meanwhile: the delta restore writes it.
fn clone_file(from: &Path, to: &Path, reflink: bool) -> Result<bool> {
    let meta = std::fs::symlink_metadata(from).map_err(|e| Error::io(from, e))?;
    match std::fs::remove_file(to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(to, e)),
    }
    if reflink {
        reflink_copy::reflink(from, to).map_err(|e| Error::io(to, e))?;
    } else {
        std::fs::copy(from, to).map_err(|e| Error::io(to, e))?;
    }
    let mtime = meta.modified().map_err(|e| Error::io(from, e))?;
    let after = std::fs::symlink_metadata(from).map_err(|e| Error::io(from, e))?;
    if after.modified().ok() != Some(mtime) || after.len() != meta.len() {
        std::fs::remove_file(to).map_err(|e| Error::io(to, e))?;
        return Ok(false);
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .map_err(|e| Error::io(to, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(meta.permissions().mode()))
        .map_err(|e| Error::io(to, e))?;
    f.set_modified(mtime).map_err(|e| Error::io(to, e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(kept: u64, total: u64, reflink: bool) -> Estimate {
        Estimate {
            backup: "b".into(),
            files: if kept > 0 {
                vec![("base/1/1".into(), kept)]
            } else {
                vec![]
            },
            kept_bytes: kept,
            backup_bytes: total,
            has_records: true,
            reflink,
        }
    }

    #[test]
    fn a_clone_is_taken_whenever_something_matches_and_a_copy_only_against_a_remote_archive() {
        assert!(choose(&est(10, 100, true), true).0);
        assert!(choose(&est(10, 100, true), false).0);
        assert!(!choose(&est(0, 100, true), false).0);
        let (seed, why) = choose(&est(90, 100, false), true);
        assert!(!seed, "{why}");
        assert!(why.contains("local"), "{why}");
        assert!(choose(&est(60, 100, false), false).0);
        assert!(!choose(&est(40, 100, false), false).0);
        let mut none = est(90, 100, true);
        none.has_records = false;
        assert!(!choose(&none, false).0);
    }

    #[test]
    fn a_seeded_file_keeps_its_mode_and_nanosecond_time_and_the_old_one_is_untouched() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        std::fs::create_dir_all(old.join("base/1")).unwrap();
        std::fs::create_dir_all(old.join("pg_stat")).unwrap();
        std::fs::write(old.join("PG_VERSION"), b"15\n").unwrap();
        std::fs::write(old.join("base/1/1259"), vec![7u8; 8192]).unwrap();
        std::fs::set_permissions(
            old.join("base/1/1259"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let e = Estimate {
            files: vec![("base/1/1259".into(), 8192)],
            kept_bytes: 8192,
            ..Default::default()
        };
        std::fs::create_dir_all(&new).unwrap();
        let done = seed(&e, &old, &new).unwrap();
        assert_eq!((done.files, done.bytes), (1, 8192));
        let (a, b) = (
            std::fs::metadata(old.join("base/1/1259")).unwrap(),
            std::fs::metadata(new.join("base/1/1259")).unwrap(),
        );
        assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()));
        assert_eq!(b.mode() & 0o777, 0o640);
        assert_ne!(a.ino(), b.ino());
        assert!(new.join("pg_stat").is_dir(), "empty directories are made");
        assert_eq!(std::fs::read(new.join("PG_VERSION")).unwrap(), b"15\n");
        std::fs::write(new.join("base/1/1259"), b"changed").unwrap();
        assert_eq!(
            std::fs::read(old.join("base/1/1259")).unwrap(),
            vec![7u8; 8192]
        );
    }
}
