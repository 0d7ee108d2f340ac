//! `walkeeper backup-list [QUERY] [--detail] [--json] [--pretty] [--walkeeper-json]`, oldest
//! first:
//! - text: WAL-E's tab-separated columns; QUERY is WAL-E's: `LATEST` or a backup name;
//! - `--json` (and `--pretty` for indented JSON): WAL-G's objects (`backup_name`, `time`,
//!   `wal_file_name`, `storage_name`; with `--detail` also its metadata: `start_time`,
//!   `finish_time`, `date_fmt`, `hostname`, `data_dir`, `pg_version`, `start_lsn`,
//!   `finish_lsn`, `is_permanent`, `system_identifier`, `uncompressed_size`,
//!   `compressed_size`, `user_data`);
//! - `--pretty` alone: WAL-G's human table;
//! - `--walkeeper-json`: walkeeper's own keys (timeline, format, segment size, …).

use std::io::Write;

use crate::archive::Archive;
use crate::backup::{list_backups, BackupInfo, Metadata};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// WAL-E's QUERY: LATEST, or a backup name (`base_<segment>` or `base_<segment>_<offset>`).
    pub query: Option<String>,
    /// Add the stop segment, stop offset and permanence columns.
    #[arg(long)]
    pub detail: bool,
    /// WAL-G's JSON (`backup_name`, `time`, `wal_file_name`, …; more with --detail).
    #[arg(long)]
    pub json: bool,
    /// WAL-G's `--pretty`: a table, or indented JSON with --json.
    #[arg(long)]
    pub pretty: bool,
    /// walkeeper's own JSON: every field it knows of each backup.
    #[arg(long, conflicts_with_all = ["json", "pretty"])]
    pub walkeeper_json: bool,
}

/// WAL-G's storage name for a single storage.
const STORAGE_NAME: &str = "default";

/// WAL-G's `time` format: RFC 3339 with the fraction Go prints (none when zero).
fn go_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// One backup as WAL-G's `backup-list --json` prints it (`BackupTime`, plus
/// `ExtendedMetadataDto` with --detail, read from metadata.json when the backup has one).
fn wal_g_object(b: &BackupInfo, meta: Option<&Metadata>) -> serde_json::Value {
    let mut o = serde_json::json!({
        "backup_name": b.name,
        "time": go_time(&b.last_modified),
        "wal_file_name": b.start_segment,
        "storage_name": STORAGE_NAME,
    });
    let Some(map) = o.as_object_mut() else {
        return o;
    };
    if let Some(m) = meta {
        let zero = chrono::DateTime::<chrono::Utc>::default();
        let detail = serde_json::json!({
            "start_time": go_time(&m.start_time),
            "finish_time": go_time(&if m.finish_time == zero { b.end_time() } else { m.finish_time }),
            "date_fmt": m.date_fmt,
            "hostname": m.hostname,
            "data_dir": m.data_dir,
            "pg_version": m.pg_version,
            "start_lsn": m.start_lsn.0,
            "finish_lsn": m.finish_lsn.0,
            "is_permanent": m.is_permanent,
            "system_identifier": m.system_identifier,
            "uncompressed_size": m.uncompressed_size,
            "compressed_size": m.compressed_size,
        });
        if let Some(d) = detail.as_object() {
            map.extend(d.clone());
        }
        if let Some(u) = &m.user_data {
            map.insert("user_data".into(), u.clone());
        }
    }
    o
}

