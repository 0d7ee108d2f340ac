//! `wal-fetch`: restore_command, and the background prefetch behind it.
//!
//! Found: exactly the archived bytes, written atomically. Absent: [`Error::NotFound`], which the
//! CLI maps to the "missing" exit code. Any storage failure stays an error, never "missing".

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::archive::Archive;
use crate::codec::{self, Compression};
use crate::error::{Error, Result};
use crate::storage::local::{ensure_dir, sync_dir};
use crate::wal::names::{
    check_segment_head, LongPageHeader, SegmentId, WalName, WalSegSize, SEGMENT_HEAD_LEN,
};
use crate::wal::{sweep_stale_temps, write_atomic_locked, WalContext};

/// Prefetch downloads run at most this many at once.
const MAX_PARALLEL: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    Downloaded { bytes: u64 },
    FromPrefetch { bytes: u64 },
}

pub fn prefetch_dir(ctx: &WalContext) -> PathBuf {
    ctx.state_dir.join("prefetch")
}

/// Fetches `name` into `dest` (relative to the data directory).
pub async fn wal_fetch(
    ctx: Arc<WalContext>,
    name: &str,
    dest: &Path,
) -> Result<(WalName, FetchOutcome)> {
    let wal = WalName::parse(name)?;
    let dest = ctx.resolve_in_pgdata(dest)?;
    // Temporary files of killed fetches and prefetches would fill pg_wal.
    if let Some(dir) = dest.parent() {
        sweep_stale_temps(dir);
    }
    sweep_stale_temps(&prefetch_dir(&ctx));
    if let WalName::Segment(seg) = &wal {
        let pre = prefetch_dir(&ctx).join(name);
        if pre.exists() {
            match take_prefetched(&pre, seg, &dest) {
                Ok(bytes) => return Ok((wal, FetchOutcome::FromPrefetch { bytes })),
                Err(e) => {
                    tracing::warn!(segment = name, error = %e, "discarding prefetched copy");
                    let _ = std::fs::remove_file(&pre);
                }
            }
        }
    }
    // The segment must belong to this archive's cluster, when the archive says which.
    let sysid = match wal {
        WalName::Segment(_) => ctx.recorded_sysid().await?,
        _ => None,
    };
    let bytes = download(&ctx, &wal, &dest, sysid).await?;
    Ok((wal, FetchOutcome::Downloaded { bytes }))
}

/// Finds every archived copy of a WAL file, whichever codec wrote it: the configured codec's
/// first, then the others in [`Compression::ALL`] order. Another tool sharing the archive can
/// leave one name stored under two codecs (`X.lz4` and `X.zst`).
async fn locate_all(archive: &Archive, wal: &WalName) -> Result<Vec<(String, Compression)>> {
    let stem = wal.key_stem();
    let preferred = archive.settings.compression;
    let mut exts = vec![preferred.ext()];
    exts.extend(
        Compression::ALL
            .iter()
            .map(|c| c.ext())
            .filter(|e| *e != preferred.ext()),
    );
    let found = archive.store.find_stem(&stem, &exts).await?;
    let mut out = Vec::new();
    for ext in &exts {
        let key = format!("{stem}.{ext}");
        if found.iter().any(|(k, _)| *k == key) {
            let c = Compression::from_ext(ext).ok_or_else(|| Error::Corrupt {
                key: key.clone(),
                msg: "unknown codec".into(),
            })?;
            out.push((key, c));
        }
    }
    if out.is_empty() {
        return Err(Error::NotFound { key: stem });
    }
    Ok(out)
}

/// The length and SHA-256 of an object's decoded content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub len: u64,
    pub sha256: [u8; 32],
}

impl std::fmt::Display for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes, sha256 {}", self.len, hex::encode(self.sha256))
    }
}

/// Counts and hashes what is written through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            n: 0,
        }
    }
    fn finish(self) -> Decoded {
        Decoded {
            len: self.n,
            sha256: self.hash.finalize().into(),
        }
    }
}

impl<W: io::Write> io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.hash.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decodes an object without keeping it: its decoded length and SHA-256. Runs on the calling
/// thread: it serves the rare case of a name stored twice (wal-verify).
pub async fn decoded_digest(archive: &Archive, key: &str, c: Compression) -> Result<Decoded> {
    let reader = archive
        .store
        .open_read(key)
        .await?
        .ok_or_else(|| Error::NotFound { key: key.into() })?;
    let mut sink = Hashing::new(io::sink());
    codec::decode(reader, &mut sink, c, archive.decryption.as_ref())
        .map(|_| sink.finish())
        .map_err(|e| Error::Corrupt {
            key: key.to_string(),
            msg: e.to_string(),
        })
}

