//! Timeline history files (`<tli>.history`): which timeline ended where.
//!
//! Each line is `<parent timeline> <switch point LSN> <reason>`: the parent ran up to the
//! switch point, and its child began there. The file of timeline N lists N's whole ancestry.

use std::collections::BTreeMap;

use crate::archive::Archive;
use crate::backup::Lsn;
use crate::codec::{self, Compression};
use crate::error::{Error, Result};
use crate::wal::names::WalName;

/// A timeline's ancestry: `(parent timeline, switch point)` oldest first, then the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History {
    pub timeline: u32,
    pub entries: Vec<(u32, u64)>,
}

/// Parses the lines of a history file. Comments and blank lines are skipped.
pub fn parse(text: &str) -> Vec<(u32, u64)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let tli = f.next()?.parse().ok()?;
            let lsn = Lsn::parse(f.next()?).ok()?;
            Some((tli, lsn.0))
        })
        .collect()
}

impl History {
    /// Timeline 1, which has no history file.
    pub fn first() -> Self {
        History {
            timeline: 1,
            entries: Vec::new(),
        }
    }

    pub fn from_text(timeline: u32, text: &str) -> Self {
        History {
            timeline,
            entries: parse(text),
        }
    }

    /// Where `tli` ended in this ancestry; None for this timeline itself or a stranger.
    pub fn switch_point(&self, tli: u32) -> Option<u64> {
        self.entries
            .iter()
            .find(|(t, _)| *t == tli)
            .map(|(_, l)| *l)
    }

    /// Is WAL written on `tli` up to `lsn` part of this timeline's past?
    pub fn contains(&self, tli: u32, lsn: u64) -> bool {
        tli == self.timeline || self.switch_point(tli).is_some_and(|s| lsn <= s)
    }

    /// The timeline that holds `lsn` in this ancestry.
    pub fn timeline_at(&self, lsn: u64) -> u32 {
        self.entries
            .iter()
            .find(|(_, switch)| lsn < *switch)
            .map(|(t, _)| *t)
            .unwrap_or(self.timeline)
    }
}

/// Reads and decodes one archived history file. None when the archive does not hold it.
pub async fn fetch(archive: &Archive, tli: u32) -> Result<Option<History>> {
    if tli <= 1 {
        return Ok(Some(History::first()));
    }
    let stem = WalName::History(tli).key_stem();
    let exts: Vec<&str> = Compression::ALL.iter().map(|c| c.ext()).collect();
    let Some((key, _)) = archive
        .store
        .find_stem(&stem, &exts)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let text = read_text(archive, &key).await?;
    Ok(Some(History::from_text(tli, &text)))
}

/// The archived history files from `after + 1` upwards, until the first one missing (timeline
/// IDs are handed out one above the newest the archive holds).
pub async fn fetch_newer(archive: &Archive, after: u32) -> Result<BTreeMap<u32, History>> {
    let mut out = BTreeMap::new();
    let mut tli = after.max(1) + 1;
    while let Some(h) = fetch(archive, tli).await? {
        out.insert(tli, h);
        tli += 1;
    }
    Ok(out)
}

/// The furthest point to which the archive's history files say timeline `tli` is part of the
/// cluster's past: the largest switch point recorded for it. None when no later timeline
/// branched off it.
pub async fn archived_end_of(archive: &Archive, tli: u32) -> Result<Option<u64>> {
    Ok(fetch_newer(archive, tli)
        .await?
        .values()
        .filter_map(|h| h.switch_point(tli))
        .max())
}

/// Reads a small archived object (a history file) as text.
pub async fn read_text(archive: &Archive, key: &str) -> Result<String> {
    let c = key
        .rsplit_once('.')
        .and_then(|(_, e)| Compression::from_ext(e))
        .ok_or_else(|| Error::Corrupt {
            key: key.into(),
            msg: "unknown codec".into(),
        })?;
    let bytes = archive.store.get_bytes(key).await?;
    let mut out = Vec::new();
    codec::decode(&bytes[..], &mut out, c, archive.decryption.as_ref()).map_err(|e| {
        Error::Corrupt {
            key: key.into(),
            msg: e.to_string(),
        }
    })?;
    String::from_utf8(out).map_err(|_| Error::Corrupt {
        key: key.into(),
        msg: "history file is not text".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_lines_parse() {
        let h = parse("1\t0/3000000\tno recovery target specified\n\n2\t0/5000A0\tx\n");
        assert_eq!(h, vec![(1, 0x3000000), (2, 0x5000A0)]);
    }

    #[test]
    fn ancestry_answers_which_timeline_holds_an_lsn() {
        let h = History::from_text(3, "1\t0/3000000\tx\n2\t0/50000A0\ty\n");
        assert_eq!(h.timeline_at(0x100), 1);
        assert_eq!(h.timeline_at(0x3000000), 2);
        assert_eq!(h.timeline_at(0x50000A0), 3);
        assert!(h.contains(1, 0x3000000));
        assert!(!h.contains(1, 0x3000001));
        assert!(h.contains(3, u64::MAX));
        assert!(!h.contains(4, 0));
    }
}
