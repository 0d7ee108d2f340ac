//! WAL-G's increment files: how a delta backup stores a changed relation file, and how a
//! restore applies one to the file its base restored.
//!
//! Format (WAL-G's `pagefile.go` and `incremental_page_reader.go`), all integers little-endian:
//!
//! ```text
//! 'w' 'i' '1' 0x55          header: "wal-g increment", format version 1, magic number
//! u64                       the file's size when it was read
//! u32 N                     how many pages follow
//! N × u32                   their block numbers, in file order
//! N × 8192 bytes            the pages
//! ```
//!
//! Applying one truncates (or extends) the existing file to the size, then writes each page at
//! `block × 8192`. A page is included when its LSN is at or past the base backup's start LSN, or
//! when it is new (`pd_upper` 0); a page whose header is not valid makes the whole file be stored
//! instead, as WAL-G does.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::pages::{page_lsn, BLCKSZ};
use crate::wal::Lsn;

/// The first four bytes of every increment.
pub const MAGIC: [u8; 4] = [b'w', b'i', b'1', 0x55];
/// No relation segment file is larger (PostgreSQL's largest RELSEG_SIZE × BLCKSZ is far below).
const MAX_FILE: u64 = 1 << 40;
/// Bytes before the block numbers: magic, size, count.
pub const FIXED_HEADER: u64 = 16;

/// The stored size of an increment with `pages` pages.
pub fn stored_size(pages: u64) -> u64 {
    FIXED_HEADER + pages * (4 + BLCKSZ as u64)
}

/// The header of an increment of a file of `size` bytes holding `blocks`.
pub fn header_bytes(size: u64, blocks: &[u32]) -> Vec<u8> {
    let mut h = Vec::with_capacity(FIXED_HEADER as usize + 4 * blocks.len());
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&size.to_le_bytes());
    h.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for b in blocks {
        h.extend_from_slice(&b.to_le_bytes());
    }
    h
}

/// What a page's header says, as WAL-G's `parsePostgresPageHeader` judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// `pd_upper` is 0: a page that was extended but never written (or was vacuumed away).
    New,
    /// A plausible header, with its LSN.
    Valid(Lsn),
    /// Not a page header WAL-G accepts: the file is stored whole.
    Invalid,
}

/// Judges an 8 KiB page by its header (`bufpage.h`): flags within `PD_VALID_FLAG_BITS`,
/// `SizeOfPageHeaderData` ≤ `pd_lower` ≤ `pd_upper` ≤ `pd_special` ≤ BLCKSZ, a non-zero LSN
/// and the page size and layout version 4.
pub fn page_kind(page: &[u8; BLCKSZ]) -> PageKind {
    let u16_at = |i: usize| u16::from_le_bytes([page[i], page[i + 1]]);
    let (flags, lower, upper, special, size_version) =
        (u16_at(10), u16_at(12), u16_at(14), u16_at(16), u16_at(18));
    if upper == 0 {
        return PageKind::New;
    }
    let lsn = page_lsn(page);
    let valid = flags & !7 == 0
        && lower >= 24
        && lower <= upper
        && upper <= special
        && special as usize <= BLCKSZ
        && lsn.0 != 0
        && size_version as usize == BLCKSZ + 4;
    if valid {
        PageKind::Valid(lsn)
    } else {
        PageKind::Invalid
    }
}

/// Whether a file is stored as an increment when its base has it: a relation data file under
/// `base/` or a tablespace (WAL-G's `isPagedFile`: named `<digits>` or `<digits>.<digits>`,
/// non-empty, a whole number of pages).
pub fn is_paged_file(rel: &str, size: u64) -> bool {
    let rel = rel.trim_start_matches('/');
    if !(rel.starts_with("base/") || rel.starts_with("pg_tblspc/")) {
        return false;
    }
    if size == 0 || !size.is_multiple_of(BLCKSZ as u64) {
        return false;
    }
    let name = rel.rsplit('/').next().unwrap_or("");
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match name.split_once('.') {
        Some((stem, seg)) => digits(stem) && digits(seg),
        None => digits(name),
    }
}