/// The error for copies of one WAL name whose decoded contents differ: nobody can tell which
/// one PostgreSQL wrote, so none is restored.
fn copies_differ(stem: &str, copies: &[(String, Decoded)]) -> io::Error {
    let list: Vec<String> = copies.iter().map(|(k, d)| format!("{k} ({d})")).collect();
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{stem} is stored under several codecs with different content: {}; \
             refusing to choose one (remove the wrong copy after checking it)",
            list.join(", ")
        ),
    )
}

/// Keeps the first bytes written and counts them all, so a segment can be checked while it
/// streams to disk, before it is renamed into place.
struct HeadTap<'a> {
    inner: &'a mut dyn io::Write,
    head: Vec<u8>,
    n: u64,
}

impl io::Write for HeadTap<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        if self.head.len() < SEGMENT_HEAD_LEN {
            let take = (SEGMENT_HEAD_LEN - self.head.len()).min(k);
            self.head.extend_from_slice(&buf[..take]);
        }
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The decoded object is the segment `seg` asked for: its long page header names it (and
/// `sysid`, when known) and it is exactly one segment long. An error is `InvalidData`.
fn check_decoded(seg: &SegmentId, head: &[u8], len: u64, sysid: Option<u64>) -> io::Result<()> {
    let bad = |msg: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the object does not hold segment {}: {msg}", seg.name()),
        )
    };
    let (_, size) = check_segment_head(head, seg, sysid).map_err(bad)?;
    if len != size.get() {
        return Err(bad(format!(
            "{len} bytes, but its header's segment size is {size}"
        )));
    }
    Ok(())
}

/// Downloads and decodes one WAL file into `dest` atomically, retrying interrupted transfers
/// within the retry bound. A segment is checked against its name (and `sysid`) before it is
/// renamed into place; one that does not match is a corrupt object and never reaches `dest`.
/// When the name is stored under several codecs, every copy is decoded and they must agree.
async fn download(
    ctx: &Arc<WalContext>,
    wal: &WalName,
    dest: &Path,
    sysid: Option<u64>,
) -> Result<u64> {
    let deadline = Instant::now() + ctx.settings.retry_timeout;
    let mut delay = Duration::from_millis(200);
    loop {
        let copies = locate_all(ctx, wal).await?;
        let (key, compression) = copies[0].clone();
        let reader = ctx
            .store
            .open_read(&key)
            .await?
            .ok_or_else(|| Error::NotFound { key: key.clone() })?;
        // Other copies under other codecs: each must decode to the same bytes.
        let mut others = Vec::new();
        for (k, c) in &copies[1..] {
            let r = ctx
                .store
                .open_read(k)
                .await?
                .ok_or_else(|| Error::NotFound { key: k.clone() })?;
            others.push((k.clone(), *c, r));
        }
        let (ctx2, dest2, seg) = (ctx.clone(), dest.to_path_buf(), wal.segment());
        let (stem, first_key) = (wal.key_stem(), key.clone());
        let res = tokio::task::spawn_blocking(move || {
            write_atomic_locked(&dest2, |w| {
                let mut tap = Hashing::new(HeadTap {
                    inner: w,
                    head: Vec::with_capacity(SEGMENT_HEAD_LEN),
                    n: 0,
                });
                codec::decode(reader, &mut tap, compression, ctx2.decryption.as_ref())?;
                let (head, n) = (std::mem::take(&mut tap.inner.head), tap.inner.n);
                let first = tap.finish();
                let mut seen = vec![(first_key, first)];
                for (k, c, r) in others {
                    let mut sink = Hashing::new(io::sink());
                    codec::decode(r, &mut sink, c, ctx2.decryption.as_ref()).map_err(|e| {
                        io::Error::new(e.kind(), format!("the other copy {k}: {e}"))
                    })?;
                    seen.push((k, sink.finish()));
                }
                if seen.iter().any(|(_, d)| *d != first) {
                    return Err(copies_differ(&stem, &seen));
                }
                match seg {
                    Some(seg) => check_decoded(&seg, &head, n, sysid),
                    None => Ok(()),
                }
            })
        })
        .await
        .map_err(|e| Error::io(dest, io::Error::other(e.to_string())))?;
        match res {
            Ok(n) => return Ok(n),
            Err(e)
                if e.kind() == io::ErrorKind::ConnectionAborted
                    && Instant::now() + delay < deadline =>
            {
                tracing::warn!(key, error = %e, "transfer interrupted, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {
                return Err(Error::Storage {
                    op: "get",
                    key,
                    source: object_store::Error::Generic {
                        store: "stream",
                        source: Box::new(e),
                    },
                })
            }
            Err(e) if is_decode_error(&e) => {
                return Err(Error::Corrupt {
                    key,
                    msg: e.to_string(),
                })
            }
            Err(e) => return Err(Error::io(dest, e)),
        }
    }
}

fn is_decode_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof | io::ErrorKind::PermissionDenied
    )
}

