//! `backup-fetch`: download, decode and extract partitions in parallel with bounded memory.
//!
//! pg_control is extracted last, only after every other partition succeeded; on any failure
//! everything extracted is removed again, so a failed fetch never leaves a data directory that
//! looks complete.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::files::{files_metadata_key, FilesMetadata, FILES_METADATA};
use super::{parts_prefix, BackupInfo, TablespaceSpec};
use crate::archive::Archive;
use crate::codec::{self, Compression};
use crate::error::{Error, Result};
use crate::storage::Store;

/// Directories PostgreSQL needs even when a backup left their contents out.
const NEEDED_DIRS: &[&str] = &[
    "pg_wal",
    "pg_wal/archive_status",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
    "pg_tblspc",
    "pg_twophase",
    "pg_commit_ts",
    "pg_logical",
    "pg_logical/snapshots",
    "pg_logical/mappings",
];

#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// WAL-E's restore spec: where each tablespace goes.
    pub restore_spec: Option<PathBuf>,
    /// Extract tablespaces into `pg_tblspc/<oid>` inside the data directory, without links.
    pub blind_restore: bool,
    pub concurrency: usize,
    /// Skip making the restored files durable before returning (`--no-sync`).
    pub no_sync: bool,
    /// Restore into an existing data directory (pgBackRest's `--delta`): keep the files that
    /// already match the backup, rewrite the rest, remove what the backup does not have.
    pub delta: bool,
}

/// Configuration files that belong to the member, not to the backup (which another member may
/// have taken): a delta restore keeps them as they are.
pub const MEMBER_FILES: &[&str] = &[
    "postgresql.conf",
    "postgresql.base.conf",
    "postgresql.auto.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "patroni.dynamic.json",
];

/// Where entries under `pg_tblspc/<oid>/` go.
#[derive(Debug, Clone, Default)]
struct Routes {
    tablespaces: BTreeMap<String, PathBuf>,
}

impl Routes {
    /// The destination of a tar entry name, refusing anything that would leave its root. A
    /// leading `/` means the data directory: WAL-G names every entry `/` + its relative path.
    fn dest(&self, target: &Path, name: &Path) -> io::Result<PathBuf> {
        let mut clean: Vec<&std::ffi::OsStr> = Vec::new();
        for (i, c) in name.components().enumerate() {
            match c {
                Component::Normal(s) => clean.push(s),
                Component::CurDir => {}
                Component::RootDir if i == 0 => {}
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("tar entry {} leaves the data directory", name.display()),
                    ))
                }
            }
        }
        if clean.len() >= 2 && clean[0] == "pg_tblspc" {
            if let Some(loc) = clean[1].to_str().and_then(|oid| self.tablespaces.get(oid)) {
                let mut p = loc.clone();
                p.extend(&clean[2..]);
                return Ok(p);
            }
        }
        let mut p = target.to_path_buf();
        p.extend(&clean);
        Ok(p)
    }
}

/// Where each tablespace goes; a location must be empty unless `allow_existing` (a delta
/// restore reuses what the locations hold).
fn tablespace_routes(
    info: &BackupInfo,
    target: &Path,
    opts: &FetchOptions,
    allow_existing: bool,
) -> Result<Routes> {
    let mut routes = Routes::default();
    if opts.blind_restore {
        return Ok(routes);
    }
    let spec: Option<TablespaceSpec> = match &opts.restore_spec {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::BadInput(format!("restore spec {}: {e}", p.display())))?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| Error::BadInput(format!("restore spec {}: {e}", p.display())))?,
            )
        }
        None => info.spec.clone(),
    };
    let Some(spec) = spec else { return Ok(routes) };
    for (oid, loc) in spec.tablespaces {
        let dir = PathBuf::from(loc.loc.trim_end_matches('/'));
        if dir.starts_with(target) {
            return Err(Error::BadInput(format!(
                "tablespace {oid} location {} is inside the data directory; use --blind-restore",
                dir.display()
            )));
        }
        if !allow_existing
            && std::fs::read_dir(&dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        {
            return Err(Error::BadInput(format!(
                "tablespace {oid} location {} is not empty",
                dir.display()
            )));
        }
        routes.tablespaces.insert(oid, dir);
    }
    Ok(routes)
}

