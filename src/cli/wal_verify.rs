//! `walkeeper wal-verify [integrity] [timeline] [--json]`: exit 0 when the archive has no gap
//! and no WAL name stored under two codecs with different content, 1 otherwise. Identical copies
//! are reported and accepted.
//!
//! Without checks named, walkeeper's one-line summary, then each missing segment, duplicate and
//! conflict. With WAL-G's check names, WAL-G's report
//! (`[wal-verify] integrity check status: OK`, its table, or with `--json` its JSON):
//! - integrity: every segment from the oldest backup's start (segment 1 without backups) to the
//!   one before the running server's current segment (PG* variables, as backup-push connects),
//!   or to the newest archived one when no server answers, following that timeline's history,
//!   as runs of FOUND, MISSING_DELAYED, MISSING_UPLOADING or MISSING_LOST segments. OK without
//!   missing segments, WARNING with only delayed or uploading ones, FAILURE with a lost one (or
//!   conflicting copies of one name);
//! - timeline: the running server's timeline against the highest timeline in the archive: OK
//!   when equal, FAILURE when not, WARNING when the server cannot be asked.
//!
//! Exit 1 when a check FAILS (WAL-G exits 0 and leaves it to the report), 0 otherwise.

use crate::archive::Archive;
use crate::backup::verify::{verify, verify_with, Report, Scan, Status};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// WAL-G's checks: `integrity`, `timeline` (either or both).
    #[arg(value_parser = ["integrity", "timeline"])]
    pub checks: Vec<String>,
    /// WAL-G's JSON report.
    #[arg(long)]
    pub json: bool,
}

/// The running server's timeline and current LSN (the last received one on a standby), if it
/// can be asked.
async fn current_position(archive: &Archive) -> Option<(u32, u64)> {
    let cfg = crate::backup::pg::config(None, &archive.settings.vars).ok()?;
    let client = match crate::backup::pg::connect(&cfg).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("wal-verify: no server to ask for the current segment ({e}); checking up to the newest archived one");
            return None;
        }
    };
    let row = client
        .query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
                    ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
                    (SELECT timeline_id::bigint FROM pg_control_checkpoint()), \
                    (CASE WHEN pg_is_in_recovery() \
                          THEN COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
                          ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::bigint",
            &[],
        )
        .await
        .map_err(|e| tracing::warn!("wal-verify: cannot read the server's position: {e}"))
        .ok()?;
    let walfile: Option<String> = row.get(0);
    let checkpoint_tli: i64 = row.get(1);
    let lsn: Option<i64> = row.get(2);
    // A primary's timeline from its current WAL file: pg_control lags until a checkpoint.
    let tli = walfile
        .and_then(|f| u32::from_str_radix(f.get(..8)?, 16).ok())
        .or_else(|| u32::try_from(checkpoint_tli).ok())?;
    Some((tli, u64::try_from(lsn?).ok()?))
}

/// WAL-G's window of segments that may still be uploading: WALG_UPLOAD_CONCURRENCY, else the
/// segment archive_command is pushing plus wal-push's look-ahead.
fn uploading_window(archive: &Archive) -> u64 {
    let s = &archive.settings;
    s.backup.upload_concurrency.unwrap_or(s.push_lookahead + 1) as u64
}

/// The integrity check's status: FAILURE on a lost segment, WARNING on delayed or uploading
/// ones.
fn integrity_status(r: &Report) -> &'static str {
    let conflict = r.duplicates.iter().any(|d| d.differs());
    if conflict || r.runs.iter().any(|x| x.status == Status::MissingLost) {
        "FAILURE"
    } else if r.runs.iter().any(|x| x.status != Status::Found) {
        "WARNING"
    } else {
        "OK"
    }
}

