//! `backup-push`: a non-exclusive base backup streamed into size-bounded tar partitions,
//! compressed and uploaded concurrently with bounded memory. The sentinel goes last.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;

use super::delta::{DeltaBase, DeltaRequest};
use super::files::{self, FileDescription, FilesMetadata};
use super::increment;
use super::pages::{self, ChecksumReport, CorruptBlocks, PageVerifier};
use super::{
    parts_prefix, pg, sentinel_key, Metadata, Sentinel, TablespaceLocation, TablespaceSpec,
    BACKUP_FOLDER,
};
use crate::archive::Archive;
use crate::codec::{self, Compression};
use crate::error::{Error, Result};
use crate::wal::names::WalName;
use crate::wal::Lsn;

/// Directories whose contents PostgreSQL says to leave out (the directories themselves stay).
const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];
/// Files left out anywhere at the top level.
const SKIP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
];

#[derive(Clone)]
pub struct PushOptions {
    pub pgdata: PathBuf,
    pub connstring: Option<String>,
    /// Bytes per second read from the data directory; None for unlimited.
    pub read_rate_limit: Option<u64>,
    /// Uncompressed bytes per tar partition.
    pub part_size: u64,
    /// Partitions compressed and uploaded at once.
    pub concurrency: usize,
    pub permanent: bool,
    /// WAL-G's `--add-user-data`: stored as `UserData` / `user_data`.
    pub user_data: Option<serde_json::Value>,
    /// Verify page checksums while reading (`--verify`, WALG_VERIFY_PAGE_CHECKSUMS); None: when
    /// the cluster has data checksums.
    pub verify_pages: Option<bool>,
    /// List every corrupt block of a file, not only the first ten (`--store-all-corrupt`).
    pub store_all_corrupt: bool,
    /// Whether (and from which backup) to take a delta backup.
    pub delta: DeltaRequest,
}

impl PushOptions {
    /// A scheduled backup (the agent's, the sidecar's): the settings' partition size,
    /// concurrency, rate limit and page verification; not permanent, no user data.
    pub fn scheduled(
        pgdata: PathBuf,
        connstring: Option<String>,
        backup: &crate::config::BackupSettings,
    ) -> Self {
        PushOptions {
            pgdata,
            connstring,
            read_rate_limit: backup.read_rate_limit,
            part_size: backup.tar_size_threshold,
            concurrency: backup.upload_concurrency.unwrap_or(2).clamp(1, 8),
            permanent: false,
            user_data: None,
            verify_pages: backup.verify_page_checksums,
            store_all_corrupt: backup.store_all_corrupt_blocks,
            delta: DeltaRequest {
                max_steps: backup.delta_max_steps,
                origin: backup.delta_origin,
                ..Default::default()
            },
        }
    }
}

/// Shows the connection string without its password.
impl std::fmt::Debug for PushOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushOptions")
            .field("pgdata", &self.pgdata)
            .field(
                "connstring",
                &crate::security::ScrubbedConnstring(self.connstring.as_deref()),
            )
            .field("read_rate_limit", &self.read_rate_limit)
            .field("part_size", &self.part_size)
            .field("concurrency", &self.concurrency)
            .field("permanent", &self.permanent)
            .field("verify_pages", &self.verify_pages)
            .field("store_all_corrupt", &self.store_all_corrupt)
            .field("delta", &self.delta)
            .finish()
    }
}

#[derive(Debug, Clone)]
struct Entry {
    /// The path relative to the data directory (`/`-separated); the tar entry is named
    /// `/` + this, as WAL-G names it.
    name: String,
    path: PathBuf,
    kind: Kind,
    size: u64,
    /// A file's modification time as the walk saw it (None for directories).
    mtime: Option<chrono::DateTime<Utc>>,
}

/// A file's modification time to the nanosecond, as WAL-G records it.
fn mtime_of(m: &std::fs::Metadata) -> Option<chrono::DateTime<Utc>> {
    chrono::DateTime::<Utc>::from_timestamp(m.mtime(), m.mtime_nsec().clamp(0, 999_999_999) as u32)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
}

/// Walks the data directory and the tablespaces behind `pg_tblspc` links.
fn collect(pgdata: &Path) -> Result<(Vec<Entry>, TablespaceSpec)> {
    let mut entries = Vec::new();
    let mut spec = TablespaceSpec {
        base_prefix: pgdata.display().to_string(),
        ..Default::default()
    };
    walk(pgdata, "", &mut entries, true)?;
    let tblspc = pgdata.join("pg_tblspc");
    if let Ok(rd) = std::fs::read_dir(&tblspc) {
        let mut links: Vec<_> = rd.flatten().collect();
        links.sort_by_key(|e| e.file_name());
        for e in links {
            let oid = e.file_name().to_string_lossy().into_owned();
            let link = e.path();
            let target = std::fs::read_link(&link).map_err(|err| Error::io(&link, err))?;
            let target = if target.is_absolute() {
                target
            } else {
                tblspc.join(target)
            };
            spec.tablespaces.insert(
                oid.clone(),
                TablespaceLocation {
                    loc: format!("{}/", target.display()),
                    link: format!("pg_tblspc/{oid}"),
                },
            );
            entries.push(Entry {
                name: format!("pg_tblspc/{oid}"),
                path: target.clone(),
                kind: Kind::Dir,
                size: 0,
                mtime: None,
            });
            walk(&target, &format!("pg_tblspc/{oid}/"), &mut entries, false)?;
        }
    }
    Ok((entries, spec))
}

