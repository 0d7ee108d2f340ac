//! Timeline history files (`<tli>.history`): which timeline ended where.
//!
//! Each line is `<parent timeline> <switch point LSN> <reason>`: the parent ran up to the
//! switch point, and its child began there. The file of timeline N lists N's whole ancestry.

use std::collections::BTreeMap;

use super::Lsn;
use crate::archive::Archive;
use crate::codec::{self, Compression};
use crate::error::{Error, Result};
use crate::wal::names::WalName;

/// A timeline's ancestry: `(parent timeline, switch point)` oldest first, then the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History {
    pub timeline: u32,
    pub entries: Vec<(u32, u64)>,
}

/// Parses the lines of a history file of timeline `timeline`. Comments and blank lines are
/// skipped; anything else must be `<parent> <switch LSN> [reason]`, with parents increasing and
/// below `timeline` (as PostgreSQL checks). The error says
/// which line is wrong.
pub fn parse(timeline: u32, text: &str) -> std::result::Result<Vec<(u32, u64)>, String> {
    let mut out: Vec<(u32, u64)> = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let line = l.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let mut f = line.split_whitespace();
        let tli: u32 = f
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("line {n}: {line:?} does not start with a timeline ID"))?;
        let lsn = f
            .next()
            .and_then(|t| Lsn::parse(t).ok())
            .ok_or_else(|| format!("line {n}: {line:?} has no switch point (X/Y)"))?;
        if tli == 0 || tli >= timeline {
            return Err(format!(
                "line {n}: timeline {tli} cannot be a parent of timeline {timeline}"
            ));
        }
        if let Some(&(prev_tli, _)) = out.last() {
            if tli <= prev_tli {
                return Err(format!(
                    "line {n}: timeline IDs must increase ({tli} after {prev_tli})"
                ));
            }
        }
        out.push((tli, lsn.0));
    }
    Ok(out)
}

impl History {
    /// Timeline 1, which has no history file.
    pub fn first() -> Self {
        History {
            timeline: 1,
            entries: Vec::new(),
        }
    }

    /// Parses the history file of `timeline`, read from `key` (named in the error).
    pub fn from_text(timeline: u32, key: &str, text: &str) -> Result<Self> {
        let entries = parse(timeline, text).map_err(|msg| Error::Corrupt {
            key: key.into(),
            msg: format!("history file of timeline {timeline}: {msg}"),
        })?;
        Ok(History { timeline, entries })
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
    Ok(fetch_object(archive, tli).await?.map(|o| o.history))
}

/// An archived history file of a timeline above 1: its ancestry, its text (the reasons) and
/// when it was archived.
pub struct HistoryObject {
    pub history: History,
    pub text: String,
    pub archived_at: chrono::DateTime<chrono::Utc>,
}

/// Reads and decodes the archived history file of `tli` (above 1). None when the archive does
/// not hold it.
pub async fn fetch_object(archive: &Archive, tli: u32) -> Result<Option<HistoryObject>> {
    let stem = WalName::History(tli).key_stem();
    let exts: Vec<&str> = Compression::ALL.iter().map(|c| c.ext()).collect();
    let Some((key, meta)) = archive
        .store
        .find_stem(&stem, &exts)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let text = read_text(archive, &key).await?;
    Ok(Some(HistoryObject {
        history: History::from_text(tli, &key, &text)?,
        text,
        archived_at: meta.last_modified,
    }))
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
        let h = parse(
            3,
            "1\t0/3000000\tno recovery target specified\n\n2\t0/5000A0\tx\n",
        )
        .unwrap();
        assert_eq!(h, vec![(1, 0x3000000), (2, 0x5000A0)]);
    }

    #[test]
    fn ancestry_answers_which_timeline_holds_an_lsn() {
        let h = History::from_text(3, "k", "1\t0/3000000\tx\n2\t0/50000A0\ty\n").unwrap();
        assert_eq!(h.timeline_at(0x100), 1);
        assert_eq!(h.timeline_at(0x3000000), 2);
        assert_eq!(h.timeline_at(0x50000A0), 3);
        assert!(h.contains(1, 0x3000000));
        assert!(!h.contains(1, 0x3000001));
        assert!(h.contains(3, u64::MAX));
        assert!(!h.contains(4, 0));
    }

    #[test]
    fn corrupt_history_files_are_errors_naming_the_key_and_line() {
        for (text, want) in [
            ("1\tnot-an-lsn\tx\n", "line 1"),
            ("one\t0/3000000\n", "line 1"),
            ("1\t0/3000000\n1\t0/4000000\n", "line 2"),
            ("3\t0/3000000\n", "parent"),
        ] {
            let e = History::from_text(3, "wal_005/00000003.history.lz4", text)
                .unwrap_err()
                .to_string();
            assert!(e.contains("wal_005/00000003.history.lz4"), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn history_parser_never_panics(tli in 0u32..10, text in "\\PC*") {
            let _ = parse(tli, &text);
        }

        #[test]
        fn well_formed_history_files_round_trip(
            steps in proptest::collection::vec((1u32..5, 0u64..1 << 40), 0..8)
        ) {
            let mut tli = 0u32;
            let mut lsn = 0u64;
            let mut want = Vec::new();
            let mut text = String::new();
            for (dt, dl) in steps {
                tli += dt;
                lsn += dl;
                want.push((tli, lsn));
                text.push_str(&format!("{tli}\t{}\treason\n", Lsn(lsn)));
            }
            let got = parse(tli + 1, &text).unwrap();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
