//! `wal-verify`: is every WAL segment from the oldest backup's start to the newest archived
//! segment (or the running server's current one) present, following `.history` files across
//! timelines? And is each WAL name stored once: another tool can leave `X.lz4` next to `X.zst`;
//! copies whose decoded contents differ are a conflict nobody can resolve automatically.
//!
//! Missing segments are classified as WAL-G's integrity check does, scanning back from the
//! current segment: up to `delayed` missing ones before the first archived one are
//! MISSING_DELAYED (not yet handed to archive_command), the next `uploading` segments' missing
//! ones MISSING_UPLOADING, every older missing one MISSING_LOST.

use std::collections::{BTreeMap, BTreeSet};

use super::{list_backups, DEFAULT_SEG_SIZE};
use crate::archive::Archive;
use crate::codec::Compression;
use crate::error::Result;
use crate::wal::fetch::{decoded_digest, Decoded};
use crate::wal::history;
use crate::wal::names::{SegmentId, WalName, WAL_FOLDER};

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub timeline: u32,
    pub first: Option<String>,
    pub last: Option<String>,
    pub checked: u64,
    pub missing: Vec<String>,
    /// The checked range as runs of present or missing segments on one timeline, in order
    /// (WAL-G's integrity details).
    pub runs: Vec<Run>,
    /// WAL names stored under more than one codec.
    pub duplicates: Vec<Duplicate>,
}

/// Consecutive segments on one timeline with one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub timeline: u32,
    pub first: String,
    pub last: String,
    pub count: u64,
    pub status: Status,
}

/// A segment's status in WAL-G's integrity check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Found,
    /// Missing, newer than every archived segment: probably not handed to archive_command yet.
    MissingDelayed,
    /// Missing, but within the upload window of the newest archived segment.
    MissingUploading,
    /// Missing, and nothing is on its way: a gap.
    MissingLost,
}

impl Status {
    /// WAL-G's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Found => "FOUND",
            Status::MissingDelayed => "MISSING_DELAYED",
            Status::MissingUploading => "MISSING_UPLOADING",
            Status::MissingLost => "MISSING_LOST",
        }
    }
}

/// Where the scan starts and how missing segments near it are read (WAL-G's integrity check).
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// The running server's timeline and current LSN: the check covers the segments before the
    /// one holding it. None: up to the newest archived segment of the newest timeline.
    pub tip: Option<(u32, u64)>,
    /// WALG_INTEGRITY_MAX_DELAYED_WALS: missing segments before the newest archived one that
    /// count as delayed.
    pub delayed: u64,
    /// Segments after those whose absence counts as still uploading.
    pub uploading: u64,
    /// WAL-G's range without backups: from segment 1 (else from the oldest archived one).
    pub from_one_without_backups: bool,
}

/// One WAL name stored under several codecs, with each copy's decoded length and digest.
#[derive(Debug, Clone)]
pub struct Duplicate {
    pub name: String,
    pub copies: Vec<(String, Decoded)>,
}

impl Duplicate {
    /// The copies decode to different bytes: wal-fetch refuses this name.
    pub fn differs(&self) -> bool {
        self.copies.windows(2).any(|w| w[0].1 != w[1].1)
    }
}

impl Report {
    /// No gap and no conflicting copies.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && !self.duplicates.iter().any(Duplicate::differs)
    }
}

pub async fn verify(archive: &Archive) -> Result<Report> {
    verify_with(archive, &Scan::default()).await
}

