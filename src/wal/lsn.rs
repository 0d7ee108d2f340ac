//! A PostgreSQL LSN (log sequence number): a byte position in the WAL stream.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::names::{SegmentId, WalSegSize};
use crate::error::{Error, Result};

/// A PostgreSQL LSN. Serialised as a number, as WAL-G does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses PostgreSQL's text form `X/Y`.
    pub fn parse(s: &str) -> Result<Lsn> {
        let bad = || Error::BadInput(format!("{s:?} is not an LSN (expected X/Y in hex)"));
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }

    /// The segment holding this LSN.
    pub fn segment(self, timeline: u32, seg_size: WalSegSize) -> SegmentId {
        SegmentId::from_segno(timeline, self.0 / seg_size.get(), seg_size)
    }

    /// The segment holding the byte just before this LSN (for an end position).
    pub fn prev_segment(self, timeline: u32, seg_size: WalSegSize) -> SegmentId {
        SegmentId::from_segno(
            timeline,
            self.0.saturating_sub(1) / seg_size.get(),
            seg_size,
        )
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips_and_maps_to_segments() {
        let l = Lsn::parse("1/2A000028").unwrap();
        assert_eq!(l.to_string(), "1/2A000028");
        assert_eq!(
            l.segment(3, WalSegSize::DEFAULT).name(),
            "00000003000000010000002A"
        );
        assert_eq!(
            Lsn::parse("0/3000000")
                .unwrap()
                .prev_segment(1, WalSegSize::DEFAULT)
                .name(),
            "000000010000000000000002"
        );
        assert!(Lsn::parse("12345").is_err());
    }
}
