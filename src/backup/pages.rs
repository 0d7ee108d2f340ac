//! PostgreSQL data pages as a backup reads them: which files are relation files, the page
//! checksum as PostgreSQL computes it, and a streaming verifier that reports corrupt blocks.
//!
//! Facts (PostgreSQL's `bufpage.h` and `checksum_impl.h`): pages are 8 KiB; the header starts
//! with `pd_lsn` (two native-endian u32: high, low), `pd_checksum` (u16 at byte 8) and, at byte
//! 14, `pd_upper`; a page whose `pd_upper` is 0 is new and must be all zeros. The checksum is an
//! FNV-1a variant over the page read as 32 columns of u32 with `pd_checksum` taken as 0, mixed
//! with the block number in the relation (segment number × 131072 + block in the segment file).
//!
//! A page whose LSN is at or past the backup's start may be in the middle of a write (a torn
//! read): it is not judged, as pgBackRest does not; WAL replay from the backup's start rewrites
//! it. A page that fails is read again once before it is reported, for the same reason.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wal::Lsn;

/// PostgreSQL's block size (BLCKSZ); walkeeper verifies only clusters built with it.
pub const BLCKSZ: usize = 8192;
/// Blocks per relation segment file (RELSEG_SIZE, 1 GiB).
pub const RELSEG_SIZE: u32 = 131_072;
/// At most this many block numbers per file are kept in the report (WAL-G keeps 10).
pub const MAX_BLOCKS_LISTED: usize = 10;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
/// The initial states of the 32 parallel sums (PostgreSQL's `checksumBaseOffsets`).
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

#[inline(always)]
fn mix(sum: u32, value: u32) -> u32 {
    let t = sum ^ value;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

/// The checksum PostgreSQL stores in a page at block `blkno` of its relation.
pub fn checksum(page: &[u8; BLCKSZ], blkno: u32) -> u16 {
    let mut sums = BASE_OFFSETS;
    for (row, chunk) in page.chunks_exact(4 * N_SUMS).enumerate() {
        for (j, sum) in sums.iter_mut().enumerate() {
            let at = 4 * j;
            let mut w = [chunk[at], chunk[at + 1], chunk[at + 2], chunk[at + 3]];
            // pd_checksum (bytes 8..10 of the first row) counts as zero.
            if row == 0 && j == 2 {
                w[0] = 0;
                w[1] = 0;
            }
            *sum = mix(*sum, u32::from_le_bytes(w));
        }
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = mix(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |a, s| a ^ s) ^ blkno;
    ((folded % 65535) + 1) as u16
}

/// The checksum stored in the page header.
pub fn stored_checksum(page: &[u8; BLCKSZ]) -> u16 {
    u16::from_le_bytes([page[8], page[9]])
}

/// The page's LSN: the end of the last WAL record that changed it.
pub fn page_lsn(page: &[u8; BLCKSZ]) -> Lsn {
    let hi = u32::from_le_bytes([page[0], page[1], page[2], page[3]]);
    let lo = u32::from_le_bytes([page[4], page[5], page[6], page[7]]);
    Lsn(((hi as u64) << 32) | lo as u64)
}

/// What one page's check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    Valid,
    /// A new (all-zero) page: nothing to check.
    New,
    /// Changed at or after the backup's start: WAL replay rewrites it.
    Recent,
    Corrupt,
}

/// Checks one page at block `blkno` against a backup that started at `start`.
pub fn check_page(page: &[u8; BLCKSZ], blkno: u32, start: Lsn) -> PageState {
    let upper = u16::from_le_bytes([page[14], page[15]]);
    if upper == 0 {
        return if page.iter().all(|b| *b == 0) {
            PageState::New
        } else {
            PageState::Corrupt
        };
    }
    if page_lsn(page) >= start {
        return PageState::Recent;
    }
    if checksum(page, blkno) == stored_checksum(page) {
        PageState::Valid
    } else {
        PageState::Corrupt
    }
}

/// The segment number of a relation file, by its path relative to the data directory
/// (`base/<db>/<relfilenode>[_fsm|_vm|_init][.<segno>]`, `global/…`, or a tablespace's
/// `pg_tblspc/<oid>/<version dir>/<db>/…`); None for any other file.
pub fn relation_segment(rel_path: &str) -> Option<u32> {
    let parts: Vec<&str> = rel_path.trim_start_matches('/').split('/').collect();
    let file = match parts.as_slice() {
        ["global", f] => *f,
        ["base", db, f] if all_digits(db) => *f,
        ["pg_tblspc", oid, _version, db, f] if all_digits(oid) && all_digits(db) => *f,
        _ => return None,
    };
    let (stem, segno) = match file.split_once('.') {
        Some((stem, seg)) if all_digits(seg) => (stem, seg.parse().ok()?),
        Some(_) => return None,
        None => (file, 0),
    };
    let node = match stem.split_once('_') {
        Some((node, "fsm" | "vm" | "init")) => node,
        Some(_) => return None,
        None => stem,
    };
    all_digits(node).then_some(segno)
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// WAL-G's `CorruptBlocksInfo`, kept per file in `files_metadata.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptBlocks {
    #[serde(rename = "CorruptBlocksCount")]
    pub count: usize,
    /// The first [`MAX_BLOCKS_LISTED`] block numbers (in the segment file), in order.
    #[serde(rename = "SomeCorruptBlocks", default)]
    pub some: Vec<u32>,
}

/// What a backup's page verification found: in the sentinel as `PageChecksums`, and in the
/// agent's metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecksumReport {
    #[serde(rename = "PagesChecked", default)]
    pub pages_checked: u64,
    #[serde(rename = "CorruptPages", default)]
    pub corrupt_pages: u64,
    /// Tar entry name (`/base/5/16384`) → its corrupt blocks (numbers in that segment file).
    #[serde(
        rename = "CorruptFiles",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub files: BTreeMap<String, CorruptBlocks>,
}