pub async fn verify_with(archive: &Archive, scan: &Scan) -> Result<Report> {
    let backups = list_backups(&archive.store).await?;
    let mut segments: BTreeSet<SegmentId> = BTreeSet::new();
    let mut histories: BTreeMap<u32, String> = BTreeMap::new();
    let mut copies: BTreeMap<String, Vec<(String, Compression)>> = BTreeMap::new();
    for (key, _) in archive.store.list(WAL_FOLDER).await? {
        let file = key.rsplit('/').next().unwrap_or("");
        let Some((base, ext)) = file.rsplit_once('.') else {
            continue;
        };
        let Ok(wal) = WalName::parse(base) else {
            continue;
        };
        if let Some(c) = Compression::from_ext(ext) {
            copies
                .entry(base.to_string())
                .or_default()
                .push((key.clone(), c));
        }
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
    let mut duplicates = Vec::new();
    for (name, keys) in copies.into_iter().filter(|(_, k)| k.len() > 1) {
        let mut digests = Vec::new();
        for (key, c) in keys {
            let d = decoded_digest(archive, &key, c).await?;
            digests.push((key, d));
        }
        duplicates.push(Duplicate {
            name,
            copies: digests,
        });
    }
    let Some(archived_tli) = segments.iter().map(|s| s.timeline).max() else {
        return Ok(Report {
            duplicates,
            ..Report::default()
        });
    };
    // The timeline whose history is followed: the server's, else the newest archived.
    let newest_tli = scan.tip.map_or(archived_tli, |(t, _)| t);
    // Switch points of the newest timeline's ancestry: (timeline, first LSN on it).
    let mut chain: Vec<(u32, u64)> = vec![(newest_tli, 0)];
    let mut missing = Vec::new();
    if newest_tli > 1 {
        match histories.get(&newest_tli) {
            Some(key) => {
                let text = history::read_text(archive, key).await?;
                let entries = history::History::from_text(newest_tli, key, &text)?.entries;
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
            .find(|(_, begin)| begin / seg_size.get() <= segno)
            .map(|(t, _)| *t)
            .unwrap_or(newest_tli)
    };
    let start = match backups.iter().map(|b| b.start_lsn.0 / seg_size.get()).min() {
        Some(s) => s,
        None if scan.from_one_without_backups => 1,
        None => segments
            .iter()
            .map(|s| s.segno(seg_size))
            .min()
            .unwrap_or(0),
    };
    let end = match scan.tip {
        // The segment holding the current LSN is still being written: the one before it.
        Some((_, lsn)) => (lsn.saturating_sub(1) / seg_size.get()).checked_sub(1),
        None => segments
            .iter()
            .filter(|s| s.timeline == newest_tli)
            .map(|s| s.segno(seg_size))
            .max(),
    }
    .unwrap_or(start);
    let mut checked = 0;
    // Newest first, as WAL-G scans: delayed, then uploading, then lost.
    let mut scanned: Vec<(SegmentId, Status)> = Vec::new();
    let mut delayed_left = scan.delayed;
    let mut uploading_left = scan.uploading;
    for segno in (start..=end).rev() {
        let want = SegmentId::from_segno(timeline_at(segno), segno, seg_size);
        checked += 1;
        let found = segments.contains(&want);
        let status = if delayed_left > 0 {
            delayed_left = if found { 0 } else { delayed_left - 1 };
            if found {
                Status::Found
            } else {
                Status::MissingDelayed
            }
        } else if uploading_left > 0 {
            uploading_left -= 1;
            if found {
                Status::Found
            } else {
                Status::MissingUploading
            }
        } else if found {
            Status::Found
        } else {
            Status::MissingLost
        };
        scanned.push((want, status));
    }
    let mut runs: Vec<Run> = Vec::new();
    for (want, status) in scanned.into_iter().rev() {
        if status != Status::Found {
            missing.push(want.name());
        }
        match runs.last_mut() {
            Some(r) if r.status == status && r.timeline == want.timeline => {
                r.last = want.name();
                r.count += 1;
            }
            _ => runs.push(Run {
                timeline: want.timeline,
                first: want.name(),
                last: want.name(),
                count: 1,
                status,
            }),
        }
    }
    Ok(Report {
        timeline: archived_tli,
        first: Some(SegmentId::from_segno(timeline_at(start), start, seg_size).name()),
        last: Some(SegmentId::from_segno(newest_tli, end, seg_size).name()),
        checked,
        missing,
        runs,
        duplicates,
    })
}
