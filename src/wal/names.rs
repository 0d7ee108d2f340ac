//! PostgreSQL WAL file names and the archive keys they map to.

use std::fmt;

use crate::error::{Error, Result};

/// The archive folder for WAL (WAL-G's and WAL-E's).
pub const WAL_FOLDER: &str = "wal_005";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId {
    pub timeline: u32,
    pub log: u32,
    pub seg: u32,
}

/// A WAL segment size: a power of two from 1 MiB to 1 GiB (PostgreSQL's `--wal-segsize` range).
/// The only way to build one is [`WalSegSize::new`], so LSN arithmetic never divides by zero or by
/// a size read unchecked from a sentinel, a page header or a server.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "u64", into = "u64")]
pub struct WalSegSize(u64);

impl WalSegSize {
    pub const MIN: u64 = 1 << 20;
    pub const MAX: u64 = 1 << 30;
    /// PostgreSQL's default, 16 MiB.
    pub const DEFAULT: WalSegSize = WalSegSize(16 << 20);

    pub fn new(bytes: u64) -> Result<Self> {
        if bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(WalSegSize(bytes))
        } else {
            Err(Error::BadInput(format!(
                "{bytes} is not a WAL segment size (a power of two from 1 MiB to 1 GiB)"
            )))
        }
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl Default for WalSegSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<u64> for WalSegSize {
    type Error = Error;
    fn try_from(v: u64) -> Result<Self> {
        Self::new(v)
    }
}

impl From<WalSegSize> for u64 {
    fn from(v: WalSegSize) -> u64 {
        v.0
    }
}

impl fmt::Display for WalSegSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl SegmentId {
    pub fn name(&self) -> String {
        format!("{:08X}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }

    /// Segment number counted from LSN 0 (PostgreSQL's XLogSegNo) for a segment size.
    pub fn segno(&self, seg_size: WalSegSize) -> u64 {
        let per_log = 0x1_0000_0000u64 / seg_size.get();
        self.log as u64 * per_log + self.seg as u64
    }

    pub fn from_segno(timeline: u32, segno: u64, seg_size: WalSegSize) -> Self {
        let per_log = 0x1_0000_0000u64 / seg_size.get();
        SegmentId {
            timeline,
            log: (segno / per_log) as u32,
            seg: (segno % per_log) as u32,
        }
    }

    /// The segment `n` after this one on the same timeline.
    pub fn nth_next(&self, n: u64, seg_size: WalSegSize) -> Self {
        Self::from_segno(self.timeline, self.segno(seg_size) + n, seg_size)
    }

    /// The LSN of this segment's first byte.
    pub fn start_lsn(&self, seg_size: WalSegSize) -> u64 {
        self.segno(seg_size) * seg_size.get()
    }
}

/// A file name PostgreSQL hands to archive_command or restore_command.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalName {
    Segment(SegmentId),
    /// `<segment>.partial`, written at promotion for the old timeline's last segment.
    Partial(SegmentId),
    /// `<segment>.<offset>.backup`, a backup history file.
    Backup(SegmentId, u32),
    /// `<timeline>.history`.
    History(u32),
}

fn hex8(s: &str) -> Option<u32> {
    if s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

fn segment(s: &str) -> Option<SegmentId> {
    if s.len() != 24 {
        return None;
    }
    Some(SegmentId {
        timeline: hex8(s.get(0..8)?)?,
        log: hex8(s.get(8..16)?)?,
        seg: hex8(s.get(16..24)?)?,
    })
}

impl WalName {
    pub fn parse(name: &str) -> Result<Self> {
        let invalid = || {
            Error::BadInput(format!(
                "{name:?} is not a WAL file name (expected a 24-hex-digit segment, \
                 <segment>.partial, <segment>.<8 hex>.backup or <8 hex>.history)"
            ))
        };
        if let Some(seg) = segment(name) {
            return Ok(WalName::Segment(seg));
        }
        if let Some(base) = name.strip_suffix(".partial") {
            return segment(base).map(WalName::Partial).ok_or_else(invalid);
        }
        if let Some(base) = name.strip_suffix(".history") {
            return hex8(base).map(WalName::History).ok_or_else(invalid);
        }
        if let Some(base) = name.strip_suffix(".backup") {
            let (seg, off) = base.split_once('.').ok_or_else(invalid)?;
            return match (segment(seg), hex8(off)) {
                (Some(s), Some(o)) => Ok(WalName::Backup(s, o)),
                _ => Err(invalid()),
            };
        }
        Err(invalid())
    }

    /// The object key stem (without the codec extension), relative to the archive prefix.
    pub fn key_stem(&self) -> String {
        format!("{WAL_FOLDER}/{self}")
    }

    pub fn segment(&self) -> Option<SegmentId> {
        match self {
            WalName::Segment(s) => Some(*s),
            _ => None,
        }
    }

    pub fn timeline(&self) -> u32 {
        match self {
            WalName::Segment(s) | WalName::Partial(s) | WalName::Backup(s, _) => s.timeline,
            WalName::History(t) => *t,
        }
    }
}

impl fmt::Display for WalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalName::Segment(s) => write!(f, "{}", s.name()),
            WalName::Partial(s) => write!(f, "{}.partial", s.name()),
            WalName::Backup(s, o) => write!(f, "{}.{:08X}.backup", s.name(), o),
            WalName::History(t) => write!(f, "{t:08X}.history"),
        }
    }
}

