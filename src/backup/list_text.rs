//! WAL-E's `backup-list` text: tab-separated columns under a header line, oldest first. The
//! command prints it, and the agent publishes it into etcd for Patroni's tooling.

use super::BackupInfo;

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