fn walk(root: &Path, prefix: &str, out: &mut Vec<Entry>, is_pgdata: bool) -> Result<()> {
    let mut it = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter();
    while let Some(item) = it.next() {
        let e = match item {
            Ok(e) => e,
            // Files vanish under a running server (dropped tables): skip them.
            Err(err)
                if err
                    .io_error()
                    .is_some_and(|io| io.kind() == io::ErrorKind::NotFound) =>
            {
                continue
            }
            Err(err) => {
                let path = err
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| root.to_path_buf());
                return Err(Error::io(path, io::Error::other(err.to_string())));
            }
        };
        let rel = e.path().strip_prefix(root).unwrap_or(e.path());
        let rel_s = rel.to_string_lossy().replace('\\', "/");
        let file_name = e.file_name().to_string_lossy();
        if file_name.starts_with("pgsql_tmp") || file_name == "pg_internal.init" {
            if e.file_type().is_dir() {
                it.skip_current_dir();
            }
            continue;
        }
        let name = format!("{prefix}{rel_s}");
        let ft = e.file_type();
        if is_pgdata {
            if e.depth() == 1 && SKIP_FILES.contains(&rel_s.as_str()) {
                continue;
            }
            if rel_s == "global/pg_control" {
                continue;
            }
            if e.depth() == 1 && EMPTY_DIRS.contains(&rel_s.as_str()) {
                // pg_wal may be a symlink (initdb -X): stored as a plain directory.
                out.push(Entry {
                    name,
                    path: e.path().to_path_buf(),
                    kind: Kind::Dir,
                    size: 0,
                    mtime: None,
                });
                if ft.is_dir() {
                    it.skip_current_dir();
                }
                continue;
            }
            if rel_s.starts_with("pg_tblspc/") {
                continue; // tablespaces are walked through their links
            }
        }
        if ft.is_dir() {
            out.push(Entry {
                name,
                path: e.path().to_path_buf(),
                kind: Kind::Dir,
                size: 0,
                mtime: None,
            });
        } else if ft.is_file() {
            let Ok(m) = e.metadata() else { continue };
            out.push(Entry {
                name,
                path: e.path().to_path_buf(),
                kind: Kind::File,
                size: m.len(),
                mtime: mtime_of(&m),
            });
        }
    }
    Ok(())
}

/// Partitions smaller than this are not split further for parallelism.
const MIN_SPLIT: u64 = 64 * 1024 * 1024;

/// The partition size to cut at: the configured threshold, but small enough that a data
/// directory below `concurrency` × threshold still gives every upload slot a partition
/// (a 750 MB cluster would otherwise be one partition, read and written by one thread).
fn effective_part_size(total: u64, threshold: u64, concurrency: usize) -> u64 {
    let share = total.div_ceil(concurrency.max(1) as u64);
    threshold.min(share.max(MIN_SPLIT)).max(1)
}

/// Splits entries into partitions of about `part_size` uncompressed bytes (each entry weighing
/// what `weights` says), in walk order.
fn partition(entries: Vec<Entry>, weights: &[u64], part_size: u64) -> Vec<Vec<Entry>> {
    let mut parts: Vec<Vec<Entry>> = vec![Vec::new()];
    let mut cur = 0u64;
    for (i, e) in entries.into_iter().enumerate() {
        let weight = weights.get(i).copied().unwrap_or(e.size);
        if cur >= part_size && e.kind == Kind::File && weight > 0 {
            parts.push(Vec::new());
            cur = 0;
        }
        cur += weight;
        if let Some(p) = parts.last_mut() {
            p.push(e);
        }
    }
    parts
}

/// Shared read-rate limiter: readers sleep when ahead of `rate` bytes per second.
#[derive(Debug)]
pub struct RateLimit {
    rate: u64,
    started: Instant,
    read: AtomicU64,
}

impl RateLimit {
    pub fn new(rate: u64) -> Self {
        RateLimit {
            rate: rate.max(1),
            started: Instant::now(),
            read: AtomicU64::new(0),
        }
    }
    fn account(&self, n: usize) {
        let total = self.read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let due = Duration::from_secs_f64(total as f64 / self.rate as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

/// Reads exactly `size` bytes of a file that a running server may change: a shorter file is
/// padded with zeros (WAL replay rewrites those pages), a longer one is cut.
struct FileBody<'a, R = io::Take<io::Chain<File, io::Repeat>>> {
    inner: R,
    limit: Option<&'a RateLimit>,
}

impl<R: Read> Read for FileBody<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(l) = self.limit {
            l.account(n);
        }
        Ok(n)
    }
}

/// How a delta backup stored a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Whole,
    /// As an increment of its base's copy (WAL-G's `IsIncremented`).
    Increment,
    /// Not at all: unchanged since the base (WAL-G's `IsSkipped`).
    Skipped,
}

/// What a delta backup compares each file with.
#[derive(Debug, Clone)]
pub(super) struct DeltaCtx {
    since: Lsn,
    base_files: std::collections::HashMap<String, Option<chrono::DateTime<chrono::FixedOffset>>>,
}