/// The blocks of the first `size` bytes of `file` that changed at or after `since`: None when a
/// page is not valid (store the whole file). Every page read is passed to `each` (page checksum
/// verification); a file that became shorter is scanned to where it ends.
pub fn changed_blocks(
    file: &mut dyn Read,
    size: u64,
    since: Lsn,
    mut each: impl FnMut(&[u8]),
) -> io::Result<Option<Vec<u32>>> {
    let pages = size / BLCKSZ as u64;
    let mut blocks = Vec::new();
    let mut page = Box::new([0u8; BLCKSZ]);
    let mut invalid = false;
    for blkno in 0..pages {
        match read_full(file, &mut page[..])? {
            n if n == BLCKSZ => {}
            _ => break,
        }
        each(&page[..]);
        if invalid {
            continue;
        }
        match page_kind(&page) {
            PageKind::New => blocks.push(blkno as u32),
            PageKind::Valid(lsn) if lsn >= since => blocks.push(blkno as u32),
            PageKind::Valid(_) => {}
            PageKind::Invalid => invalid = true,
        }
    }
    Ok((!invalid).then_some(blocks))
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Streams an increment of `file` (a whole-page `size`, `blocks` from [`changed_blocks`]): the
/// header, then each page read again at its offset. A page the file no longer has (it was
/// truncated meanwhile) is written as zeros; WAL replay from the backup's start truncates it.
pub struct IncrementReader<'f> {
    file: &'f File,
    header: io::Cursor<Vec<u8>>,
    blocks: std::vec::IntoIter<u32>,
    page: Box<[u8; BLCKSZ]>,
    at: usize,
}

impl<'f> IncrementReader<'f> {
    pub fn new(file: &'f File, size: u64, blocks: Vec<u32>) -> Self {
        IncrementReader {
            file,
            header: io::Cursor::new(header_bytes(size, &blocks)),
            blocks: blocks.into_iter(),
            page: Box::new([0u8; BLCKSZ]),
            at: BLCKSZ,
        }
    }
}

