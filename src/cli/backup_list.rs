//! `walkeeper backup-list [--detail] [--json]`: WAL-E's columns, oldest first.

use std::io::Write;

use crate::archive::Archive;
use crate::backup::{list_backups, BackupInfo};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Add the stop segment, stop offset and permanence columns.
    #[arg(long)]
    pub detail: bool,
    /// Print the full metadata as JSON.
    #[arg(long)]
    pub json: bool,
}

/// WAL-E's tab-separated backup-list text, with its header line.
pub fn render(backups: &[BackupInfo], detail: bool) -> String {
    let mut out = String::from(
        "name\tlast_modified\texpanded_size_bytes\twal_segment_backup_start\twal_segment_offset_backup_start",
    );
    if detail {
        out.push_str("\twal_segment_backup_stop\twal_segment_offset_backup_stop\tis_permanent");
    }
    out.push('\n');
    for b in backups {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{:08}",
            b.name,
            b.end_time()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            b.expanded_size_bytes
                .map(|s| s.to_string())
                .unwrap_or_default(),
            b.start_segment,
            b.start_offset
        ));
        if detail {
            out.push_str(&format!(
                "\t{}\t{:08}\t{}",
                b.stop_segment, b.stop_offset, b.is_permanent
            ));
        }
        out.push('\n');
    }
    out
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        let archive = Archive::open(cli.settings()?)?;
        let backups = list_backups(&archive.store).await?;
        let text = if args.json {
            serde_json::to_string_pretty(&backups).unwrap_or_default() + "\n"
        } else {
            render(&backups, args.detail)
        };
        std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| crate::Error::io("stdout", e))
    }
    .await;
    super::exit("backup-list", result)
}
