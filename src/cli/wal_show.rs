//! `walkeeper wal-show [--detailed-json] [--without-backups]` (WAL-G): the archive's timelines,
//! one row each: its parent and switch point (from its `.history` file), the first and last
//! archived segment, how many segments the range spans and holds, and `OK` or `LOST_SEGMENTS`;
//! with `--detailed-json`, WAL-G's JSON with the missing segment names and the backups on each
//! timeline. `--without-backups` leaves the backups (column and field) out, as WAL-G. Exit 0 whatever it finds (as WAL-G); `wal-verify` is the check that fails.

use std::collections::{BTreeMap, BTreeSet};

use crate::archive::Archive;
use crate::backup::{list_backups, DEFAULT_SEG_SIZE};
use crate::wal::history;
use crate::wal::names::{SegmentId, WalName, WAL_FOLDER};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// WAL-G's JSON, with missing segments and backups per timeline.
    #[arg(long)]
    pub detailed_json: bool,
    /// Leave the backups of each timeline out.
    #[arg(long)]
    pub without_backups: bool,
}

#[derive(Debug, serde::Serialize)]
struct Timeline {
    id: u32,
    parent_id: u32,
    switch_point_lsn: u64,
    start_segment: String,
    end_segment: String,
    segment_range_size: u64,
    segments_count: u64,
    missing_segments: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backups: Option<Vec<serde_json::Value>>,
    status: &'static str,
}

async fn timelines(archive: &Archive) -> crate::Result<Vec<Timeline>> {
    let backups = list_backups(&archive.store).await?;
    let seg_size = backups
        .first()
        .map(|b| b.seg_size)
        .unwrap_or(DEFAULT_SEG_SIZE);
    let mut segs: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut histories: BTreeMap<u32, String> = BTreeMap::new();
    for (key, _) in archive.store.list(WAL_FOLDER).await? {
        let file = key.rsplit('/').next().unwrap_or("");
        let base = file.rsplit_once('.').map(|(b, _)| b).unwrap_or(file);
        match WalName::parse(base) {
            Ok(WalName::Segment(s)) => {
                segs.entry(s.timeline)
                    .or_default()
                    .insert(s.segno(seg_size));
            }
            Ok(WalName::History(t)) => {
                histories.insert(t, key.clone());
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (tli, nos) in &segs {
        let (Some(first), Some(last)) = (nos.first(), nos.last()) else {
            continue;
        };
        let (parent_id, switch_point_lsn) = match histories.get(tli) {
            Some(key) => {
                let text = history::read_text(archive, key).await?;
                let h = history::History::from_text(*tli, key, &text)?;
                h.entries.last().copied().unwrap_or((0, 0))
            }
            None => (0, 0),
        };
        let missing: Vec<String> = (*first..=*last)
            .filter(|n| !nos.contains(n))
            .map(|n| SegmentId::from_segno(*tli, n, seg_size).name())
            .collect();
        out.push(Timeline {
            id: *tli,
            parent_id,
            switch_point_lsn,
            start_segment: SegmentId::from_segno(*tli, *first, seg_size).name(),
            end_segment: SegmentId::from_segno(*tli, *last, seg_size).name(),
            segment_range_size: last - first + 1,
            segments_count: nos.len() as u64,
            status: if missing.is_empty() {
                "OK"
            } else {
                "LOST_SEGMENTS"
            },
            missing_segments: missing,
            backups: Some(backups
                .iter()
                .filter(|b| b.timeline == *tli)
                .map(|b| {
                    serde_json::json!({
                        "backup_name": b.name,
                        "time": b.last_modified.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                        "wal_file_name": b.start_segment,
                        "start_lsn": b.start_lsn.0,
                        "finish_lsn": b.finish_lsn.0,
                        "is_permanent": b.is_permanent,
                    })
                })
                .collect()),
        });
    }
    Ok(out)
}

fn table(rows: &[Timeline]) -> String {
    let head = [
        "TLI",
        "PARENT TLI",
        "SWITCHPOINT LSN",
        "START SEGMENT",
        "END SEGMENT",
        "SEGMENT RANGE",
        "SEGMENTS COUNT",
        "STATUS",
        "BACKUPS COUNT",
    ];
    let columns = if rows.iter().any(|t| t.backups.is_none()) {
        head.len() - 1
    } else {
        head.len()
    };
    let head = &head[..columns];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.parent_id.to_string(),
                crate::wal::Lsn(t.switch_point_lsn).to_string(),
                t.start_segment.clone(),
                t.end_segment.clone(),
                t.segment_range_size.to_string(),
                t.segments_count.to_string(),
                t.status.to_string(),
                t.backups.as_ref().map_or(0, Vec::len).to_string(),
            ]
            .into_iter()
            .take(columns)
            .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..head.len())
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].len())
                .chain([head[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule = format!(
        "+{}+\n",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let line = |r: &[String]| {
        let r: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!(" {c:>w$} "))
            .collect();
        format!("|{}|\n", r.join("|"))
    };
    let mut out = rule.clone();
    out.push_str(&line(
        &head.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    ));
    out.push_str(&rule);
    for r in &cells {
        out.push_str(&line(r));
    }
    out.push_str(&rule);
    out
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        let archive = Archive::open(cli.settings()?)?;
        let mut rows = timelines(&archive).await?;
        if args.without_backups {
            for t in &mut rows {
                t.backups = None;
            }
        }
        Ok::<_, crate::Error>(rows)
    }
    .await;
    match result {
        Ok(rows) => {
            if args.detailed_json {
                println!("{}", serde_json::to_string(&rows).unwrap_or_default());
            } else {
                print!("{}", table(&rows));
            }
            0
        }
        Err(e) => {
            tracing::error!("wal-show failed: {e}");
            e.exit_code()
        }
    }
}
