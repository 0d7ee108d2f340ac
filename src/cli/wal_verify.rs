//! `walkeeper wal-verify [integrity] [timeline] [--json]`: exit 0 when the archive has no gap
//! and no WAL name stored under two codecs with different content, 1 otherwise. Identical copies
//! are reported and accepted.
//!
//! Without checks named, walkeeper's one-line summary, then each missing segment, duplicate and
//! conflict. With WAL-G's check names, WAL-G's report
//! (`[wal-verify] integrity check status: OK`, its table, or with `--json` its JSON):
//! - integrity: every segment from the oldest backup's start to the newest archived one,
//!   following the newest timeline's history, as runs of FOUND or MISSING_LOST segments;
//! - timeline: the running server's timeline (PG* variables, as backup-push connects) against
//!   the highest timeline in the archive: OK when equal, FAILURE when not, WARNING when the
//!   server cannot be asked.

use crate::archive::Archive;
use crate::backup::verify::{verify, Report};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// WAL-G's checks: `integrity`, `timeline` (either or both).
    #[arg(value_parser = ["integrity", "timeline"])]
    pub checks: Vec<String>,
    /// WAL-G's JSON report.
    #[arg(long)]
    pub json: bool,
}

/// The running server's timeline, if it can be asked.
async fn current_timeline(archive: &Archive) -> Option<u32> {
    let cfg = crate::backup::pg::config(None, &archive.settings.vars).ok()?;
    let client = crate::backup::pg::connect(&cfg).await.ok()?;
    let row = client
        .query_one(
            "SELECT timeline_id::bigint FROM pg_control_checkpoint()",
            &[],
        )
        .await
        .ok()?;
    let t: i64 = row.get(0);
    u32::try_from(t).ok()
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
                status_of(run.found).to_string(),
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
    let line = |cells: Vec<String>| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!(" {c:>w$} "))
            .collect();
        format!("|{}|\n", cells.join("|"))
    };
    let mut out = rule.clone();
    out.push_str(&line(head.iter().map(|h| h.to_string()).collect()));
    out.push_str(&rule);
    for row in rows {
        out.push_str(&line(row.to_vec()));
    }
    out.push_str(&rule);
    out
}

fn status_of(found: bool) -> &'static str {
    if found {
        "FOUND"
    } else {
        "MISSING_LOST"
    }
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        let archive = Archive::open(cli.settings()?)?;
        let report = verify(&archive).await?;
        let current = if args.checks.iter().any(|c| c == "timeline") {
            Some(current_timeline(&archive).await)
        } else {
            None
        };
        Ok::<_, crate::Error>((report, current))
    }
    .await;
    let (r, current) = match result {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("wal-verify failed: {e}");
            return e.exit_code();
        }
    };
    let gap = !r.missing.is_empty();
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
    let gap = gap || !r.is_clean();
    let integrity_status = if gap { "FAILURE" } else { "OK" };
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
                            "status": status_of(run.found),
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