/// Fetches `which` (a name or LATEST) into `target`, which must be missing or empty.
pub async fn backup_fetch(
    archive: Arc<Archive>,
    target: &Path,
    which: &str,
    opts: FetchOptions,
) -> Result<BackupInfo> {
    let existing = match std::fs::read_dir(target) {
        Ok(mut d) => d.next().is_some(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
            false
        }
        Err(e) => return Err(Error::io(target, e)),
    };
    if existing && !opts.delta {
        return Err(Error::BadInput(format!(
            "{} is not empty; backup-fetch restores only into an empty or new directory \
             (or, with --delta, into an existing data directory)",
            target.display()
        )));
    }
    let delta = existing && opts.delta;
    if delta {
        if !target.join("PG_VERSION").is_file() {
            return Err(Error::BadInput(format!(
                "{} is not empty and is not a PostgreSQL data directory (no PG_VERSION): \
                 --delta rewrites only a data directory",
                target.display()
            )));
        }
        if target.join("postmaster.pid").exists() {
            return Err(Error::BadInput(format!(
                "{} has a postmaster.pid: stop PostgreSQL before a delta restore (or remove a \
                 stale postmaster.pid)",
                target.display()
            )));
        }
    }
    let target = target.canonicalize().map_err(|e| Error::io(target, e))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(&target, e))?;
    let (info, layers) = load_chain(&archive, which).await?;
    if layers.len() > 1 {
        tracing::info!(
            backup = info.name,
            chain = ?layers.iter().map(|(b, _)| b.name.as_str()).collect::<Vec<_>>(),
            "restoring a delta backup over its base chain"
        );
    }
    let routes = Arc::new(tablespace_routes(&info, &target, &opts, delta)?);
    let opts_blind = opts.blind_restore;
    if delta {
        let only = delta_plan(&target, &routes, &layers)?;
        extract_chain(
            &archive,
            &layers,
            &target,
            &routes,
            &opts,
            Some(Arc::new(only)),
        )
        .await?;
    } else {
        let res = extract_chain(&archive, &layers, &target, &routes, &opts, None).await;
        if let Err(e) = res {
            // Leave nothing that looks like a data directory.
            cleanup(&target, &routes);
            return Err(e);
        }
    }
    finish_layout(&target, &routes)?;
    rewrite_tablespace_map(&target, &routes, opts_blind)?;
    if !opts.no_sync {
        sync_restored(&target, &routes)?;
    }
    tracing::info!(backup = info.name, target = %target.display(), "backup fetched");
    Ok(info)
}

/// A backup (LATEST or a name) and the chain it is restored from, oldest first, each with its
/// per-file records: refused when a delta's records are missing or inconsistent.
pub(crate) async fn load_chain(
    archive: &Archive,
    which: &str,
) -> Result<(BackupInfo, Vec<(BackupInfo, Option<FilesMetadata>)>)> {
    let all = super::list_backups(&archive.store).await?;
    let info = super::resolve_in(&all, which, &archive.store.description)?;
    let chain = super::delta_chain(&all, &info)?;
    let mut layers = Vec::with_capacity(chain.len());
    for b in chain {
        let files_meta = load_files_metadata(&archive.store, &b).await?;
        if files_meta.as_ref().is_some_and(FilesMetadata::is_delta) && !b.is_delta() {
            return Err(Error::BadInput(format!(
                "backup {}: its {FILES_METADATA} marks files as increments or as taken from a \
                 base, but its sentinel names no base (DeltaFrom): an inconsistent delta backup, \
                 not restored",
                b.name
            )));
        }
        if b.is_delta() && files_meta.is_none() {
            return Err(Error::Corrupt {
                key: files_metadata_key(&b.name),
                msg: format!(
                    "delta backup {} has no {FILES_METADATA}: which files are increments is \
                     unknown",
                    b.name
                ),
            });
        }
        layers.push((b, files_meta));
    }
    Ok((info, layers))
}

/// What a delta restore rewrites: every file of the backup except those the directory already
/// has with the size and modification time (to the nanosecond) the newest backup recorded when
/// it read them, and except the member's own configuration files. pg_control is removed first,
/// so a directory left by an interrupted run does not start; files rewritten get a new time, so
/// the next run rewrites them again.
fn delta_plan(
    target: &Path,
    routes: &Routes,
    layers: &[(BackupInfo, Option<FilesMetadata>)],
) -> Result<HashSet<String>> {
    let control = target.join("global/pg_control");
    match std::fs::remove_file(&control) {
        Ok(()) => {
            let dir = target.join("global");
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(&dir, e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&control, e)),
    }
    let mut only = HashSet::new();
    let (mut kept, mut rewritten) = (0usize, 0usize);
    let Some((newest, Some(files))) = layers.last() else {
        // No per-file records (WAL-E, old backups): everything is rewritten.
        only.insert(ALL.to_string());
        return Ok(only);
    };
    for (name, d) in &files.files {
        let Some(rel) = super::files::relative(name) else {
            continue;
        };
        if MEMBER_FILES.contains(&rel.as_str()) {
            continue;
        }
        let path = routes
            .dest(target, Path::new(&rel))
            .map_err(|e| Error::Corrupt {
                key: files_metadata_key(&newest.name),
                msg: e.to_string(),
            })?;
        if std::fs::symlink_metadata(&path).is_ok_and(|m| matches_record(&m, d)) {
            kept += 1;
        } else {
            rewritten += 1;
            only.insert(rel);
        }
    }
    for special in ["backup_label", "tablespace_map", "global/pg_control"] {
        only.insert(special.to_string());
    }
    tracing::info!(
        backup = newest.name,
        kept,
        rewritten,
        "delta restore: files that already match are kept"
    );
    Ok(only)
}

/// Is a local file the one the backup read: a regular file with the size and modification
/// time, to the nanosecond, the backup recorded (the rule WAL-G's deltas rely on)?
pub(crate) fn matches_record(m: &std::fs::Metadata, d: &super::files::FileDescription) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(t) = d.mtime else { return false };
    m.is_file()
        && d.size.is_none_or(|s| s >= 0 && m.len() == s as u64)
        && m.mtime() == t.timestamp()
        && m.mtime_nsec() == t.timestamp_subsec_nanos() as i64
}

/// In a delta restore's set of files to write: every file (the backup has no per-file records).
const ALL: &str = "\0all";