/// Verifies the pages of one relation segment file as its bytes stream past, holding one page.
pub struct PageVerifier {
    page: Box<[u8; BLCKSZ]>,
    filled: usize,
    /// Block number in the segment file of the page being filled.
    block: u32,
    first_blkno: u32,
    start: Lsn,
    suspects: Vec<u32>,
    pub pages_checked: u64,
}

impl PageVerifier {
    /// For segment `segno` of a relation, in a backup that started at `start`.
    pub fn new(segno: u32, start: Lsn) -> Self {
        PageVerifier {
            page: Box::new([0; BLCKSZ]),
            filled: 0,
            block: 0,
            first_blkno: segno.wrapping_mul(RELSEG_SIZE),
            start,
            suspects: Vec::new(),
            pages_checked: 0,
        }
    }

    /// Takes the next bytes of the file.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.filled == 0 && data.len() >= BLCKSZ {
                if let Ok(page) = <&[u8; BLCKSZ]>::try_from(&data[..BLCKSZ]) {
                    let corrupt = self.is_corrupt(page);
                    self.record(corrupt);
                    data = &data[BLCKSZ..];
                    continue;
                }
            }
            let n = (BLCKSZ - self.filled).min(data.len());
            self.page[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == BLCKSZ {
                let corrupt = self.is_corrupt(&self.page);
                self.record(corrupt);
                self.filled = 0;
            }
        }
    }

    fn is_corrupt(&self, page: &[u8; BLCKSZ]) -> bool {
        let blkno = self.first_blkno.wrapping_add(self.block);
        check_page(page, blkno, self.start) == PageState::Corrupt
    }

    fn record(&mut self, corrupt: bool) {
        if corrupt {
            self.suspects.push(self.block);
        }
        self.pages_checked += 1;
        self.block += 1;
    }

    /// The blocks that failed, each read again from `path` once: a page that a running server
    /// rewrote while it was read passes then (or is too recent to judge). A trailing partial
    /// page (a file being extended) is not judged.
    pub fn finish(self, path: &Path, keep_all: bool) -> Option<CorruptBlocks> {
        if self.suspects.is_empty() {
            return None;
        }
        let file = File::open(path).ok();
        let mut page = [0u8; BLCKSZ];
        let corrupt: Vec<u32> = self
            .suspects
            .into_iter()
            .filter(|&block| {
                let Some(f) = &file else { return true };
                let offset = block as u64 * BLCKSZ as u64;
                match f.read_exact_at(&mut page, offset) {
                    Ok(()) => {
                        let blkno = self.first_blkno.wrapping_add(block);
                        check_page(&page, blkno, self.start) == PageState::Corrupt
                    }
                    // Truncated meanwhile: the server dropped those pages.
                    Err(_) => false,
                }
            })
            .collect();
        (!corrupt.is_empty()).then(|| CorruptBlocks {
            count: corrupt.len(),
            some: corrupt
                .into_iter()
                .take(if keep_all {
                    usize::MAX
                } else {
                    MAX_BLOCKS_LISTED
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_with(lsn: u64, upper: u16, fill: u8) -> Box<[u8; BLCKSZ]> {
        let mut p = Box::new([fill; BLCKSZ]);
        p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        p[12..14].copy_from_slice(&24u16.to_le_bytes());
        p[14..16].copy_from_slice(&upper.to_le_bytes());
        p
    }

    fn sealed(mut p: Box<[u8; BLCKSZ]>, blkno: u32) -> Box<[u8; BLCKSZ]> {
        let c = checksum(&p, blkno);
        p[8..10].copy_from_slice(&c.to_le_bytes());
        p
    }

    #[test]
    fn a_page_sealed_with_its_checksum_is_valid_only_at_its_own_block() {
        let p = sealed(page_with(0x100, 8000, 7), 5);
        assert_eq!(check_page(&p, 5, Lsn(0x1000)), PageState::Valid);
        assert_eq!(check_page(&p, 6, Lsn(0x1000)), PageState::Corrupt);
        let mut flipped = p.clone();
        flipped[4000] ^= 1;
        assert_eq!(check_page(&flipped, 5, Lsn(0x1000)), PageState::Corrupt);
    }

    #[test]
    fn new_pages_must_be_zero_and_recent_pages_are_not_judged() {
        let zero = Box::new([0u8; BLCKSZ]);
        assert_eq!(check_page(&zero, 0, Lsn(1)), PageState::New);
        let mut junk = Box::new([0u8; BLCKSZ]);
        junk[100] = 1;
        assert_eq!(check_page(&junk, 0, Lsn(1)), PageState::Corrupt);
        let torn = page_with(0x2000, 8000, 9);
        assert_eq!(check_page(&torn, 0, Lsn(0x2000)), PageState::Recent);
    }

    #[test]
    fn relation_files_are_recognised_with_their_segment_number() {
        assert_eq!(relation_segment("base/5/16384"), Some(0));
        assert_eq!(relation_segment("/base/5/16384.3"), Some(3));
        assert_eq!(relation_segment("base/5/16384_fsm"), Some(0));
        assert_eq!(relation_segment("base/5/16384_vm.1"), Some(1));
        assert_eq!(relation_segment("global/1262"), Some(0));
        assert_eq!(
            relation_segment("pg_tblspc/16500/PG_15_202209061/5/16501"),
            Some(0)
        );
        for other in [
            "global/pg_control",
            "global/pg_filenode.map",
            "base/5/PG_VERSION",
            "base/5/pg_internal.init",
            "base/5/t3_16384",
            "base/5/16384_x",
            "base/5/16384.a",
            "pg_wal/000000010000000000000001",
            "base/pgsql_tmp/1",
        ] {
            assert_eq!(relation_segment(other), None, "{other}");
        }
    }

    #[test]
    fn the_verifier_reports_blocks_by_number_across_uneven_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("16384.1");
        let mut bytes = Vec::new();
        for b in 0..4u32 {
            let blkno = RELSEG_SIZE + b;
            let mut p = sealed(page_with(0x100, 8000, b as u8), blkno);
            if b == 2 {
                p[5000] ^= 0xff;
            }
            bytes.extend_from_slice(&p[..]);
        }
        std::fs::write(&path, &bytes).unwrap();
        let mut v = PageVerifier::new(1, Lsn(0x1000));
        for chunk in bytes.chunks(3000) {
            v.feed(chunk);
        }
        assert_eq!(v.pages_checked, 4);
        assert_eq!(
            v.finish(&path, false),
            Some(CorruptBlocks {
                count: 1,
                some: vec![2]
            })
        );
    }

    #[test]
    fn a_page_that_reads_well_the_second_time_is_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("16384");
        let good = sealed(page_with(0x100, 8000, 1), 0);
        std::fs::write(&path, &good[..]).unwrap();
        let mut bad = good.clone();
        bad[3000] ^= 1;
        let mut v = PageVerifier::new(0, Lsn(0x1000));
        v.feed(&bad[..]);
        assert_eq!(v.finish(&path, false), None);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_checked_without_panicking(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3 * BLCKSZ), segno in 0u32..u32::MAX) {
            let mut v = PageVerifier::new(segno, Lsn(u64::MAX / 2));
            v.feed(&data);
            let _ = v.finish(Path::new("/nonexistent/walkeeper"), true);
        }
    }
}