/// What the first page header of a segment says, enough to check a file is the named segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    pub timeline: u32,
    pub page_addr: u64,
    pub system_identifier: u64,
    pub seg_size: u32,
}

impl LongPageHeader {
    /// Parses XLogLongPageHeaderData (little-endian on every platform PostgreSQL runs here).
    pub fn parse(head: &[u8]) -> Option<Self> {
        if head.len() < 40 {
            return None;
        }
        let u16at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
        let u32at = |o: usize| u32::from_le_bytes(head[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64at = |o: usize| u64::from_le_bytes(head[o..o + 8].try_into().unwrap_or([0; 8]));
        const XLP_LONG_HEADER: u16 = 0x0002;
        if u16at(2) & XLP_LONG_HEADER == 0 {
            return None;
        }
        Some(LongPageHeader {
            timeline: u32at(4),
            page_addr: u64at(8),
            system_identifier: u64at(24),
            seg_size: u32at(32),
        })
    }
}

/// `XLOG_PAGE_MAGIC` of each PostgreSQL major version walkeeper reads (src/include/access/
/// xlog_internal.h): a page header with any other magic is not WAL of a supported server.
pub const WAL_PAGE_MAGICS: [(u16, u32); 9] = [
    (0xD097, 10),
    (0xD098, 11),
    (0xD101, 12),
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// The bytes of the first page that [`check_segment_head`] reads.
pub const SEGMENT_HEAD_LEN: usize = 40;

/// Checks that the first [`SEGMENT_HEAD_LEN`] bytes of a file are the long page header of
/// segment `seg`: a known magic, the long-header flag, a valid segment size, the page address of
/// the segment's first byte, a timeline not above the name's, and, when `sysid` is given, that
/// system identifier. Returns the header and its segment size; the message says what differs.
///
/// The timeline may be *lower* than the name's: at promotion PostgreSQL copies the old
/// timeline's last segment into the new timeline's file name (XLogInitNewTimeline), so that
/// file's first page still carries the old timeline. A higher one never happens.
pub fn check_segment_head(
    head: &[u8],
    seg: &SegmentId,
    sysid: Option<u64>,
) -> std::result::Result<(LongPageHeader, WalSegSize), String> {
    let Some(magic) = head.get(0..2).map(|b| u16::from_le_bytes([b[0], b[1]])) else {
        return Err("shorter than a page header".into());
    };
    if !WAL_PAGE_MAGICS.iter().any(|(m, _)| *m == magic) {
        return Err(format!(
            "page magic {magic:#06X} is not the WAL magic of PostgreSQL 10 to 17"
        ));
    }
    let h = LongPageHeader::parse(head).ok_or("the first page has no long header")?;
    let seg_size = WalSegSize::new(h.seg_size as u64).map_err(|_| {
        format!(
            "header segment size {} is not a WAL segment size",
            h.seg_size
        )
    })?;
    let want = seg.start_lsn(seg_size);
    if h.page_addr != want {
        return Err(format!(
            "the first page is at {:X}/{:X}, not {:X}/{:X} where {} begins",
            h.page_addr >> 32,
            h.page_addr & 0xFFFF_FFFF,
            want >> 32,
            want & 0xFFFF_FFFF,
            seg.name()
        ));
    }
    if h.timeline > seg.timeline {
        return Err(format!(
            "the header's timeline {} is above the name's {}",
            h.timeline, seg.timeline
        ));
    }
    if let Some(expected) = sysid {
        if h.system_identifier != expected {
            return Err(format!(
                "system identifier {} is not the archive's {expected}: WAL of another cluster",
                h.system_identifier
            ));
        }
    }
    Ok((h, seg_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_wal_name_and_prints_it_back() {
        for n in [
            "000000010000000000000001",
            "0000000A00000003000000FF.partial",
            "000000010000000000000002.00000028.backup",
            "0000000B.history",
        ] {
            assert_eq!(WalName::parse(n).unwrap().to_string(), n);
        }
    }

    #[test]
    fn rejects_names_that_are_not_wal() {
        for n in [
            "",
            "notawalfile",
            "00000001000000000000001",
            "0000000100000000000000011",
            "00000001000000000000000g",
            "000000010000000000000001.history",
            "0000000b.history",
            "../000000010000000000000001",
            "000000010000000000000001.backup",
        ] {
            assert!(WalName::parse(n).is_err(), "{n:?} accepted");
        }
    }

    #[test]
    fn next_segment_wraps_the_log_number() {
        let s = segment("0000000100000003000000FF").unwrap();
        assert_eq!(
            s.nth_next(1, WalSegSize::DEFAULT).name(),
            "000000010000000400000000"
        );
        let s = segment("000000010000000300000000").unwrap();
        let g = WalSegSize::new(1 << 30).unwrap();
        assert_eq!(s.nth_next(2, g).name(), "000000010000000300000002");
        assert_eq!(s.nth_next(4, g).name(), "000000010000000400000000");
    }

    #[test]
    fn segment_sizes_outside_postgres_range_are_refused() {
        for bad in [0, 1, 512 << 10, (16 << 20) + 1, 3 << 20, 2 << 30, u64::MAX] {
            assert!(WalSegSize::new(bad).is_err(), "{bad} accepted");
        }
        for good in [1 << 20, 16 << 20, 1 << 30] {
            assert_eq!(WalSegSize::new(good).unwrap().get(), good);
        }
        let parsed: Result<WalSegSize, _> = serde_json::from_str("0");
        assert!(parsed.is_err());
    }

    fn head(magic: u16, tli: u32, addr: u64, sysid: u64, size: u32) -> [u8; 40] {
        let mut h = [0u8; 40];
        h[0..2].copy_from_slice(&magic.to_le_bytes());
        h[2..4].copy_from_slice(&2u16.to_le_bytes());
        h[4..8].copy_from_slice(&tli.to_le_bytes());
        h[8..16].copy_from_slice(&addr.to_le_bytes());
        h[24..32].copy_from_slice(&sysid.to_le_bytes());
        h[32..36].copy_from_slice(&size.to_le_bytes());
        h[36..40].copy_from_slice(&8192u32.to_le_bytes());
        h
    }

    #[test]
    fn a_segment_head_must_name_the_segment_timeline_size_and_cluster() {
        let seg = segment("000000020000000100000003").unwrap();
        let addr = (0x100 + 3) * (16u64 << 20);
        let ok = head(0xD110, 2, addr, 42, 16 << 20);
        assert!(check_segment_head(&ok, &seg, Some(42)).is_ok());
        assert!(check_segment_head(&ok, &seg, None).is_ok());
        // Every supported major's magic, and the old timeline of a copied segment.
        for (m, _) in WAL_PAGE_MAGICS {
            assert!(check_segment_head(&head(m, 1, addr, 42, 16 << 20), &seg, Some(42)).is_ok());
        }
        let bad: [(&str, [u8; 40]); 7] = [
            ("magic", head(0xD093, 2, addr, 42, 16 << 20)),
            ("magic", head(0, 2, addr, 42, 16 << 20)),
            ("timeline", head(0xD110, 3, addr, 42, 16 << 20)),
            ("not 1/", head(0xD110, 2, addr + (16 << 20), 42, 16 << 20)),
            ("segment size", head(0xD110, 2, addr, 42, 0)),
            ("not 1/", head(0xD110, 2, addr, 42, 1 << 20)),
            ("system identifier 43", head(0xD110, 2, addr, 43, 16 << 20)),
        ];
        for (what, h) in bad {
            let e = check_segment_head(&h, &seg, Some(42)).unwrap_err();
            assert!(e.contains(what), "{what}: {e}");
        }
        let mut short = ok;
        short[2] = 0; // no XLP_LONG_HEADER
        assert!(check_segment_head(&short, &seg, None).is_err());
        assert!(check_segment_head(&ok[..10], &seg, None).is_err());
        assert!(check_segment_head(&[], &seg, None).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_checked_without_panicking(bytes in proptest::collection::vec(0u8..=255, 0..64), tli in 0u32..4) {
            let seg = SegmentId { timeline: tli, log: 0, seg: 1 };
            let _ = check_segment_head(&bytes, &seg, Some(1));
            let _ = LongPageHeader::parse(&bytes);
        }
    }
}