/// Restores each backup of a chain in turn, the full backup first: a delta's files replace
/// the base's, its increments are applied to the base's files, the files it records as
/// unchanged must already be there, and pg_control comes from the last one only. Files the last
/// backup does not have (dropped since the base) are removed at the end.
async fn extract_chain(
    archive: &Arc<Archive>,
    layers: &[(BackupInfo, Option<FilesMetadata>)],
    target: &Path,
    routes: &Arc<Routes>,
    opts: &FetchOptions,
    only: Option<Arc<HashSet<String>>>,
) -> Result<()> {
    let mut last_extracted = HashSet::new();
    let mut prune_dirs = true;
    for (i, (b, files_meta)) in layers.iter().enumerate() {
        let last = i + 1 == layers.len();
        let increments: HashSet<String> = files_meta
            .iter()
            .flat_map(|m| m.files.iter())
            .filter(|(_, d)| d.is_incremented && !d.is_skipped)
            .filter_map(|(n, _)| super::files::relative(n))
            .collect();
        let (extracted, skipped) = extract_all(
            archive,
            b,
            target,
            routes,
            opts,
            files_meta.as_ref(),
            Arc::new(increments),
            last,
            only.clone(),
        )
        .await?;
        if let Some(m) = files_meta {
            let key = files_metadata_key(&b.name);
            for (name, d) in &m.files {
                let Some(rel) = super::files::relative(name) else {
                    continue;
                };
                let path = routes
                    .dest(target, Path::new(&rel))
                    .map_err(|e| Error::Corrupt {
                        key: key.clone(),
                        msg: e.to_string(),
                    })?;
                if d.is_skipped && std::fs::symlink_metadata(&path).is_err() {
                    return Err(Error::Corrupt {
                        key,
                        msg: format!(
                            "lists /{rel} as unchanged since its base, but no backup of the \
                             chain before it holds the file"
                        ),
                    });
                }
            }
        }
        if last {
            last_extracted = extracted;
            prune_dirs = skipped == 0;
        }
    }
    // Files earlier backups of the chain restored, or a delta restore found in the directory,
    // that the newest backup does not have.
    if layers.len() > 1 || only.is_some() {
        match layers.last() {
            Some((b, Some(m))) => remove_dropped(
                target,
                routes,
                m,
                &last_extracted,
                &files_metadata_key(&b.name),
                prune_dirs,
            )?,
            Some((b, None)) => remove_dropped(
                target,
                routes,
                &FilesMetadata::default(),
                &last_extracted,
                &super::sentinel_key(&b.name),
                prune_dirs,
            )?,
            None => {}
        }
    }
    Ok(())
}

/// Removes the regular files that earlier backups of a chain restored but the last one does
/// not list (relations dropped since the base, an old `tablespace_map`), and, with
/// `prune_dirs` (every partition of the last backup was read, so its directory entries are
/// known), the empty directories it does not have.
fn remove_dropped(
    target: &Path,
    routes: &Routes,
    last: &FilesMetadata,
    extracted: &HashSet<String>,
    key: &str,
    prune_dirs: bool,
) -> Result<()> {
    let mut keep: HashSet<String> = last
        .files
        .keys()
        .filter_map(|n| super::files::relative(n))
        .collect();
    keep.extend(extracted.iter().cloned());
    keep.insert("global/pg_control".into());
    keep.extend(MEMBER_FILES.iter().map(|f| f.to_string()));
    let roots = std::iter::once((target.to_path_buf(), String::new())).chain(
        routes
            .tablespaces
            .iter()
            .map(|(oid, loc)| (loc.clone(), format!("pg_tblspc/{oid}/"))),
    );
    let mut removed = 0usize;
    for (root, prefix) in roots {
        for e in walkdir::WalkDir::new(&root)
            .follow_links(false)
            .min_depth(1)
        {
            let e = e.map_err(|err| Error::io(&root, io::Error::other(err.to_string())))?;
            if !e.file_type().is_file() {
                continue;
            }
            let Ok(rel) = e.path().strip_prefix(&root) else {
                continue;
            };
            let rel = format!("{prefix}{}", rel.to_string_lossy());
            if !keep.contains(&rel) {
                std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
                removed += 1;
            }
        }
    }
    // Directories no backup entry made (a dropped database's), once empty.
    let depth = if prune_dirs { usize::MAX } else { 0 };
    for e in walkdir::WalkDir::new(target)
        .max_depth(depth)
        .follow_links(false)
        .min_depth(1)
        .contents_first(true)
    {
        let Ok(e) = e else { continue };
        if !e.file_type().is_dir() {
            continue;
        }
        let rel = e
            .path()
            .strip_prefix(target)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default();
        let made = NEEDED_DIRS.contains(&rel.as_str())
            || extracted.contains(&rel)
            || rel == "global"
            || rel.starts_with("pg_tblspc");
        if !made && std::fs::remove_dir(e.path()).is_ok() {
            removed += 1;
        }
    }
    tracing::debug!(
        removed,
        key,
        "files the last backup of the chain does not have removed"
    );
    Ok(())
}