impl Read for IncrementReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.header.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        if self.at == BLCKSZ {
            let Some(blkno) = self.blocks.next() else {
                return Ok(0);
            };
            let offset = blkno as u64 * BLCKSZ as u64;
            let mut got = 0;
            while got < BLCKSZ {
                match self
                    .file
                    .read_at(&mut self.page[got..], offset + got as u64)
                {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.page[got..].fill(0);
            self.at = 0;
        }
        let n = buf.len().min(BLCKSZ - self.at);
        buf[..n].copy_from_slice(&self.page[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn bad(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("increment file: {what}"),
    )
}

/// Applies an increment read from `inc` (exactly `stored` bytes, its tar entry's size) to the
/// file at `dest`, which the restore of the base made. Returns the file's new size.
pub fn apply(inc: &mut dyn Read, stored: u64, dest: &Path) -> io::Result<u64> {
    let mut fixed = [0u8; FIXED_HEADER as usize];
    if read_full(inc, &mut fixed)? != fixed.len() {
        return Err(bad("shorter than its header"));
    }
    if fixed[..4] != MAGIC {
        return Err(bad(format!(
            "wrong header {:02x?} (expected \"wi1\" and 0x55)",
            &fixed[..4]
        )));
    }
    let size = u64::from_le_bytes(fixed[4..12].try_into().map_err(|_| bad("header"))?);
    let count = u32::from_le_bytes(fixed[12..16].try_into().map_err(|_| bad("header"))?);
    if size > MAX_FILE {
        return Err(bad(format!(
            "a file size of {size} bytes is not a relation file's"
        )));
    }
    if stored_size(count as u64) != stored {
        return Err(bad(format!(
            "{count} pages take {} bytes, but the entry holds {stored}",
            stored_size(count as u64)
        )));
    }
    // Block numbers grow as they are read, so a lying count cannot allocate what is not there.
    let mut blocks = Vec::new();
    let mut word = [0u8; 4];
    for _ in 0..count {
        if read_full(inc, &mut word)? != 4 {
            return Err(bad("block list cut short"));
        }
        blocks.push(u32::from_le_bytes(word));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dest)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: an increment needs the file its base restored: {e}",
                    dest.display()
                ),
            )
        })?;
    file.set_len(size)?;
    let mut page = Box::new([0u8; BLCKSZ]);
    for blkno in blocks {
        if read_full(inc, &mut page[..])? != BLCKSZ {
            return Err(bad(format!("page {blkno} cut short")));
        }
        file.write_all_at(&page[..], blkno as u64 * BLCKSZ as u64)?;
    }
    Ok(file.metadata()?.len())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid heap page header with `lsn`, filled with `fill`.
    pub(crate) fn page(lsn: u64, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; BLCKSZ];
        p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        p[8..10].copy_from_slice(&[0, 0]);
        p[10..12].copy_from_slice(&0u16.to_le_bytes());
        p[12..14].copy_from_slice(&28u16.to_le_bytes());
        p[14..16].copy_from_slice(&8000u16.to_le_bytes());
        p[16..18].copy_from_slice(&8192u16.to_le_bytes());
        p[18..20].copy_from_slice(&(8192u16 + 4).to_le_bytes());
        p
    }

    #[test]
    fn pages_are_judged_by_their_headers_as_wal_g_judges_them() {
        let p = page(0x1_0000_0028, 7);
        assert_eq!(
            page_kind(p[..].try_into().unwrap()),
            PageKind::Valid(Lsn(0x1_0000_0028))
        );
        assert_eq!(page_kind(&[0u8; BLCKSZ]), PageKind::New);
        let mut bad_lower = page(5, 0);
        bad_lower[12..14].copy_from_slice(&9000u16.to_le_bytes());
        assert_eq!(
            page_kind(bad_lower[..].try_into().unwrap()),
            PageKind::Invalid
        );
        let mut bad_flags = page(5, 0);
        bad_flags[10..12].copy_from_slice(&8u16.to_le_bytes());
        assert_eq!(
            page_kind(bad_flags[..].try_into().unwrap()),
            PageKind::Invalid
        );
        assert_eq!(
            page_kind(page(0, 1)[..].try_into().unwrap()),
            PageKind::Invalid
        );
    }

    #[test]
    fn paged_files_are_relation_files_of_whole_pages() {
        assert!(is_paged_file("/base/5/16384", 8192));
        assert!(is_paged_file("base/5/16384.2", 16384));
        assert!(is_paged_file(
            "pg_tblspc/16390/PG_15_202209061/5/16391",
            8192
        ));
        assert!(!is_paged_file("base/5/16384_fsm", 8192));
        assert!(!is_paged_file("base/5/16384", 0));
        assert!(!is_paged_file("base/5/16384", 100));
        assert!(!is_paged_file("global/1262", 8192));
        assert!(!is_paged_file("base/5/pg_filenode.map", 8192));
        assert!(!is_paged_file("base/5/1.", 8192));
    }

    /// An increment exactly as WAL-G builds one, by hand from its format description.
    fn wal_g_increment(size: u64, pages: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut v = vec![b'w', b'i', b'1', 0x55];
        v.extend_from_slice(&size.to_le_bytes());
        v.extend_from_slice(&(pages.len() as u32).to_le_bytes());
        for (b, _) in pages {
            v.extend_from_slice(&b.to_le_bytes());
        }
        for (_, p) in pages {
            v.extend_from_slice(p);
        }
        v
    }

    #[test]
    fn a_wal_g_increment_rewrites_its_pages_and_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("16384");
        let base: Vec<u8> = [page(10, 1), page(10, 2), page(10, 3), page(10, 4)].concat();
        std::fs::write(&f, &base).unwrap();
        // Grown to five pages, page 1 and the new page 4 changed; then truncated to three.
        let inc = wal_g_increment(5 * 8192, &[(1, page(90, 9)), (4, page(91, 8))]);
        let n = apply(&mut &inc[..], inc.len() as u64, &f).unwrap();
        assert_eq!(n, 5 * 8192);
        let got = std::fs::read(&f).unwrap();
        assert_eq!(&got[..8192], &base[..8192]);
        assert_eq!(&got[8192..16384], &page(90, 9)[..]);
        assert_eq!(&got[16384..32768], &base[16384..32768]);
        assert_eq!(&got[32768..], &page(91, 8)[..]);
        let inc = wal_g_increment(3 * 8192, &[]);
        apply(&mut &inc[..], inc.len() as u64, &f).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), got[..3 * 8192]);
    }

    #[test]
    fn increments_made_here_are_byte_identical_to_wal_g_s_and_apply_back() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let pages = [page(10, 1), page(200, 2), vec![0u8; BLCKSZ], page(150, 4)];
        std::fs::write(&live, pages.concat()).unwrap();
        let size = 4 * 8192;
        let mut seen = 0;
        let blocks = changed_blocks(&mut File::open(&live).unwrap(), size, Lsn(150), |_| {
            seen += 1
        })
        .unwrap()
        .unwrap();
        assert_eq!(blocks, [1, 2, 3]);
        assert_eq!(seen, 4);
        let f = File::open(&live).unwrap();
        let mut ours = Vec::new();
        IncrementReader::new(&f, size, blocks)
            .read_to_end(&mut ours)
            .unwrap();
        let theirs = wal_g_increment(
            size,
            &[
                (1, pages[1].clone()),
                (2, pages[2].clone()),
                (3, pages[3].clone()),
            ],
        );
        assert_eq!(ours, theirs);
        assert_eq!(ours.len() as u64, stored_size(3));
        // Applied to the base's copy, it gives the live file back.
        let restored = dir.path().join("restored");
        std::fs::write(&restored, [page(10, 1), page(20, 0), page(30, 0)].concat()).unwrap();
        apply(&mut &ours[..], ours.len() as u64, &restored).unwrap();
        assert_eq!(
            std::fs::read(&restored).unwrap(),
            std::fs::read(&live).unwrap()
        );
    }

    #[test]
    fn a_file_with_an_invalid_page_is_stored_whole() {
        let mut bad = page(5, 0);
        bad[18..20].copy_from_slice(&1u16.to_le_bytes());
        let data = [page(500, 1), bad].concat();
        assert_eq!(
            changed_blocks(&mut &data[..], 2 * 8192, Lsn(100), |_| {}).unwrap(),
            None
        );
    }

    #[test]
    fn a_page_truncated_away_while_read_is_written_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, page(300, 3)).unwrap();
        let f = File::open(&p).unwrap();
        let mut out = Vec::new();
        IncrementReader::new(&f, 2 * 8192, vec![0, 1])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len() as u64, stored_size(2));
        assert!(out[out.len() - 8192..].iter().all(|b| *b == 0));
    }

    #[test]
    fn damaged_increments_are_errors_and_leave_no_extra_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, page(1, 1)).unwrap();
        let good = wal_g_increment(8192, &[(0, page(9, 9))]);
        for (what, inc, stored) in [
            (
                "magic",
                [b"wi2\x55".as_slice(), &good[4..]].concat(),
                good.len() as u64,
            ),
            ("cut", good[..good.len() - 1].to_vec(), good.len() as u64),
            ("count", good.clone(), good.len() as u64 + 1),
            ("short", good[..10].to_vec(), 10),
        ] {
            let e = apply(&mut &inc[..], stored, &f).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}");
            assert!(e.to_string().contains("increment"), "{what}: {e}");
        }
        let e = apply(
            &mut &good[..],
            good.len() as u64,
            &dir.path().join("missing"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("its base restored"), "{e}");
        assert!(!dir.path().join("missing").exists());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_increments_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40_000), claim in 0u64..100_000) {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("f");
            std::fs::write(&f, b"").unwrap();
            let mut inc = MAGIC.to_vec();
            inc.extend_from_slice(&bytes);
            let _ = apply(&mut &inc[..], claim, &f);
            let _ = apply(&mut &bytes[..], bytes.len() as u64, &f);
        }
    }
}
