//! `wal-verify`: is every WAL segment from the oldest backup's start to the newest archived
//! segment present, following `.history` files across timelines?

use std::collections::{BTreeMap, BTreeSet};

use super::{list_backups, DEFAULT_SEG_SIZE};
use crate::archive::Archive;
use crate::codec::{self, Compression};
use crate::error::{Error, Result};
use crate::wal::names::{SegmentId, WalName, WAL_FOLDER};

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub timeline: u32,
    pub first: Option<String>,
    pub last: Option<String>,
    pub checked: u64,
    pub missing: Vec<String>,
}

/// One line of a timeline history file: `parent_tli  switchpoint  reason`.
fn parse_history(text: &str) -> Vec<(u32, u64)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let tli = f.next()?.parse().ok()?;
            let lsn = super::Lsn::parse(f.next()?).ok()?;
            Some((tli, lsn.0))
        })
        .collect()
}

pub async fn verify(archive: &Archive) -> Result<Report> {
    let backups = list_backups(&archive.store).await?;
    let mut segments: BTreeSet<SegmentId> = BTreeSet::new();
    let mut histories: BTreeMap<u32, String> = BTreeMap::new();
    for (key, _) in archive.store.list(WAL_FOLDER).await? {
        let file = key.rsplit('/').next().unwrap_or("");
        let Some((base, ext)) = file.rsplit_once('.') else {
            continue;
        };
        let Ok(wal) = WalName::parse(base) else {
            continue;
        };
        match wal {
            WalName::Segment(s) => {
                segments.insert(s);
            }
            WalName::History(t) => {
                histories.insert(t, key.clone());
                let _ = ext;
            }
            _ => {}
        }
    }
    let seg_size = backups
        .first()
        .map(|b| b.seg_size)
        .unwrap_or(DEFAULT_SEG_SIZE);
    let Some(newest_tli) = segments.iter().map(|s| s.timeline).max() else {
        return Ok(Report::default());
    };
    // Switch points of the newest timeline's ancestry: (timeline, first LSN on it).
    let mut chain: Vec<(u32, u64)> = vec![(newest_tli, 0)];
    let mut missing = Vec::new();
    if newest_tli > 1 {
        match histories.get(&newest_tli) {
            Some(key) => {
                let text = read_text(archive, key).await?;
                let entries = parse_history(&text);
                // Each entry: the parent timeline ended at `switch`; the next one starts there.
                chain.clear();
                let mut begin = 0u64;
                for (tli, switch) in &entries {
                    chain.push((*tli, begin));
                    begin = *switch;
                }
                chain.push((newest_tli, begin));
            }
            None => missing.push(format!("{newest_tli:08X}.history")),
        }
    }
    let timeline_at = |segno: u64| -> u32 {
        // The newest timeline whose first segment is at or before this one.
        chain
            .iter()
            .rev()
            .find(|(_, begin)| begin / seg_size <= segno)
            .map(|(t, _)| *t)
            .unwrap_or(newest_tli)
    };
    let start = match backups.first() {
        Some(b) => b.start_lsn.0 / seg_size,
        None => segments
            .iter()
            .map(|s| s.segno(seg_size))
            .min()
            .unwrap_or(0),
    };
    let end = segments
        .iter()
        .filter(|s| s.timeline == newest_tli)
        .map(|s| s.segno(seg_size))
        .max()
        .unwrap_or(start);
    let mut checked = 0;
    for segno in start..=end {
        let want = SegmentId::from_segno(timeline_at(segno), segno, seg_size);
        checked += 1;
        if !segments.contains(&want) {
            missing.push(want.name());
        }
    }
    Ok(Report {
        timeline: newest_tli,
        first: Some(SegmentId::from_segno(timeline_at(start), start, seg_size).name()),
        last: Some(SegmentId::from_segno(newest_tli, end, seg_size).name()),
        checked,
        missing,
    })
}

async fn read_text(archive: &Archive, key: &str) -> Result<String> {
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
        let h = parse_history("1\t0/3000000\tno recovery target specified\n\n2\t0/5000A0\tx\n");
        assert_eq!(h, vec![(1, 0x3000000), (2, 0x5000A0)]);
    }
}