/// Extracts one backup's partitions (and, with `with_control`, its pg_control, last); returns
/// the names of the entries extracted, relative to the data directory.
#[allow(clippy::too_many_arguments)]
async fn extract_all(
    archive: &Arc<Archive>,
    info: &BackupInfo,
    target: &Path,
    routes: &Arc<Routes>,
    opts: &FetchOptions,
    files_meta: Option<&FilesMetadata>,
    increments: Arc<HashSet<String>>,
    with_control: bool,
    only: Option<Arc<HashSet<String>>>,
) -> Result<(HashSet<String>, usize)> {
    let listed = archive.store.list(&parts_prefix(&info.name)).await?;
    let mut parts = Vec::new();
    let mut control = None;
    let mut names = HashSet::new();
    for (key, _) in listed {
        let file = key.rsplit('/').next().unwrap_or("");
        names.insert(file.to_string());
        let Some((stem, ext)) = file.rsplit_once('.') else {
            continue;
        };
        let Some(c) = Compression::from_ext(ext) else {
            continue;
        };
        if stem == "pg_control.tar" {
            control = Some((key, c));
        } else if stem.ends_with(".tar") {
            parts.push((key, c));
        }
    }
    // A delta restore reads only the partitions holding a file it writes: one whose every
    // file is kept is neither downloaded nor checked for.
    let skip: HashSet<String> = match (only.as_deref(), files_meta) {
        (Some(o), Some(m)) if !o.contains(ALL) => m
            .tar_file_sets
            .iter()
            .filter(|(_, held)| {
                !held.is_empty()
                    && held
                        .iter()
                        .all(|n| super::files::relative(n).is_none_or(|r| !o.contains(&r)))
            })
            .map(|(t, _)| t.clone())
            .collect(),
        _ => HashSet::new(),
    };
    if !skip.is_empty() {
        parts.retain(|(k, _)| !skip.contains(k.rsplit('/').next().unwrap_or("")));
        tracing::info!(
            backup = info.name,
            skipped = skip.len(),
            read = parts.len(),
            "delta restore: partitions holding only kept files are not read"
        );
    }
    check_partitions(info, &parts, &skip)?;
    // WAL-G records which partitions it wrote (walkeeper records how many): one lost is noticed.
    if let Some(m) = files_meta {
        if let Some(lost) = m
            .tar_file_sets
            .keys()
            .find(|t| !names.contains(*t) && !skip.contains(*t))
        {
            return Err(Error::Corrupt {
                key: format!("{}/{lost}", parts_prefix(&info.name)),
                msg: format!("partition missing ({} lists it)", FILES_METADATA),
            });
        }
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = Vec::new();
    for (key, c) in parts {
        let (archive, sem, routes, target, increments, only) = (
            archive.clone(),
            sem.clone(),
            routes.clone(),
            target.to_path_buf(),
            increments.clone(),
            only.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            extract_one(&archive, &key, c, &target, &routes, &increments, only).await
        }));
    }
    let mut first_err = None;
    let mut extracted: HashSet<String> = HashSet::new();
    if let Some(m) = files_meta {
        for t in &skip {
            let held = m.tar_file_sets.get(t).into_iter().flatten();
            extracted.extend(held.filter_map(|n| super::files::relative(n)));
        }
    }
    for t in tasks {
        let r = t
            .await
            .map_err(|e| Error::io(target, io::Error::other(e.to_string())))
            .and_then(|r| r);
        match r {
            Ok(files) => extracted.extend(files),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    // Every file the backup lists must have come out of a partition, before pg_control makes
    // the directory look complete.
    if let Some(m) = files_meta {
        let key = files_metadata_key(&info.name);
        let wanted = |f: &String| {
            only.as_ref()
                .is_none_or(|o| o.contains(ALL) || o.contains(f))
        };
        if let Some(lost) = m
            .required(&key)?
            .into_iter()
            .find(|f| wanted(f) && !extracted.contains(f) && f != "global/pg_control")
        {
            return Err(Error::Corrupt {
                key,
                msg: format!("lists /{lost}, but no partition holds it"),
            });
        }
    }
    let skipped = skip.len();
    match control {
        _ if !with_control => Ok((extracted, skipped)),
        Some((key, c)) => {
            let none = HashSet::new();
            extracted.extend(extract_one(archive, &key, c, target, routes, &none, None).await?);
            Ok((extracted, skipped))
        }
        // WAL-E keeps pg_control inside a partition; it must be there by now.
        None if target.join("global/pg_control").exists() => Ok((extracted, skipped)),
        None => Err(Error::Corrupt {
            key: parts_prefix(&info.name),
            msg: "the backup has no pg_control".into(),
        }),
    }
}

/// The backup's per-file records: `files_metadata.json`, or the `Files` older WAL-G kept in
/// the sentinel. None for a backup that has neither (WAL-E, old WAL-G, walkeeper before it
/// wrote them).
async fn load_files_metadata(store: &Store, info: &BackupInfo) -> Result<Option<FilesMetadata>> {
    if info.format != super::Format::WalG {
        return Ok(None);
    }
    let key = files_metadata_key(&info.name);
    match store.get_bytes(&key).await {
        Ok(b) => return FilesMetadata::parse(&key, &b).map(Some),
        Err(Error::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    let skey = super::sentinel_key(&info.name);
    match store.get_bytes(&skey).await {
        Ok(b) => FilesMetadata::from_sentinel(&skey, &b),
        Err(e) => Err(e),
    }
}

/// walkeeper records how many partitions it wrote (`TarPartitions`): every `part_NNN` from 1 to
/// that count must be there. WAL-G's numbers have gaps (a tarball it opened but filled with
/// nothing, and pg_control's tar, take a number each), so for its backups only at least one
/// partition is required here; its `TarFileSets` names the ones that must exist.
fn check_partitions(
    info: &BackupInfo,
    parts: &[(String, Compression)],
    skipped: &HashSet<String>,
) -> Result<()> {
    let numbers: std::collections::BTreeSet<u32> = parts
        .iter()
        .map(|(k, _)| k.as_str())
        .chain(skipped.iter().map(String::as_str))
        .filter_map(|k| {
            let file = k.rsplit('/').next()?;
            let n = file.strip_prefix("part_")?.split('.').next()?;
            n.parse().ok()
        })
        .collect();
    let expected = info.tar_partitions.unwrap_or(1);
    let first_missing = match info.tar_partitions {
        Some(_) => (1..=expected.max(1)).find(|n| !numbers.contains(n)),
        None => numbers.is_empty().then_some(1),
    };
    match first_missing {
        // WAL-E numbers its partitions from 0.
        _ if info.format == super::Format::WalE && !numbers.is_empty() => Ok(()),
        None => Ok(()),
        Some(n) => Err(Error::Corrupt {
            key: format!("{}/part_{n:03}", parts_prefix(&info.name)),
            msg: format!("partition {n} of {} is missing", expected.max(1)),
        }),
    }
}

async fn extract_one(
    archive: &Arc<Archive>,
    key: &str,
    c: Compression,
    target: &Path,
    routes: &Arc<Routes>,
    increments: &HashSet<String>,
    only: Option<Arc<HashSet<String>>>,
) -> Result<Vec<String>> {
    let reader = archive
        .store
        .open_read(key)
        .await?
        .ok_or_else(|| Error::Corrupt {
            key: key.to_string(),
            msg: "partition listed but missing".into(),
        })?;
    let (archive2, target2, routes2, key2, increments2) = (
        archive.clone(),
        target.to_path_buf(),
        routes.clone(),
        key.to_string(),
        increments.clone(),
    );
    let files = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
        let plain = codec::decoder(reader, c, archive2.decryption.as_ref()).map_err(|e| {
            Error::Corrupt {
                key: key2.clone(),
                msg: e.to_string(),
            }
        })?;
        unpack(plain, &target2, &routes2, &increments2, only.as_deref()).map_err(|e| {
            Error::Corrupt {
                key: key2.clone(),
                msg: e.to_string(),
            }
        })
    })
    .await
    .map_err(|e| Error::io(target, io::Error::other(e.to_string())))??;
    tracing::debug!(key, files = files.len(), "extracted");
    Ok(files)
}

/// Extracts one partition. Entries named in `increments` are WAL-G increment files, applied to
/// the file the base restored. Returns the names of its entries (files, directories, links),
/// relative to the data directory.
fn unpack<R: io::Read>(
    plain: R,
    target: &Path,
    routes: &Routes,
    increments: &HashSet<String>,
    only: Option<&HashSet<String>>,
) -> io::Result<Vec<String>> {
    let mut ar = tar::Archive::new(TarTail::new(plain));
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    let mut files = Vec::new();
    // Where the header after the last entry read starts.
    let mut next_header = 0u64;
    for entry in ar.entries()? {
        let mut entry = entry?;
        next_header = entry
            .raw_file_position()
            .saturating_add(entry.size().div_ceil(512).saturating_mul(512));
        let name = entry.path()?.into_owned();
        let dest = routes.dest(target, &name)?;
        let kind = entry.header().entry_type();
        let rel = name.to_str().and_then(super::files::relative);
        if let Some(rel) = &rel {
            files.push(rel.clone());
        }
        // A delta restore writes only the regular files it has to.
        if kind.is_file()
            && only
                .is_some_and(|o| !o.contains(ALL) && !rel.as_ref().is_some_and(|r| o.contains(r)))
        {
            continue;
        }
        if kind.is_file() && rel.as_ref().is_some_and(|r| increments.contains(r)) {
            let stored = entry.size();
            super::increment::apply(&mut entry, stored, &dest)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", name.display())))?;
            continue;
        }
        if kind.is_symlink() || kind.is_hard_link() {
            let link = entry
                .link_name()?
                .map(|l| l.into_owned())
                .unwrap_or_default();
            link_entry(&name, &link, kind.is_symlink(), &dest, target, routes)?;
            continue;
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        entry
            .unpack(&dest)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", name.display())))?;
    }
    // Read to the end, so the decoder checks the stream's end (truncation, checksums), and
    // check that the archive really ended: the tar reader also stops, without an error, where
    // the input ends at a header boundary.
    let mut tail = ar.into_inner();
    io::copy(&mut tail, &mut io::sink())?;
    tail.check_end(next_header)?;
    Ok(files)
}

/// A link entry. Tablespace links (`pg_tblspc/<oid>`) are made from the spec, and a linked
/// `pg_wal` becomes the plain directory the restore makes: both are skipped. Any other link is
/// made only when it stays inside the data directory: a symbolic link whose target only
/// descends from its own directory (no `/` start, no `..`), or a hard link to another entry.
fn link_entry(
    name: &Path,
    link: &Path,
    symbolic: bool,
    dest: &Path,
    target: &Path,
    routes: &Routes,
) -> io::Result<()> {
    let rel = name.to_str().and_then(super::files::relative);
    let parts: Vec<&str> = rel
        .as_deref()
        .map(|r| r.split('/').collect())
        .unwrap_or_default();
    let outside = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "tar entry {} links to {}, outside the data directory",
                name.display(),
                link.display()
            ),
        )
    };
    if symbolic {
        if matches!(parts.as_slice(), ["pg_tblspc", _] | ["pg_wal" | "pg_xlog"]) {
            tracing::debug!(entry = %name.display(), "link skipped: made by the restore");
            return Ok(());
        }
        let descends = !link.as_os_str().is_empty()
            && link
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !descends {
            return Err(outside());
        }
        replace_with(dest, |d| std::os::unix::fs::symlink(link, d))
    } else {
        let src = routes.dest(target, link).map_err(|_| outside())?;
        replace_with(dest, |d| std::fs::hard_link(&src, d))
    }
}