impl DeltaCtx {
    fn new(base: &DeltaBase) -> Self {
        DeltaCtx {
            since: base.start_lsn,
            base_files: base.files.clone(),
        }
    }

    /// Unchanged since the base: the base recorded the same modification time (WAL-G's rule).
    fn unchanged(&self, entry: &str, mtime: chrono::DateTime<Utc>) -> bool {
        matches!(self.base_files.get(entry), Some(Some(t)) if *t == mtime)
    }
}

/// A regular file as written into a partition, for `files_metadata.json`.
#[derive(Debug, Clone)]
struct Written {
    /// The tar entry name.
    name: String,
    /// The bytes stored in the partition (an increment's size, 0 for a skipped file).
    size: u64,
    /// The file's size.
    file_size: u64,
    stored: Stored,
    /// Its modification time when it was opened, before it was read.
    mtime: chrono::DateTime<Utc>,
    /// Pages verified, and the blocks that failed (relation files, with verification on).
    pages_checked: u64,
    corrupt: Option<CorruptBlocks>,
}

/// Page verification while a backup reads: pages changed at or after `start` are not judged.
#[derive(Debug, Clone, Copy)]
pub(super) struct Verify {
    pub(super) start: Lsn,
    pub(super) keep_all: bool,
}

/// Feeds the bytes read from a relation file to its page verifier.
struct Verifying<'v, R> {
    inner: R,
    pages: &'v mut PageVerifier,
}

impl<R: Read> Read for Verifying<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pages.feed(&buf[..n]);
        Ok(n)
    }
}

/// Appends an entry named `name` exactly (WAL-G's names start with `/`, which the tar crate's
/// path setters refuse): in the header when it fits, else in a GNU long-name entry before it.
pub(super) fn append_named<W: io::Write, R: Read>(
    tar: &mut tar::Builder<W>,
    h: &mut tar::Header,
    name: &str,
    data: R,
) -> io::Result<()> {
    let bytes = name.as_bytes();
    let slot = &mut h.as_old_mut().name;
    if bytes.len() > slot.len() {
        let mut long = tar::Header::new_gnu();
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_mode(0o644);
        long.set_mtime(0);
        long.set_size(bytes.len() as u64 + 1);
        long.set_cksum();
        tar.append(&long, bytes.chain(&[0u8][..]))?;
    }
    let slot = &mut h.as_old_mut().name;
    slot.fill(0);
    let n = bytes.len().min(slot.len());
    slot[..n].copy_from_slice(&bytes[..n]);
    h.set_cksum();
    tar.append(h, data)
}

/// Writes one tar partition into `sink`; returns the regular files it holds (and, for a delta,
/// those it left out as unchanged).
fn write_tar(
    entries: &[Entry],
    sink: &mut dyn io::Write,
    limit: Option<&RateLimit>,
    verify: Option<Verify>,
    delta: Option<&DeltaCtx>,
) -> io::Result<Vec<Written>> {
    let mut tar = tar::Builder::new(sink);
    let mut written = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let name = files::entry_name(&e.name);
        match e.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o700);
                h.set_size(0);
                h.set_mtime(Utc::now().timestamp() as u64);
                append_named(&mut tar, &mut h, &name, io::empty())?;
            }
            Kind::File => {
                let f = match File::open(&e.path) {
                    Ok(f) => f,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    Err(err) => {
                        return Err(io::Error::new(
                            err.kind(),
                            format!("{}: {err}", e.path.display()),
                        ))
                    }
                };
                let meta = f.metadata()?;
                let mtime = mtime_of(&meta).unwrap_or_default();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(meta.mode() & 0o7777);
                h.set_mtime(meta.mtime().max(0) as u64);
                if delta.is_some_and(|d| d.unchanged(&name, mtime)) {
                    written.push(Written {
                        name,
                        size: 0,
                        file_size: e.size,
                        stored: Stored::Skipped,
                        mtime,
                        pages_checked: 0,
                        corrupt: None,
                    });
                    continue;
                }
                let segno = verify.and_then(|_| pages::relation_segment(&e.name));
                let mut pages = match (verify, segno) {
                    (Some(v), Some(segno)) => Some(PageVerifier::new(segno, v.start)),
                    _ => None,
                };
                // A relation file the base has: only the pages changed since the base started.
                let increment = match delta {
                    Some(d)
                        if d.base_files.contains_key(&name)
                            && increment::is_paged_file(&e.name, e.size)
                            && pages.is_none()
                            && e.size >= PARALLEL_SCAN_MIN =>
                    {
                        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                        let ranges = (cores as u64).min(e.size / (PARALLEL_SCAN_MIN / 2));
                        scan_in_ranges(&f, e.size, d.since, limit, ranges).map_err(|err| {
                            io::Error::new(err.kind(), format!("{}: {err}", e.path.display()))
                        })?
                    }
                    Some(d)
                        if d.base_files.contains_key(&name)
                            && increment::is_paged_file(&e.name, e.size) =>
                    {
                        let mut scan = io::BufReader::with_capacity(
                            codec::CHUNK,
                            FileBody {
                                inner: (&f).take(e.size),
                                limit,
                            },
                        );
                        let blocks =
                            increment::changed_blocks(&mut scan, e.size, d.since, |page| {
                                if let Some(p) = pages.as_mut() {
                                    p.feed(page);
                                }
                            })
                            .map_err(|err| {
                                io::Error::new(err.kind(), format!("{}: {err}", e.path.display()))
                            })?;
                        if blocks.is_none() {
                            tracing::debug!(file = %e.path.display(), "a page header is not valid: stored whole");
                            pages = match (verify, segno) {
                                (Some(v), Some(segno)) => Some(PageVerifier::new(segno, v.start)),
                                _ => None,
                            };
                        }
                        blocks
                    }
                    _ => None,
                };
                let (size, stored) = match increment {
                    Some(blocks) => {
                        let size = increment::stored_size(blocks.len() as u64);
                        h.set_size(size);
                        let body = FileBody {
                            inner: increment::IncrementReader::new(&f, e.size, blocks),
                            limit,
                        };
                        let body = io::BufReader::with_capacity(codec::CHUNK, body);
                        append_named(&mut tar, &mut h, &name, body)?;
                        (size, Stored::Increment)
                    }
                    None => {
                        h.set_size(e.size);
                        let mut f = f;
                        io::Seek::rewind(&mut f)?;
                        let body = FileBody {
                            inner: f.chain(io::repeat(0)).take(e.size),
                            limit,
                        };
                        // tar copies through a small stack buffer; a large one means fewer
                        // reads and whole blocks for the compressor.
                        match pages.as_mut() {
                            Some(p) => {
                                let body = Verifying {
                                    inner: body,
                                    pages: p,
                                };
                                let body = io::BufReader::with_capacity(codec::CHUNK, body);
                                append_named(&mut tar, &mut h, &name, body)?;
                            }
                            None => {
                                let body = io::BufReader::with_capacity(codec::CHUNK, body);
                                append_named(&mut tar, &mut h, &name, body)?;
                            }
                        }
                        (e.size, Stored::Whole)
                    }
                };
                let (pages_checked, corrupt) = match pages {
                    Some(p) => (p.pages_checked, p.finish(&e.path, v_keep_all(verify))),
                    None => (0, None),
                };
                if let Some(c) = &corrupt {
                    tracing::warn!(
                        file = %e.path.display(),
                        corrupt_pages = c.count,
                        blocks = ?c.some,
                        "page checksum verification failed"
                    );
                }
                written.push(Written {
                    name,
                    size,
                    file_size: e.size,
                    stored,
                    mtime,
                    pages_checked,
                    corrupt,
                });
            }
        }
    }
    tar.into_inner()?.flush()?;
    Ok(written)
}