fn table(r: &Report) -> String {
    let head = ["TLI", "START", "END", "SEGMENTS COUNT", "STATUS"];
    let rows: Vec<[String; 5]> = r
        .runs
        .iter()
        .map(|run| {
            [
                run.timeline.to_string(),
                run.first.clone(),
                run.last.clone(),
                run.count.to_string(),
                run.status.as_str().to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            rows.iter()
                .map(|row| row[c].len())
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
    // As WAL-G's go-pretty table: headers to the left, names to the left, numbers and the
    // status (an enum, a number to go-pretty) to the right.
    let line = |cells: Vec<String>, header: bool| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if header || i == 1 || i == 2 {
                    format!(" {c:<w$} ")
                } else {
                    format!(" {c:>w$} ")
                }
            })
            .collect();
        format!("|{}|\n", cells.join("|"))
    };
    let mut out = rule.clone();
    out.push_str(&line(head.iter().map(|h| h.to_string()).collect(), true));
    out.push_str(&rule);
    for row in rows {
        out.push_str(&line(row.to_vec(), false));
    }
    out.push_str(&rule);
    out
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        let archive = Archive::open(cli.settings()?)?;
        if args.checks.is_empty() && !args.json {
            return Ok((verify(&archive).await?, None));
        }
        let position = current_position(&archive).await;
        let delayed = match archive.settings.vars.get("WALG_INTEGRITY_MAX_DELAYED_WALS") {
            None => 0,
            Some(v) => v.trim().parse().map_err(|_| {
                crate::Error::Config(format!(
                    "WALG_INTEGRITY_MAX_DELAYED_WALS={v:?} is not a number of segments"
                ))
            })?,
        };
        let scan = Scan {
            tip: position,
            delayed,
            uploading: uploading_window(&archive),
            from_one_without_backups: true,
        };
        let report = verify_with(&archive, &scan).await?;
        Ok::<_, crate::Error>((report, Some(position.map(|(t, _)| t))))
    }
    .await;
    let (r, current) = match result {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("wal-verify failed: {e}");
            return e.exit_code();
        }
    };
    if args.checks.is_empty() && !args.json {
        println!(
            "timeline {} segments {}..{}: {} checked, {} missing",
            r.timeline,
            r.first.as_deref().unwrap_or("-"),
            r.last.as_deref().unwrap_or("-"),
            r.checked,
            r.missing.len()
        );
        for m in &r.missing {
            println!("missing {m}");
        }
        for d in &r.duplicates {
            let verdict = if d.differs() { "conflict" } else { "duplicate" };
            let list: Vec<String> = d.copies.iter().map(|(k, x)| format!("{k} ({x})")).collect();
            println!("{verdict} {}: {}", d.name, list.join(", "));
        }
        return i32::from(!r.is_clean());
    }
    let checks: Vec<&str> = if args.checks.is_empty() {
        vec!["integrity", "timeline"]
    } else {
        args.checks.iter().map(String::as_str).collect()
    };
    // A name under two codecs with different content fails integrity too (wal-fetch refuses it).
    let integrity_status = integrity_status(&r);
    let gap = integrity_status == "FAILURE";
    let (timeline_status, current_id) = match current.flatten() {
        None => ("WARNING", 0),
        Some(_) if r.timeline == 0 => ("WARNING", 0),
        Some(c) if c == r.timeline => ("OK", c),
        Some(c) => ("FAILURE", c),
    };
    let mut failed = false;
    if args.json {
        let mut out = serde_json::Map::new();
        for c in &checks {
            if *c == "integrity" {
                failed |= gap;
                let details: Vec<serde_json::Value> = r
                    .runs
                    .iter()
                    .map(|run| {
                        serde_json::json!({
                            "timeline_id": run.timeline,
                            "start_segment": run.first,
                            "end_segment": run.last,
                            "segments_count": run.count,
                            "status": run.status.as_str(),
                        })
                    })
                    .collect();
                out.insert(
                    "integrity".into(),
                    serde_json::json!({"status": integrity_status, "details": details}),
                );
            } else {
                failed |= timeline_status == "FAILURE";
                out.insert(
                    "timeline".into(),
                    serde_json::json!({"status": timeline_status, "details": {
                        "current_timeline_id": current_id,
                        "highest_storage_timeline_id": r.timeline,
                    }}),
                );
            }
        }
        println!("{}", serde_json::Value::Object(out));
    } else {
        for c in &checks {
            if *c == "integrity" {
                failed |= gap;
                println!("[wal-verify] integrity check status: {integrity_status}");
                println!("[wal-verify] integrity check details:");
                print!("{}", table(&r));
            } else {
                failed |= timeline_status == "FAILURE";
                println!("[wal-verify] timeline check status: {timeline_status}");
                println!("[wal-verify] timeline check details:");
                println!("Highest timeline found in storage: {}", r.timeline);
                println!("Current cluster timeline: {current_id}");
            }
        }
    }
    i32::from(failed)
}