/// The metadata WAL-G's --detail shows: metadata.json, else what the sentinel says.
async fn detail_of(archive: &Archive, b: &BackupInfo) -> crate::Result<Metadata> {
    let key = format!("{}/{}/metadata.json", crate::backup::BACKUP_FOLDER, b.name);
    let from_sentinel = || Metadata {
        start_time: b.finish_time.unwrap_or(b.last_modified),
        finish_time: b.end_time(),
        date_fmt: "%Y-%m-%dT%H:%M:%S.%fZ".into(),
        pg_version: b.pg_version.unwrap_or(0),
        start_lsn: b.start_lsn,
        finish_lsn: b.finish_lsn,
        is_permanent: b.is_permanent,
        system_identifier: b.system_identifier,
        timeline: b.timeline,
        uncompressed_size: b.expanded_size_bytes.unwrap_or(0),
        compressed_size: b.compressed_size.unwrap_or(0),
        ..Default::default()
    };
    if b.format == crate::backup::Format::WalE {
        return Ok(from_sentinel());
    }
    match archive.store.get_bytes(&key).await {
        Ok(bytes) => Metadata::parse(&key, &bytes),
        Err(crate::Error::NotFound { .. }) => Ok(from_sentinel()),
        Err(e) => Err(e),
    }
}

/// WAL-G's `--pretty` table.
fn pretty_table(rows: &[serde_json::Value], detail: bool) -> String {
    let mut cols: Vec<(&str, &str)> = vec![
        ("backup_name", "Name"),
        ("time", "Modified"),
        ("wal_file_name", "WAL file name"),
        ("storage_name", "Storage name"),
    ];
    if detail {
        cols.extend([
            ("start_time", "Start time"),
            ("finish_time", "Finish time"),
            ("hostname", "Hostname"),
            ("data_dir", "Datadir"),
            ("pg_version", "PG Version"),
            ("start_lsn", "Start LSN"),
            ("finish_lsn", "Finish LSN"),
            ("is_permanent", "Permanent"),
        ]);
    }
    let cell = |v: &serde_json::Value, k: &str| match &v[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut table: Vec<Vec<String>> = vec![std::iter::once("#".to_string())
        .chain(cols.iter().map(|(_, h)| h.to_string()))
        .collect()];
    for (i, r) in rows.iter().enumerate() {
        table.push(
            std::iter::once(i.to_string())
                .chain(cols.iter().map(|(k, _)| cell(r, k)))
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..=cols.len())
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let rule = format!(
        "+{}+\n",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let mut out = rule.clone();
    for (i, r) in table.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!(" {c:<w$} "))
            .collect();
        out.push_str(&format!("|{}|\n", line.join("|")));
        if i == 0 {
            out.push_str(&rule);
        }
    }
    out.push_str(&rule);
    out
}

/// WAL-E's query: LATEST, a backup name (listed if it exists), anything else refused.
fn select(backups: Vec<BackupInfo>, query: Option<&str>) -> crate::Result<Vec<BackupInfo>> {
    match query {
        None => Ok(backups),
        Some("LATEST") => Ok(backups.into_iter().last().into_iter().collect()),
        Some(name) if crate::backup::is_backup_name(name) => {
            Ok(backups.into_iter().filter(|b| b.name == name).collect())
        }
        Some(other) => Err(crate::Error::BadInput(format!(
            "invalid backup query {other:?}: give LATEST or a backup name (base_<segment> or \
             base_<segment>_<offset>)"
        ))),
    }
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        let archive = Archive::open(cli.settings()?)?;
        let backups = select(list_backups(&archive.store).await?, args.query.as_deref())?;
        let text = if args.walkeeper_json {
            serde_json::to_string_pretty(&backups).unwrap_or_default() + "\n"
        } else if args.json || args.pretty {
            let mut rows = Vec::new();
            for b in &backups {
                let meta = match args.detail {
                    true => Some(detail_of(&archive, b).await?),
                    false => None,
                };
                rows.push(wal_g_object(b, meta.as_ref()));
            }
            match (args.json, args.pretty) {
                (true, true) => serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n",
                (true, false) => serde_json::to_string(&rows).unwrap_or_default() + "\n",
                _ => pretty_table(&rows, args.detail),
            }
        } else {
            crate::backup::list_text::render(&backups, args.detail)
        };
        std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| crate::Error::io("stdout", e))
    }
    .await;
    super::exit("backup-list", result)
}