/// Makes `dest` with `make`, replacing a file (never a directory) already there.
fn replace_with(dest: &Path, make: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(dest) {
        Ok(m) if !m.is_dir() => std::fs::remove_file(dest)?,
        _ => {}
    }
    make(dest).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dest.display())))
}

/// Counts the bytes of a tar stream and how many of the last ones are zero.
struct TarTail<R> {
    inner: R,
    read: u64,
    zeros: u64,
}

impl<R> TarTail<R> {
    fn new(inner: R) -> Self {
        TarTail {
            inner,
            read: 0,
            zeros: 0,
        }
    }

    /// A complete archive has, after its last entry (whose data ends where the header at
    /// `next_header` would start), the end-of-archive marker: two zero blocks, and nothing but
    /// zeros (record padding) after them.
    fn check_end(&self, next_header: u64) -> io::Result<()> {
        let after = self.read.saturating_sub(next_header);
        if self.read < next_header || after < 1024 || self.zeros < after {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "tar: truncated: the archive ends at byte offset {} without its \
                     end-of-archive marker (two zero blocks at byte offset {next_header})",
                    self.read
                ),
            ));
        }
        Ok(())
    }
}

impl<R: io::Read> io::Read for TarTail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = &buf[..n.min(buf.len())];
        match got.iter().rposition(|b| *b != 0) {
            Some(last) => self.zeros = (got.len() - last - 1) as u64,
            None => self.zeros += got.len() as u64,
        }
        self.read += got.len() as u64;
        Ok(n)
    }
}

