//! Failover gap healing.
//!
//! A replica marks the segments it streams as archived (`.done`) and never archives them. When
//! the old primary died before archiving its last segments, those exist only on the members
//! that streamed them. A member that becomes leader therefore looks, on every timeline of its
//! ancestry before its own, for the segments the archive lacks up to that timeline's switch
//! point, and uploads the ones it still holds in pg_wal.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::Leadership;
use crate::backup::list_backups;
use crate::error::{Error, Result};
use crate::wal::history::History;
use crate::wal::names::{LongPageHeader, SegmentId, WalName, WalSegSize, WAL_FOLDER};
use crate::wal::push::push_file;
use crate::wal::Lsn;
use crate::wal::WalContext;

#[derive(Debug, Clone, Default, Serialize)]
pub struct HealReport {
    /// The timeline this member is on.
    pub timeline: u32,
    /// Segments of earlier timelines the archive should hold up to their switch points.
    pub checked: u64,
    /// Missing segments uploaded from pg_wal.
    pub healed: Vec<String>,
    /// Missing segments this member does not hold (or holds damaged).
    pub unhealable: Vec<String>,
}

/// The newest timeline history file in pg_wal, or timeline 1's empty history.
pub fn local_history(pg_wal: &Path) -> Result<History> {
    let mut newest: Option<u32> = None;
    let rd = std::fs::read_dir(pg_wal).map_err(|e| Error::io(pg_wal, e))?;
    for e in rd.flatten() {
        if let Some(WalName::History(t)) =
            e.file_name().to_str().and_then(|n| WalName::parse(n).ok())
        {
            newest = newest.max(Some(t));
        }
    }
    let Some(tli) = newest else {
        return Ok(History::first());
    };
    let path = pg_wal.join(WalName::History(tli).to_string());
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    History::from_text(tli, &path.display().to_string(), &text)
}

/// Does the file at `path` hold segment `seg` (first page header, size)?
fn holds(path: &Path, seg: &SegmentId, seg_size: WalSegSize) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; 64];
    if f.read_exact(&mut head).is_err() {
        return false;
    }
    let size_ok = f
        .metadata()
        .map(|m| m.len() == seg_size.get())
        .unwrap_or(false);
    matches!(LongPageHeader::parse(&head), Some(h)
        if size_ok && h.page_addr == seg.start_lsn(seg_size) && h.seg_size as u64 == seg_size.get())
}

/// The WAL segment size, from any segment file in pg_wal.
fn local_seg_size(pg_wal: &Path) -> WalSegSize {
    std::fs::read_dir(pg_wal)
        .ok()
        .and_then(|rd| {
            rd.flatten().find_map(|e| {
                let name = e.file_name();
                let WalName::Segment(_) = WalName::parse(name.to_str()?).ok()? else {
                    return None;
                };
                e.metadata()
                    .ok()
                    .and_then(|m| WalSegSize::new(m.len()).ok())
            })
        })
        .unwrap_or(crate::backup::DEFAULT_SEG_SIZE)
}

/// Finds and fills the gaps of earlier timelines. `leadership` must let this member upload
/// (the agent calls this as the leader).
pub async fn heal(ctx: Arc<WalContext>, leadership: &Leadership) -> Result<HealReport> {
    let history = local_history(&ctx.pg_wal)?;
    let mut report = HealReport {
        timeline: history.timeline,
        ..Default::default()
    };
    if history.entries.is_empty() {
        return Ok(report);
    }
    let seg_size = local_seg_size(&ctx.pg_wal);
    let seg_bytes = seg_size.get();
    // From the newest backup on this ancestry (what restoring to the newest point needs); with
    // none, from the oldest segment of an earlier timeline held here.
    let backups = list_backups(&ctx.store).await?;
    let start = match backups
        .iter()
        .rev()
        .find(|b| history.contains(b.timeline, b.finish_lsn.0))
    {
        Some(b) => b.start_lsn.0,
        None => oldest_local(&ctx.pg_wal, &history, seg_size).unwrap_or(u64::MAX),
    };
    let mut begin = 0u64;
    for &(tli, switch) in &history.entries {
        let from = (start.max(begin) / seg_bytes).min(switch / seg_bytes);
        let until = switch / seg_bytes; // segments that end at or before the switch point
        begin = switch;
        if from >= until {
            continue;
        }
        let first = SegmentId::from_segno(tli, from, seg_size);
        let last = SegmentId::from_segno(tli, until - 1, seg_size);
        // Keys `wal_005/<name>.<ext>` sort after `wal_005/<name>`: list from the first name
        // to past the last one.
        let after = format!("{WAL_FOLDER}/{}", first.name());
        let stop = format!("{WAL_FOLDER}/{}.~", last.name());
        let listed = ctx
            .store
            .list_after(WAL_FOLDER, &after, |k| k <= stop.as_str())
            .await?;
        let present: std::collections::BTreeSet<String> = listed
            .iter()
            .filter_map(|(k, _)| k.rsplit('/').next()?.split('.').next().map(String::from))
            .collect();
        for segno in from..until {
            let seg = SegmentId::from_segno(tli, segno, seg_size);
            report.checked += 1;
            if present.contains(&seg.name()) {
                continue;
            }
            let path = ctx.pg_wal.join(seg.name());
            if !holds(&path, &seg, seg_size) {
                report.unhealable.push(seg.name());
                continue;
            }
            match push_file(&ctx, leadership, &WalName::Segment(seg), &path).await {
                Ok(_) => report.healed.push(seg.name()),
                Err(e) => {
                    tracing::warn!(segment = %seg.name(), error = %e, "gap healing: upload failed");
                    report.unhealable.push(seg.name());
                }
            }
        }
        tracing::debug!(timeline = tli, first = %first.name(), last = %last.name(), switch_point = %Lsn(switch), "gap healing: checked");
    }
    Ok(report)
}

/// Does pg_wal hold a segment of an earlier timeline than its newest history's that was never
/// archived from here (`archive_status/<segment>.ready`)? A cheap check before listing the
/// archive: one directory read.
pub fn holds_unarchived_older_segments(pg_wal: &Path) -> bool {
    let Ok(history) = local_history(pg_wal) else {
        return false;
    };
    if history.entries.is_empty() {
        return false;
    }
    let Ok(rd) = std::fs::read_dir(pg_wal.join("archive_status")) else {
        return false;
    };
    rd.flatten().any(|e| {
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".ready")) else {
            return false;
        };
        matches!(WalName::parse(stem), Ok(WalName::Segment(s)) if s.timeline < history.timeline)
    })
}

/// The start of the oldest segment of an earlier timeline held in pg_wal.
fn oldest_local(pg_wal: &Path, history: &History, seg_size: WalSegSize) -> Option<u64> {
    std::fs::read_dir(pg_wal)
        .ok()?
        .flatten()
        .filter_map(|e| match WalName::parse(e.file_name().to_str()?).ok()? {
            WalName::Segment(s) if s.timeline != history.timeline => Some(s.start_lsn(seg_size)),
            _ => None,
        })
        .min()
}