/// Checks a prefetched segment and moves it into place.
fn take_prefetched(pre: &Path, seg: &SegmentId, dest: &Path) -> io::Result<u64> {
    let len = check_segment_file(pre, seg)?;
    match std::fs::rename(pre, dest) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let mut src = std::fs::File::open(pre)?;
            write_atomic_locked(dest, |w| codec::pump(&mut src, w).map(|_| ()))?;
            let _ = std::fs::remove_file(pre);
        }
        Err(e) => return Err(e),
    }
    if let Some(dir) = dest.parent() {
        sync_dir(dir)?;
    }
    Ok(len)
}

/// A complete copy of the named segment: its first page's long header agrees with the name and
/// the file is exactly one segment long.
fn check_segment_file(path: &Path, seg: &SegmentId) -> io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut head = [0u8; SEGMENT_HEAD_LEN];
    f.read_exact(&mut head)?;
    // The system identifier was checked when it was downloaded.
    check_decoded(seg, &head, len, None)?;
    Ok(len)
}

/// Starts a detached `wal-prefetch` for the segments after `seg`. Its failure only costs speed.
pub fn spawn_prefetch(ctx: &WalContext, seg: &SegmentId, exec: &crate::selfexec::SelfExec) {
    let (name, count) = (seg.name(), ctx.settings.prefetch.to_string());
    let args: [&std::ffi::OsStr; 6] = [
        "wal-prefetch".as_ref(),
        name.as_ref(),
        "--pgdata".as_ref(),
        ctx.pgdata.as_os_str(),
        "--count".as_ref(),
        count.as_ref(),
    ];
    if let Err(e) = exec.spawn_detached(args) {
        tracing::debug!(error = %e, "could not start prefetch");
    }
}

/// `wal-prefetch`: downloads the `ctx.settings.prefetch` segments after `after` into the
/// prefetch directory, each written atomically. Stops at the first segment not yet archived.
pub async fn prefetch(ctx: Arc<WalContext>, after: &str) -> Result<usize> {
    let wal = WalName::parse(after)?;
    let WalName::Segment(seg) = wal else {
        return Err(Error::BadInput(format!(
            "{after}: only segments are prefetched"
        )));
    };
    let dir = prefetch_dir(&ctx);
    ensure_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    sweep_stale_temps(&dir);
    clean_before(&dir, after);
    let sysid = ctx.recorded_sysid().await?;
    // The segment size comes from the segment just restored (or a prefetched one).
    let seg_size = segment_size_hint(&ctx, &seg).unwrap_or_default();
    let sem = Arc::new(tokio::sync::Semaphore::new(MAX_PARALLEL));
    let mut tasks = Vec::new();
    for i in 1..=ctx.settings.prefetch as u64 {
        let next = seg.nth_next(i, seg_size);
        let name = next.name();
        let target = dir.join(&name);
        if target.exists() || ctx.pg_wal.join(&name).exists() {
            continue;
        }
        let Some(claim) = Claim::take(&dir, &name) else {
            continue;
        };
        let (ctx, sem) = (ctx.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let res = download(&ctx, &WalName::Segment(next), &target, sysid).await;
            drop(claim);
            (name, res)
        }));
    }
    let mut fetched = 0;
    for t in tasks {
        match t.await {
            Ok((_, Ok(_))) => fetched += 1,
            Ok((name, Err(Error::NotFound { .. }))) => {
                tracing::debug!(segment = name, "not archived yet")
            }
            Ok((name, Err(e))) => tracing::warn!(segment = name, error = %e, "prefetch failed"),
            Err(e) => tracing::warn!(error = %e, "prefetch task failed"),
        }
    }
    Ok(fetched)
}