fn cleanup(target: &Path, routes: &Routes) {
    if let Ok(rd) = std::fs::read_dir(target) {
        for e in rd.flatten() {
            let p = e.path();
            let _ = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
    for dir in routes.tablespaces.values() {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Recreates the directories PostgreSQL needs, the tablespace links, and mode 0700.
/// Makes everything restored durable: one `syncfs(2)` per file system holding the data
/// directory or a tablespace (the restored files are written without fsync, which would cost
/// a flush per file).
fn sync_restored(target: &Path, routes: &Routes) -> Result<()> {
    let started = std::time::Instant::now();
    let mut devices = std::collections::BTreeSet::new();
    for dir in std::iter::once(target).chain(routes.tablespaces.values().map(PathBuf::as_path)) {
        let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !devices.insert(std::os::unix::fs::MetadataExt::dev(&meta)) {
            continue;
        }
        let f = std::fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
        // SAFETY: syncfs on a descriptor this function owns.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } != 0 {
            return Err(Error::io(dir, io::Error::last_os_error()));
        }
    }
    tracing::debug!(
        file_systems = devices.len(),
        ms = started.elapsed().as_millis() as u64,
        "restored files synced"
    );
    Ok(())
}

fn finish_layout(target: &Path, routes: &Routes) -> Result<()> {
    for d in NEEDED_DIRS {
        let p = target.join(d);
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(&p, e))?;
    }
    for (oid, loc) in &routes.tablespaces {
        let link = target.join("pg_tblspc").join(oid);
        if link.is_symlink() {
            std::fs::remove_file(&link).map_err(|e| Error::io(&link, e))?;
        } else if link.is_dir() {
            let _ = std::fs::remove_dir(&link);
        }
        std::fs::create_dir_all(loc).map_err(|e| Error::io(loc, e))?;
        std::fs::set_permissions(loc, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(loc, e))?;
        std::os::unix::fs::symlink(loc, &link).map_err(|e| Error::io(&link, e))?;
    }
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(target, e))?;
    Ok(())
}

/// PostgreSQL recreates the tablespace links from `tablespace_map` at startup: point it at the
/// locations chosen here (or drop it for a blind restore, which keeps tablespaces in place).
fn rewrite_tablespace_map(target: &Path, routes: &Routes, blind: bool) -> Result<()> {
    let map = target.join("tablespace_map");
    let Ok(text) = std::fs::read_to_string(&map) else {
        return Ok(());
    };
    if blind {
        return std::fs::remove_file(&map).map_err(|e| Error::io(&map, e));
    }
    let mut out = String::new();
    for line in text.lines() {
        match line.split_once(' ') {
            Some((oid, _)) if routes.tablespaces.contains_key(oid) => {
                let loc = &routes.tablespaces[oid];
                out.push_str(&format!("{oid} {}\n", loc.display()));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    std::fs::write(&map, out).map_err(|e| Error::io(&map, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small archive like a partition: a few files of WAL-like pages, one empty, one of a
    /// size that is not a multiple of 512, a directory.
    fn sample_tar() -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
        let files = vec![
            (
                "base/1/1259".to_string(),
                crate::codec::testdata::wal_like(3 * 8192, 31),
            ),
            (
                "base/1/2608".to_string(),
                crate::codec::testdata::wal_like(1000, 32),
            ),
            ("global/pg_filenode.map".to_string(), Vec::new()),
            ("PG_VERSION".to_string(), b"15\n".to_vec()),
        ];
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o700);
        h.set_size(0);
        b.append_data(&mut h, "base/1/", io::empty()).unwrap();
        for (name, data) in &files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o600);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        (b.into_inner().unwrap(), files)
    }

    fn unpack_into(bytes: &[u8]) -> (tempfile::TempDir, io::Result<()>) {
        let dir = tempfile::tempdir().unwrap();
        let res = unpack(bytes, dir.path(), &Routes::default(), &HashSet::new(), None).map(|_| ());
        (dir, res)
    }

    #[test]
    fn a_complete_partition_extracts_every_file() {
        let (tar, files) = sample_tar();
        let (dir, res) = unpack_into(&tar);
        res.unwrap();
        for (name, data) in &files {
            assert!(
                std::fs::read(dir.path().join(name)).unwrap() == *data,
                "{name}"
            );
        }
        // Record padding after the end-of-archive marker (Python's tarfile, GNU tar) is fine.
        let mut padded = tar.clone();
        padded.resize(tar.len().div_ceil(10240) * 10240 + 10240, 0);
        unpack_into(&padded).1.unwrap();
    }

    #[test]
    fn a_partition_cut_anywhere_is_a_truncation_error() {
        let (tar, _) = sample_tar();
        let marks: Vec<usize> = (0..tar.len()).step_by(512).collect();
        let cuts = crate::codec::testdata::cut_points(tar.len(), &marks, 40, 33);
        for cut in cuts {
            let (_dir, res) = unpack_into(&tar[..cut]);
            let e = res.expect_err(&format!("cut at {cut} of {} was accepted", tar.len()));
            assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::Other
                ),
                "cut at {cut}: {e:?}"
            );
        }
        // Missing one or both end-of-archive blocks, exactly.
        for missing in [512, 1024] {
            let (_dir, res) = unpack_into(&tar[..tar.len() - missing]);
            let e = res.unwrap_err();
            assert!(e.to_string().contains("end-of-archive"), "{e}");
        }
        // Garbage after the marker is not padding.
        let mut extra = tar.clone();
        extra.extend_from_slice(&[1u8; 512]);
        assert!(unpack_into(&extra).1.is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
                let _ = unpack_into(&bytes);
            }

            #[test]
            fn a_mutated_partition_never_panics_and_a_cut_one_always_fails(
                edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
                cut in any::<prop::sample::Index>(),
            ) {
                let (tar, _) = sample_tar();
                let mut bad = tar.clone();
                for (at, b) in &edits {
                    let i = at.index(bad.len());
                    bad[i] = *b;
                }
                let _ = unpack_into(&bad);
                let c = cut.index(tar.len());
                prop_assert!(unpack_into(&tar[..c]).1.is_err(), "cut at {} accepted", c);
            }
        }
    }

    /// A tar entry with exactly this name, as WAL-G (Go's archive/tar, USTAR) writes it.
    fn raw_entry(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        name: &str,
        link: &str,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(if kind.is_dir() { 0o700 } else { 0o600 });
        h.set_size(data.len() as u64);
        let u = h.as_ustar_mut().unwrap();
        let n = name.len().min(100);
        u.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        let l = link.len().min(100);
        u.linkname[..l].copy_from_slice(&link.as_bytes()[..l]);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn wal_g_names_extract_into_the_data_directory() {
        let mut b = tar::Builder::new(Vec::new());
        raw_entry(&mut b, tar::EntryType::Directory, "/", "", b"");
        raw_entry(&mut b, tar::EntryType::Directory, "/base", "", b"");
        raw_entry(&mut b, tar::EntryType::Regular, "/base/1259", "", b"page");
        raw_entry(
            &mut b,
            tar::EntryType::Regular,
            "/global/pg_control",
            "",
            b"ctl",
        );
        raw_entry(
            &mut b,
            tar::EntryType::Regular,
            "backup_label",
            "",
            b"label",
        );
        let tar = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut files = unpack(
            &tar[..],
            dir.path(),
            &Routes::default(),
            &HashSet::new(),
            None,
        )
        .unwrap();
        files.sort();
        assert_eq!(
            files,
            ["backup_label", "base", "base/1259", "global/pg_control"]
        );
        assert_eq!(
            std::fs::read(dir.path().join("base/1259")).unwrap(),
            b"page"
        );
        assert_eq!(
            std::fs::read(dir.path().join("global/pg_control")).unwrap(),
            b"ctl"
        );
        assert_eq!(
            std::fs::read(dir.path().join("backup_label")).unwrap(),
            b"label"
        );
    }

    #[test]
    fn long_wal_g_names_in_a_ustar_prefix_or_a_pax_record_extract_into_the_data_directory() {
        let dir = "/pg_tblspc/16384/PG_15_202209061/16385/".to_string() + &"d".repeat(70);
        let long = format!("{dir}/{}", "f".repeat(90));
        let mut b = tar::Builder::new(Vec::new());
        // Go's USTAR split: prefix (up to 155 bytes) + name (up to 100).
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o600);
        h.set_size(1);
        let u = h.as_ustar_mut().unwrap();
        u.prefix[..dir.len()].copy_from_slice(dir.as_bytes());
        u.name[..90].copy_from_slice("f".repeat(90).as_bytes());
        h.set_cksum();
        b.append(&h, &b"u"[..]).unwrap();
        // Past USTAR's limits Go writes a PAX record with the path.
        let longer = format!("/base/{0}/{0}/{0}", "p".repeat(100));
        b.append_pax_extensions([("path", longer.as_bytes())])
            .unwrap();
        raw_entry(&mut b, tar::EntryType::Regular, "/base/short", "", b"p");
        let tar = b.into_inner().unwrap();
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("data");
        let mut got = unpack(&tar[..], &target, &Routes::default(), &HashSet::new(), None).unwrap();
        got.sort();
        assert_eq!(got, [longer[1..].to_string(), long[1..].to_string()]);
        assert_eq!(std::fs::read(target.join(&long[1..])).unwrap(), b"u");
        assert_eq!(std::fs::read(target.join(&longer[1..])).unwrap(), b"p");
    }

    #[test]
    fn links_are_made_only_inside_the_data_directory() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("data");
        std::fs::create_dir(&target).unwrap();
        let one = |kind, name: &str, link: &str| {
            let mut b = tar::Builder::new(Vec::new());
            raw_entry(&mut b, tar::EntryType::Regular, "/base/1/2", "", b"x");
            raw_entry(&mut b, kind, name, link, b"");
            let tar = b.into_inner().unwrap();
            unpack(&tar[..], &target, &Routes::default(), &HashSet::new(), None)
        };
        use tar::EntryType::{Link, Symlink};
        // Made: a link that only descends, a hard link to another entry.
        one(Symlink, "/conf", "base/1/2").unwrap();
        assert_eq!(std::fs::read(target.join("conf")).unwrap(), b"x");
        one(Link, "/hard", "/base/1/2").unwrap();
        assert_eq!(std::fs::read(target.join("hard")).unwrap(), b"x");
        // Skipped: tablespace links and a linked pg_wal are made by the restore.
        one(Symlink, "/pg_tblspc/16384", "/srv/ts").unwrap();
        one(Symlink, "pg_wal", "/srv/wal").unwrap();
        assert!(std::fs::symlink_metadata(target.join("pg_tblspc/16384")).is_err());
        assert!(std::fs::symlink_metadata(target.join("pg_wal")).is_err());
        // Refused: anything that points out.
        for (kind, name, link) in [
            (Symlink, "/evil", "/etc"),
            (Symlink, "/evil", "../outside"),
            (Symlink, "/evil", "base/../../outside"),
            (Symlink, "/evil", ""),
            (Link, "/evil", "../outside"),
            (Link, "/evil", "/../outside"),
        ] {
            let e = one(kind, name, link).unwrap_err();
            assert!(
                e.to_string().contains("outside the data directory"),
                "{link}: {e}"
            );
            assert!(
                std::fs::symlink_metadata(target.join("evil")).is_err(),
                "{link}"
            );
        }
        let e = one(tar::EntryType::Regular, "/../outside", "").unwrap_err();
        assert!(e.to_string().contains("leaves the data directory"), "{e}");
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            1,
            "nothing was written beside the data directory"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        #[test]
        fn no_entry_name_or_link_writes_outside_the_data_directory(
            entries in proptest::collection::vec(
                (0u8..3, "[a/.]{1,12}", "[a/.]{0,12}"),
                1..6,
            )
        ) {
            let root = tempfile::tempdir().unwrap();
            let target = root.path().join("data");
            std::fs::create_dir(&target).unwrap();
            let mut b = tar::Builder::new(Vec::new());
            for (kind, name, link) in &entries {
                let kind = match kind {
                    0 => tar::EntryType::Regular,
                    1 => tar::EntryType::Symlink,
                    _ => tar::EntryType::Link,
                };
                raw_entry(&mut b, kind, name, link, if kind.is_file() { b"data" } else { b"" });
            }
            // Then a file through whatever the links made.
            raw_entry(&mut b, tar::EntryType::Regular, "a/a/a", "", b"data");
            let tar = b.into_inner().unwrap();
            let _ = unpack(&tar[..], &target, &Routes::default(), &HashSet::new(), None);
            let beside: Vec<_> = std::fs::read_dir(root.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            proptest::prop_assert_eq!(beside, vec![std::ffi::OsString::from("data")]);
            for e in walkdir::WalkDir::new(&target).follow_links(false) {
                let e = e.unwrap();
                if e.path_is_symlink() {
                    let t = std::fs::read_link(e.path()).unwrap();
                    proptest::prop_assert!(
                        t.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
                        "{} -> {}", e.path().display(), t.display()
                    );
                }
            }
        }
    }

    #[test]
    fn entries_cannot_leave_the_target_and_tablespaces_are_routed() {
        let mut r = Routes::default();
        r.tablespaces
            .insert("16384".into(), PathBuf::from("/ts/one"));
        let t = Path::new("/data");
        assert_eq!(
            r.dest(t, Path::new("base/1/2")).unwrap(),
            Path::new("/data/base/1/2")
        );
        assert_eq!(
            r.dest(t, Path::new("pg_tblspc/16384/PG_15/5/6")).unwrap(),
            Path::new("/ts/one/PG_15/5/6")
        );
        assert_eq!(
            r.dest(t, Path::new("pg_tblspc/99/x")).unwrap(),
            Path::new("/data/pg_tblspc/99/x")
        );
        assert!(r.dest(t, Path::new("../etc/passwd")).is_err());
        assert!(r.dest(t, Path::new("base/../../etc/passwd")).is_err());
        assert!(r.dest(t, Path::new("/base/../../etc/passwd")).is_err());
        // WAL-G's names: "/" + the path relative to the data directory.
        assert_eq!(
            r.dest(t, Path::new("/global/pg_control")).unwrap(),
            Path::new("/data/global/pg_control")
        );
        assert_eq!(
            r.dest(t, Path::new("/pg_tblspc/16384/PG_15/5/6")).unwrap(),
            Path::new("/ts/one/PG_15/5/6")
        );
        assert_eq!(r.dest(t, Path::new("/")).unwrap(), Path::new("/data"));
    }
}