/// A changed relation file at least this large (and not verified, which needs the pages in
/// order) is scanned for its changed pages by several threads at once.
const PARALLEL_SCAN_MIN: u64 = 64 * 1024 * 1024;

/// The bytes `[pos, end)` of a file, by positional reads (each range its own reader).
struct RangeRead<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
}

impl Read for RangeRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = (self.end.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

/// [`increment::changed_blocks`] of a large file, its pages split into `ranges` ranges (one
/// per core) scanned at once: the same blocks, in order, or None when any page is not valid. A
/// delta's largest changed file would otherwise be read by one thread while the others idle.
fn scan_in_ranges(
    f: &File,
    size: u64,
    since: crate::wal::Lsn,
    limit: Option<&RateLimit>,
    ranges: u64,
) -> io::Result<Option<Vec<u32>>> {
    let page = super::pages::BLCKSZ as u64;
    let pages = size / page;
    let ranges = ranges.clamp(1, pages.max(1));
    let per = pages.div_ceil(ranges);
    let results: Vec<io::Result<Option<Vec<u32>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..ranges)
            .map(|i| {
                let (first, last) = ((i * per).min(pages), ((i + 1) * per).min(pages));
                scope.spawn(move || {
                    let body = FileBody {
                        inner: RangeRead {
                            file: f,
                            pos: first * page,
                            end: last * page,
                        },
                        limit,
                    };
                    let mut scan = io::BufReader::with_capacity(codec::CHUNK, body);
                    let blocks =
                        increment::changed_blocks(&mut scan, (last - first) * page, since, |_| {})?;
                    Ok(blocks.map(|b| b.into_iter().map(|n| n + first as u32).collect()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a page scan thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::new();
    for r in results {
        match r? {
            Some(b) => all.extend(b),
            None => return Ok(None),
        }
    }
    Ok(Some(all))
}

fn v_keep_all(verify: Option<Verify>) -> bool {
    verify.is_some_and(|v| v.keep_all)
}

/// A tar of in-memory files (`backup_label`, `tablespace_map`), named as given.
fn small_tar(files: &[(&str, &[u8])]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(body.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(Utc::now().timestamp() as u64);
        append_named(&mut b, &mut h, name, *body)?;
    }
    b.into_inner()
}

/// Runs a base backup of the server whose data directory is `opts.pgdata`.
pub async fn backup_push(archive: Arc<Archive>, opts: PushOptions) -> Result<Sentinel> {
    let started_at = Utc::now();
    let pgdata = opts
        .pgdata
        .canonicalize()
        .map_err(|e| Error::BadInput(format!("data directory {}: {e}", opts.pgdata.display())))?;
    let cfg = pg::config(opts.connstring.as_deref(), &archive.settings.vars)?;
    let client = pg::connect(&cfg).await?;
    let info = pg::server_info(&client).await?;
    let server_dir = Path::new(&info.data_directory)
        .canonicalize()
        .unwrap_or_default();
    if server_dir != pgdata {
        return Err(Error::BadInput(format!(
            "the server's data directory is {}, not {}",
            info.data_directory,
            pgdata.display()
        )));
    }
    // The base of a delta is chosen before the backup starts, so a refusal leaves the server
    // untouched.
    let delta = super::delta::choose_base(
        &archive.store,
        &opts.delta,
        opts.permanent,
        super::delta::Server {
            system_identifier: info.system_identifier,
            version_num: info.version_num,
        },
    )
    .await?;
    let (start_lsn, timeline) = pg::start_backup(&client, info.version_num, "walkeeper").await?;
    let full_name = format!("base_{}", start_lsn.segment(timeline, info.seg_size).name());
    let name = match &delta {
        Some(d) => d.delta_name(&full_name),
        None => full_name,
    };
    tracing::info!(backup = name, start_lsn = %start_lsn, timeline, "backup started");

    let verify = verification(&opts, info.data_checksums, info.block_size, start_lsn);
    let data_started = Instant::now();
    let result = upload_body(&archive, &opts, &pgdata, &name, verify, delta.as_ref()).await;
    if let Ok(body) = &result {
        let secs = data_started.elapsed().as_secs_f64();
        tracing::info!(
            backup = name,
            uncompressed = body.uncompressed,
            compressed = body.compressed,
            partitions = body.partitions,
            seconds = format!("{secs:.2}"),
            mb_per_s = format!("{:.0}", body.uncompressed as f64 / 1e6 / secs.max(1e-6)),
            "data directory uploaded"
        );
    }
    // Stop the backup whatever happened, so the server leaves backup mode.
    let stopped = pg::stop_backup(&client, info.version_num).await;
    let mut body = result?;
    let (finish_lsn, label, spcmap) = stopped?;

    // backup_label and tablespace_map, from pg_backup_stop, in the last partition, named
    // bare as WAL-G names them (both always: WAL-G writes an empty tablespace_map too).
    let label_files: [(&str, &[u8]); 2] = [
        ("backup_label", label.as_bytes()),
        ("tablespace_map", spcmap.as_bytes()),
    ];
    let label_tar = small_tar(&label_files).map_err(|e| Error::io("backup_label", e))?;
    let ext = archive.settings.compression.ext();
    let label_part = format!("part_{:03}.tar.{ext}", body.partitions + 1);
    let label_bytes = Bytes::from(label_tar);
    let arch = archive.clone();
    let compressed_label = archive
        .store
        .put_stream(
            &format!("{}/{label_part}", parts_prefix(&name)),
            move |sink| {
                codec::encode(
                    &label_bytes[..],
                    sink,
                    arch.settings.compression,
                    arch.encryption.as_ref(),
                )
                .map(|_| ())
            },
        )
        .await?;
    body.partitions += 1;
    body.compressed += compressed_label;
    // WAL-G's UncompressedSize: the bytes of every file stored, without tar headers.
    body.uncompressed += label_files.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
    body.files.tar_file_sets.insert(
        label_part,
        label_files.iter().map(|(n, _)| n.to_string()).collect(),
    );
    let (uncompressed, spec, partitions) = (body.uncompressed, body.spec, body.partitions);

    // The stop segment must be archived before the backup may be listed.
    let stop_seg = finish_lsn.prev_segment(timeline, info.seg_size);
    wait_archived(&archive, &WalName::Segment(stop_seg)).await?;

    let finished_at = Utc::now();
    let hostname = hostname();
    let sentinel = Sentinel {
        start_lsn,
        timeline,
        delta_lsn: delta.as_ref().map(|d| d.start_lsn),
        delta_from: delta.as_ref().map(|d| d.name.clone()),
        delta_full_name: delta.as_ref().map(|d| d.full_name.clone()),
        delta_count: delta.as_ref().map(|d| d.count),
        finish_lsn,
        system_identifier: Some(info.system_identifier),
        pg_version: info.version_num,
        uncompressed_size: uncompressed as i64,
        compressed_size: body.compressed as i64,
        data_catalog_size: Some(body.data_catalog as i64),
        spec: Some(spec),
        user_data: opts.user_data.clone(),
        version: 2,
        start_time: Some(started_at),
        finish_time: Some(finished_at),
        date_fmt: "%Y-%m-%dT%H:%M:%S.%fZ".into(),
        hostname: hostname.clone(),
        data_dir: pgdata.display().to_string(),
        is_permanent: opts.permanent,
        tar_partitions: Some(partitions),
        wal_segment_size: Some(info.seg_size),
        page_checksums: verify.map(|_| body.checksums.clone()),
    };
    let metadata = Metadata {
        start_time: started_at,
        finish_time: finished_at,
        date_fmt: sentinel.date_fmt.clone(),
        hostname,
        data_dir: sentinel.data_dir.clone(),
        pg_version: info.version_num,
        start_lsn,
        finish_lsn,
        is_permanent: opts.permanent,
        system_identifier: Some(info.system_identifier),
        timeline,
        uncompressed_size: sentinel.uncompressed_size,
        compressed_size: sentinel.compressed_size,
        user_data: opts.user_data.clone(),
    };
    archive
        .store
        .put_bytes(
            &format!("{BACKUP_FOLDER}/{name}/metadata.json"),
            to_json(&metadata)?,
        )
        .await?;
    // WAL-G's backup-fetch requires it from a sentinel of version 2, and its delta backups
    // compare each file's MTime with it.
    archive
        .store
        .put_bytes(
            &files::files_metadata_key(&name),
            serde_json::to_vec(&body.files)
                .map(Bytes::from)
                .map_err(|e| Error::Corrupt {
                    key: files::files_metadata_key(&name),
                    msg: e.to_string(),
                })?,
        )
        .await?;
    archive
        .store
        .put_bytes(&sentinel_key(&name), to_json(&sentinel)?)
        .await?;
    tracing::info!(
        backup = name,
        finish_lsn = %finish_lsn,
        uncompressed,
        compressed = sentinel.compressed_size,
        seconds = format!("{:.1}", (finished_at - started_at).num_milliseconds() as f64 / 1000.0),
        "backup complete"
    );
    Ok(sentinel)
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> Result<Bytes> {
    serde_json::to_vec_pretty(v)
        .map(Bytes::from)
        .map_err(|e| Error::Corrupt {
            key: "json".into(),
            msg: e.to_string(),
        })
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A partition's object name and the regular files it holds.
type PartFiles = (String, Vec<Written>);

/// What [`upload_body`] stored.
pub(super) struct Body {
    /// WAL-G's `UncompressedSize`: the bytes of the files stored, without tar headers.
    pub(super) uncompressed: u64,
    pub(super) compressed: u64,
    pub(super) spec: TablespaceSpec,
    pub(super) partitions: u32,
    pub(super) files: FilesMetadata,
    /// What page verification found (empty when it was off).
    pub(super) checksums: ChecksumReport,
    /// The bytes of the regular files walked (WAL-G's `DataCatalogSize`).
    pub(super) data_catalog: u64,
}

/// Uploads the data directory (all partitions, then pg_control).
pub(super) async fn upload_body(
    archive: &Arc<Archive>,
    opts: &PushOptions,
    pgdata: &Path,
    name: &str,
    verify: Option<Verify>,
    delta: Option<&DeltaBase>,
) -> Result<Body> {
    // A backup killed earlier may have left objects under this name, never a sentinel.
    if archive.store.head(&sentinel_key(name)).await?.is_some() {
        return Err(Error::BadInput(format!("backup {name} already exists")));
    }
    for (key, _) in archive
        .store
        .list(&format!("{BACKUP_FOLDER}/{name}"))
        .await?
    {
        archive.store.delete(&key).await?;
    }
    let pgdata_owned = pgdata.to_path_buf();
    let (entries, spec) = tokio::task::spawn_blocking(move || collect(&pgdata_owned))
        .await
        .map_err(|e| Error::io(pgdata, io::Error::other(e.to_string())))??;
    let delta = delta.map(|d| Arc::new(DeltaCtx::new(d)));
    // A delta leaves unchanged files out: they do not count towards a partition's size.
    let weigh = |e: &Entry| match (&delta, e.mtime) {
        (Some(d), Some(t)) if d.unchanged(&files::entry_name(&e.name), t) => 0,
        _ => e.size,
    };
    let weights: Vec<u64> = entries.iter().map(weigh).collect();
    let data_catalog: u64 = entries.iter().map(|e| e.size).sum();
    let total: u64 = weights.iter().sum();
    let part_size = effective_part_size(total, opts.part_size, opts.concurrency);
    let parts = partition(entries, &weights, part_size);
    let partitions = parts.len() as u32;
    let limit = opts.read_rate_limit.map(|r| Arc::new(RateLimit::new(r)));
    let compression: Compression = archive.settings.compression;
    let ext = compression.ext();
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let compressed = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<Vec<Error>>> = Arc::default();
    let written: Arc<Mutex<Vec<PartFiles>>> = Arc::default();
    let mut tasks = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        let file = format!("part_{:03}.tar.{ext}", i + 1);
        let key = format!("{}/{file}", parts_prefix(name));
        let (archive, sem, limit, compressed, errors, written, delta) = (
            archive.clone(),
            sem.clone(),
            limit.clone(),
            compressed.clone(),
            errors.clone(),
            written.clone(),
            delta.clone(),
        );
        let part = Arc::new(part);
        tasks.push(tokio::spawn(async move {
            let Ok(_permit) = sem.acquire_owned().await else {
                return;
            };
            let arch = archive.clone();
            // The files of the attempt that succeeded (a retried upload writes them again).
            let held: Arc<Mutex<Vec<Written>>> = Arc::default();
            let held2 = held.clone();
            let res = archive
                .store
                .put_stream(&key, move |sink| {
                    let enc = arch.encryption.as_ref();
                    let limit = limit.as_deref();
                    let (_, _) = codec::encode_with(sink, compression, enc, |w| {
                        let files = write_tar(&part, w, limit, verify, delta.as_deref())?;
                        if let Ok(mut h) = held2.lock() {
                            *h = files;
                        }
                        Ok(())
                    })?;
                    Ok(())
                })
                .await;
            match res {
                Ok(n) => {
                    compressed.fetch_add(n, Ordering::Relaxed);
                    let files = held.lock().map(|mut h| std::mem::take(&mut *h));
                    if let (Ok(files), Ok(mut w)) = (files, written.lock()) {
                        w.push((file, files));
                    }
                }
                Err(e) => errors.lock().map(|mut v| v.push(e)).unwrap_or(()),
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    if let Some(e) = errors.lock().ok().and_then(|mut v| v.pop()) {
        return Err(e);
    }
    let mut files = FilesMetadata::default();
    let mut checksums = ChecksumReport::default();
    let mut uncompressed = 0u64;
    for (part, held) in std::mem::take(
        &mut *written
            .lock()
            .map_err(|_| Error::io(pgdata, io::Error::other("a partition upload panicked")))?,
    ) {
        let names = files.tar_file_sets.entry(part).or_default();
        for w in held {
            uncompressed += w.size;
            if w.stored != Stored::Skipped {
                names.push(w.name.clone());
            }
            checksums.pages_checked += w.pages_checked;
            let mut desc = FileDescription::full(w.mtime, w.file_size);
            desc.is_incremented = w.stored == Stored::Increment;
            desc.is_skipped = w.stored == Stored::Skipped;
            if let Some(c) = w.corrupt {
                checksums.corrupt_pages += c.count as u64;
                checksums.files.insert(w.name.clone(), c.clone());
                desc.corrupt_blocks = Some(c);
            }
            files.files.insert(w.name, desc);
        }
    }
    // global/pg_control last, on its own.
    let control = Arc::new(vec![Entry {
        name: "global/pg_control".into(),
        path: pgdata.join("global/pg_control"),
        kind: Kind::File,
        size: std::fs::metadata(pgdata.join("global/pg_control"))
            .map_err(|e| Error::io(pgdata.join("global/pg_control"), e))?
            .len(),
        mtime: None,
    }]);
    uncompressed += control.iter().map(|e| e.size).sum::<u64>();
    let arch = archive.clone();
    let n = archive
        .store
        .put_stream(
            &format!("{}/pg_control.tar.{ext}", parts_prefix(name)),
            move |sink| {
                codec::encode_with(sink, compression, arch.encryption.as_ref(), |w| {
                    write_tar(&control, w, None, None, None).map(|_| ())
                })
                .map(|_| ())
            },
        )
        .await?;
    Ok(Body {
        uncompressed,
        compressed: compressed.load(Ordering::Relaxed) + n,
        spec,
        partitions,
        files,
        checksums,
        data_catalog,
    })
}

/// Page verification for a backup of this server starting at `start`: on when asked, or by
/// default when the cluster has data checksums; never for a page size other than 8 KiB.
pub(super) fn verification(
    opts: &PushOptions,
    data_checksums: bool,
    block_size: i64,
    start: Lsn,
) -> Option<Verify> {
    let wanted = opts.verify_pages.unwrap_or(data_checksums);
    if !wanted {
        return None;
    }
    if !data_checksums {
        tracing::warn!("page checksum verification asked for, but this cluster has no data checksums (initdb --data-checksums); not verifying");
        return None;
    }
    if block_size != pages::BLCKSZ as i64 {
        tracing::warn!(
            block_size,
            "page checksum verification supports 8 KiB pages only; not verifying"
        );
        return None;
    }
    Some(Verify {
        start,
        keep_all: opts.store_all_corrupt,
    })
}

/// Waits (bounded) until a WAL file is in the archive.
async fn wait_archived(archive: &Archive, wal: &WalName) -> Result<()> {
    let stem = wal.key_stem();
    let exts: Vec<&str> = Compression::ALL.iter().map(|c| c.ext()).collect();
    let started = Instant::now();
    let deadline = started + archive.settings.retry_timeout.max(Duration::from_secs(60));
    // The archiver usually needs one archive_command call: poll often at first.
    let mut delay = Duration::from_millis(20);
    loop {
        if !archive.store.find_stem(&stem, &exts).await?.is_empty() {
            tracing::debug!(segment = %wal, ms = started.elapsed().as_millis() as u64, "stop segment archived");
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::BadInput(format!(
                "the backup's last WAL segment {wal} is not in the archive; is archive_command walkeeper wal-push? The backup stays incomplete (no sentinel)"
            )));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 3 / 2).min(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_scanned_in_ranges_at_once_gives_the_blocks_of_one_sequential_scan() {
        use std::io::Write as _;
        let page = crate::backup::increment::tests::page;
        let since = crate::wal::Lsn(0x1_0000_0000);
        let mut f = tempfile::tempfile().unwrap();
        for i in 0..23u64 {
            let lsn = if i % 3 == 0 { 0x1_0000_0100 + i } else { 0x28 };
            if i == 7 {
                f.write_all(&[0u8; 8192]).unwrap(); // new: always taken
            } else {
                f.write_all(&page(lsn, i as u8)).unwrap();
            }
        }
        let size = 23 * 8192;
        io::Seek::rewind(&mut f).unwrap();
        let mut whole = io::BufReader::new(&f);
        let want = increment::changed_blocks(&mut whole, size, since, |_| {}).unwrap();
        assert!(want.as_ref().is_some_and(|b| b.len() == 9), "{want:?}");
        for ranges in [1, 2, 3, 5, 23, 40] {
            assert_eq!(
                scan_in_ranges(&f, size, since, None, ranges).unwrap(),
                want,
                "{ranges} ranges"
            );
        }
        // One invalid page anywhere: the whole file is stored.
        let mut bad = page(5, 0);
        bad[12..14].copy_from_slice(&9000u16.to_le_bytes());
        std::os::unix::fs::FileExt::write_at(&f, &bad, 20 * 8192).unwrap();
        assert_eq!(scan_in_ranges(&f, size, since, None, 3).unwrap(), None);
    }

    #[test]
    fn partitions_are_size_bounded_and_keep_walk_order() {
        let e = |n: &str, s: u64| Entry {
            name: n.into(),
            path: n.into(),
            kind: Kind::File,
            size: s,
            mtime: None,
        };
        let entries = vec![e("a", 60), e("b", 60), e("c", 10), e("d", 100), e("f", 1)];
        let weights: Vec<u64> = entries.iter().map(|e| e.size).collect();
        let parts = partition(entries, &weights, 100);
        let names: Vec<Vec<&str>> = parts
            .iter()
            .map(|p| p.iter().map(|e| e.name.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c", "d"], vec!["f"]]);
        // Files a delta leaves out weigh nothing and never open a partition.
        let entries = vec![e("a", 60), e("b", 60), e("c", 10), e("d", 100), e("f", 1)];
        let parts = partition(entries, &[60, 0, 50, 0, 1], 100);
        assert_eq!(parts.len(), 2, "{parts:?}");
    }

    #[test]
    fn small_clusters_are_split_across_the_upload_slots() {
        const M: u64 = 1024 * 1024;
        // 750 MB with the 1 GiB default and two slots: two partitions of about half.
        assert_eq!(effective_part_size(750 * M, 1024 * M, 2), 375 * M);
        // Large clusters keep the threshold.
        assert_eq!(effective_part_size(10_000 * M, 1024 * M, 2), 1024 * M);
        // Tiny clusters are not cut into tiny partitions.
        assert_eq!(effective_part_size(20 * M, 1024 * M, 2), MIN_SPLIT);
        // A smaller configured threshold always wins.
        assert_eq!(effective_part_size(750 * M, 10 * M, 2), 10 * M);
        assert_eq!(effective_part_size(0, 1024 * M, 0), MIN_SPLIT);
    }

    #[test]
    fn entries_are_named_as_wal_g_names_them_even_past_100_bytes() {
        let d = tempfile::tempdir().unwrap();
        let long_dir = format!("pg_tblspc/16384/PG_15_202209061/{}", "d".repeat(90));
        std::fs::create_dir_all(d.path().join(&long_dir)).unwrap();
        std::fs::write(d.path().join("PG_VERSION"), b"15\n").unwrap();
        std::fs::write(d.path().join(&long_dir).join("16385"), b"page").unwrap();
        let e = |name: &str, kind: Kind, size: u64| Entry {
            name: name.into(),
            path: d.path().join(name),
            kind,
            size,
            mtime: None,
        };
        let entries = vec![
            e("PG_VERSION", Kind::File, 3),
            e(&long_dir, Kind::Dir, 0),
            e(&format!("{long_dir}/16385"), Kind::File, 4),
        ];
        let mut out = Vec::new();
        let written = write_tar(&entries, &mut out, None, None, None).unwrap();
        let names: Vec<String> = written.iter().map(|w| w.name.clone()).collect();
        assert_eq!(
            names,
            vec!["/PG_VERSION".to_string(), format!("/{long_dir}/16385")]
        );
        let mut ar = tar::Archive::new(&out[..]);
        let read: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect();
        assert_eq!(
            read,
            vec![
                "/PG_VERSION".to_string(),
                format!("/{long_dir}"),
                format!("/{long_dir}/16385")
            ]
        );
        // The mtime recorded is the file's own, to the nanosecond.
        let m = std::fs::metadata(d.path().join("PG_VERSION")).unwrap();
        assert_eq!(written[0].mtime.timestamp(), m.mtime());
        assert_eq!(
            written[0].mtime.timestamp_subsec_nanos() as i64,
            m.mtime_nsec()
        );
    }

    #[test]
    fn walk_leaves_out_what_postgres_says_to_leave_out() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for dir in [
            "base/1",
            "global",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "base/pgsql_tmp",
            "pg_tblspc",
        ] {
            std::fs::create_dir_all(p.join(dir)).unwrap();
        }
        for f in [
            "base/1/1234",
            "global/pg_control",
            "global/1262",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/x",
            "base/pgsql_tmp/t",
            "postmaster.pid",
            "PG_VERSION",
            "base/1/pg_internal.init",
        ] {
            std::fs::write(p.join(f), b"x").unwrap();
        }
        let (entries, spec) = collect(p).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        for want in [
            "base/1/1234",
            "global/1262",
            "PG_VERSION",
            "pg_wal",
            "pg_stat_tmp",
            "pg_tblspc",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        for unwanted in [
            "global/pg_control",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/x",
            "base/pgsql_tmp/t",
            "postmaster.pid",
            "base/1/pg_internal.init",
            "pg_wal/archive_status",
        ] {
            assert!(!names.contains(&unwanted), "{unwanted} in {names:?}");
        }
        assert!(spec.tablespaces.is_empty());
    }
}