/// WAL-E's `wal-prefetch BASE SEGMENT`: downloads exactly `name` into the prefetch directory,
/// where the next wal-fetch of it finds it. False when it is there already, in pg_wal, or being
/// prefetched by another process.
pub async fn prefetch_one(ctx: Arc<WalContext>, name: &str) -> Result<bool> {
    let wal = WalName::parse(name)?;
    let WalName::Segment(_) = wal else {
        return Err(Error::BadInput(format!(
            "{name}: only segments are prefetched"
        )));
    };
    let dir = prefetch_dir(&ctx);
    ensure_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    sweep_stale_temps(&dir);
    let target = dir.join(name);
    if target.exists() || ctx.pg_wal.join(name).exists() {
        return Ok(false);
    }
    let Some(claim) = Claim::take(&dir, name) else {
        return Ok(false);
    };
    let sysid = ctx.recorded_sysid().await?;
    let res = download(&ctx, &wal, &target, sysid).await;
    drop(claim);
    res.map(|_| true)
}

fn segment_size_hint(ctx: &WalContext, seg: &SegmentId) -> Option<WalSegSize> {
    let candidates = [ctx.pg_wal.join("RECOVERYXLOG"), ctx.pg_wal.join(seg.name())];
    candidates.iter().find_map(|p| {
        let mut head = [0u8; 40];
        std::fs::File::open(p).ok()?.read_exact(&mut head).ok()?;
        let h = LongPageHeader::parse(&head)?;
        WalSegSize::new(h.seg_size as u64).ok()
    })
}

/// Removes prefetched segments that recovery has passed.
fn clean_before(dir: &Path, current: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with('.') && name <= current {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Marks a segment as being prefetched, so concurrent prefetchers skip it: an exclusive
/// `flock` on `.<name>.claim`, held while the download runs. A killed prefetcher's claim is
/// free at once (the kernel drops its lock), so it never blocks the segment.
struct Claim {
    path: PathBuf,
    _file: std::fs::File,
}

impl Claim {
    fn take(dir: &Path, name: &str) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let path = dir.join(format!(".{name}.claim"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ok()?;
        file.try_lock().ok()?;
        // Its holder may have removed it as we opened it: then it was just done.
        let same = std::fs::metadata(&path).ok()?.ino() == file.metadata().ok()?.ino();
        same.then_some(Claim { path, _file: file })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_left_by_a_killed_prefetcher_is_free_and_a_held_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let name = "000000010000000000000002";
        // A killed prefetcher's claim: the file is there, nobody holds its lock.
        std::fs::write(dir.path().join(format!(".{name}.claim")), b"").unwrap();
        let held = Claim::take(dir.path(), name).expect("a stale claim is free");
        assert!(Claim::take(dir.path(), name).is_none());
        drop(held);
        assert!(!dir.path().join(format!(".{name}.claim")).exists());
        assert!(Claim::take(dir.path(), name).is_some());
    }

    #[test]
    fn a_decoded_object_must_be_the_whole_named_segment() {
        let seg = SegmentId {
            timeline: 1,
            log: 0,
            seg: 3,
        };
        let size = 1u64 << 20;
        let mut head = [0u8; SEGMENT_HEAD_LEN];
        head[0..2].copy_from_slice(&0xD10Du16.to_le_bytes());
        head[2..4].copy_from_slice(&2u16.to_le_bytes());
        head[4..8].copy_from_slice(&1u32.to_le_bytes());
        head[8..16].copy_from_slice(&(3 * size).to_le_bytes());
        head[24..32].copy_from_slice(&9u64.to_le_bytes());
        head[32..36].copy_from_slice(&(size as u32).to_le_bytes());
        assert!(check_decoded(&seg, &head, size, Some(9)).is_ok());
        for (len, sysid) in [(size - 1, Some(9)), (size + 1, None), (size, Some(8))] {
            let e = check_decoded(&seg, &head, len, sysid).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains("does not hold segment"), "{e}");
        }
        let other = SegmentId { seg: 4, ..seg };
        assert!(check_decoded(&other, &head, size, None).is_err());
        assert!(check_decoded(&seg, &head[..20], size, None).is_err());
    }
}
