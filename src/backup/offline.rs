//! `backup-push --while-offline` (WAL-E's option): a base backup of a cleanly stopped cluster.
//!
//! No connection and no backup mode: the backup starts at the REDO point of the shutdown
//! checkpoint that pg_control records, and ends at that checkpoint (or, for a standby stopped in
//! recovery, at its minimum recovery point). There is no backup_label: a restored copy starts
//! from pg_control's checkpoint, as the stopped server would have. The WAL segments from the REDO
//! point to that end are stored with the backup (its last partition), because a stopped server has
//! not archived the segment its shutdown checkpoint is in.
//!
//! pg_control is read with `pg_controldata` (WALKEEPER_PG_BIN_DIR, else
//! `/usr/lib/postgresql/<PG_VERSION>/bin`, else PATH), which checks its CRC.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use chrono::Utc;

use super::push::{append_named, hostname, to_json, upload_body, PushOptions};
use super::{files, parts_prefix, sentinel_key, Metadata, Sentinel, BACKUP_FOLDER};
use crate::archive::Archive;
use crate::codec;
use crate::config::Vars;
use crate::error::{Error, Result};
use crate::wal::names::{SegmentId, WalName, WalSegSize};
use crate::wal::Lsn;

/// What a backup needs from pg_control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub state: String,
    pub system_identifier: u64,
    pub checkpoint: Lsn,
    pub redo: Lsn,
    pub timeline: u32,
    pub min_recovery: Lsn,
    pub min_recovery_timeline: u32,
    pub seg_size: WalSegSize,
    /// `Data page checksum version` is not 0 (absent: no checksums).
    pub data_checksums: bool,
    /// `Database block size` (absent: 8192).
    pub block_size: u64,
}

/// Parses `pg_controldata` output (LC_ALL=C).
pub fn parse_controldata(text: &str) -> Result<Control> {
    let field = |label: &str| -> Result<&str> {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == label).then(|| v.trim())
            })
            .ok_or_else(|| Error::BadInput(format!("pg_controldata: no {label:?} line")))
    };
    let num = |label: &str| -> Result<u64> {
        let v = field(label)?;
        v.parse()
            .map_err(|_| Error::BadInput(format!("pg_controldata: {label} {v:?} is not a number")))
    };
    let lsn = |label: &str| -> Result<Lsn> { Lsn::parse(field(label)?) };
    Ok(Control {
        state: field("Database cluster state")?.to_string(),
        system_identifier: num("Database system identifier")?,
        checkpoint: lsn("Latest checkpoint location")?,
        redo: lsn("Latest checkpoint's REDO location")?,
        timeline: num("Latest checkpoint's TimeLineID")? as u32,
        min_recovery: lsn("Minimum recovery ending location")?,
        min_recovery_timeline: num("Min recovery ending loc's timeline")? as u32,
        seg_size: WalSegSize::new(num("Bytes per WAL segment")?)?,
        data_checksums: field("Data page checksum version").is_ok_and(|v| v != "0"),
        block_size: num("Database block size").unwrap_or(8192),
    })
}

/// `15.4` or `9.6.3` (from `pg_controldata --version`) as server_version_num.
fn version_num(text: &str) -> Option<i64> {
    let v = text
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))?;
    let parts: Vec<i64> = v
        .split('.')
        .map(|p| p.trim_end_matches(|c: char| !c.is_ascii_digit()).parse())
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    match parts.as_slice() {
        [major, minor] if *major >= 10 => Some(major * 10000 + minor),
        [major, minor, patch, ..] => Some(major * 10000 + minor * 100 + patch),
        _ => None,
    }
}

/// The PostgreSQL program `name`, for the cluster in `pgdata`.
fn pg_program(name: &str, vars: &Vars, pgdata: &Path) -> PathBuf {
    if let Some(dir) = vars.get("WALKEEPER_PG_BIN_DIR") {
        return Path::new(dir).join(name);
    }
    if let Ok(major) = std::fs::read_to_string(pgdata.join("PG_VERSION")) {
        let p = Path::new("/usr/lib/postgresql")
            .join(major.trim())
            .join("bin")
            .join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn run(program: &Path, args: &[&std::ffi::OsStr]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| Error::io(program, e))?;
    if !out.status.success() {
        return Err(Error::BadInput(format!(
            "{} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads pg_control and refuses a cluster that is running or was not stopped cleanly.
pub fn read_control(vars: &Vars, pgdata: &Path) -> Result<(Control, i64)> {
    if pgdata.join("postmaster.pid").exists() {
        return Err(Error::BadInput(format!(
            "--while-offline: {} has a postmaster.pid: the server is running (stop it first; \
             without --while-offline, backup-push backs up a running server)",
            pgdata.display()
        )));
    }
    let program = pg_program("pg_controldata", vars, pgdata);
    let text = run(&program, &["-D".as_ref(), pgdata.as_os_str()])?;
    let control = parse_controldata(&text)?;
    if control.state != "shut down" && control.state != "shut down in recovery" {
        return Err(Error::BadInput(format!(
            "--while-offline: pg_control of {} says {:?}, not \"shut down\": only a cleanly \
             stopped cluster gives a consistent offline backup (start it and stop it cleanly)",
            pgdata.display(),
            control.state
        )));
    }
    let version = run(&program, &["--version".as_ref()])?;
    let version = version_num(&version).ok_or_else(|| {
        Error::BadInput(format!("{}: no version in {version:?}", program.display()))
    })?;
    Ok((control, version))
}

/// The segments a restored copy needs to start: from the REDO point's through the end's (and the
/// next one, when pg_wal has it, for a record that crosses into it).
fn needed_segments(c: &Control, end: Lsn) -> Vec<SegmentId> {
    let first = c.redo.segment(c.timeline, c.seg_size);
    let last = Lsn(end.0 + 8192).segment(c.timeline, c.seg_size);
    let (a, b) = (first.segno(c.seg_size), last.segno(c.seg_size));
    (a..=b)
        .map(|n| SegmentId::from_segno(c.timeline, n, c.seg_size))
        .collect()
}

// `..Default::default()` keeps the sentinel and metadata literals valid when fields are added.
#[allow(clippy::needless_update)]
pub async fn backup_push_offline(archive: Arc<Archive>, opts: PushOptions) -> Result<Sentinel> {
    let started_at = Utc::now();
    if opts.delta.from_name.is_some() || opts.delta.from_user_data.is_some() {
        return Err(Error::BadInput(
            "--while-offline takes full backups only; drop --delta-from-name / \
             --delta-from-user-data"
                .into(),
        ));
    }
    if opts.delta.max_steps > 0 && !opts.delta.full {
        tracing::info!(
            "--while-offline takes a full backup (WALG_DELTA_MAX_STEPS applies to online backups)"
        );
    }
    let pgdata = opts
        .pgdata
        .canonicalize()
        .map_err(|e| Error::BadInput(format!("data directory {}: {e}", opts.pgdata.display())))?;
    let (control, version) = read_control(&archive.settings.vars, &pgdata)?;
    if control.min_recovery.0 != 0
        && control.min_recovery_timeline != 0
        && control.min_recovery_timeline != control.timeline
    {
        return Err(Error::BadInput(format!(
            "--while-offline: the standby stopped with its minimum recovery point on timeline {} \
             but its checkpoint on {}; start it until it passes a restartpoint, then stop it",
            control.min_recovery_timeline, control.timeline
        )));
    }
    let finish_lsn = control.checkpoint.max(control.min_recovery);
    let timeline = control.timeline;
    let name = format!(
        "base_{}",
        control.redo.segment(timeline, control.seg_size).name()
    );
    tracing::info!(backup = name, redo = %control.redo, checkpoint = %control.checkpoint, timeline, "offline backup started");

    // The WAL a restored copy starts from, checked before anything is uploaded.
    let pg_wal = pgdata.join("pg_wal");
    let segments = needed_segments(&control, finish_lsn);
    let mut wal_files = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let path = pg_wal.join(seg.name());
        if path.exists() {
            wal_files.push((format!("pg_wal/{}", seg.name()), path));
        } else if i + 1 < segments.len() {
            return Err(Error::BadInput(format!(
                "--while-offline: {} is missing, but a restored copy needs it to start",
                path.display()
            )));
        }
    }
    if let Ok(rd) = std::fs::read_dir(&pg_wal) {
        let mut history: Vec<_> = rd
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                matches!(WalName::parse(&n), Ok(WalName::History(_)))
                    .then(|| (format!("pg_wal/{n}"), e.path()))
            })
            .collect();
        history.sort();
        wal_files.extend(history);
    }

    // A stopped cluster changes no page: every page is judged.
    let verify = super::push::verification(
        &opts,
        control.data_checksums,
        control.block_size as i64,
        Lsn(u64::MAX),
    );
    let mut body = upload_body(&archive, &opts, &pgdata, &name, verify, None).await?;
    // The WAL goes into one more partition, recorded as WAL-G records every partition.
    let compression = archive.settings.compression;
    let wal_part = format!("part_{:03}.tar.{}", body.partitions + 1, compression.ext());
    let mut entries = Vec::new();
    for (rel, path) in &wal_files {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let mtime: chrono::DateTime<Utc> = meta
            .modified()
            .map(chrono::DateTime::<Utc>::from)
            .unwrap_or_else(|_| Utc::now());
        body.uncompressed += meta.len();
        body.files.files.insert(
            files::entry_name(rel),
            files::FileDescription::full(mtime, meta.len()),
        );
        entries.push((files::entry_name(rel), path.clone()));
    }
    body.files.tar_file_sets.insert(
        wal_part.clone(),
        entries.iter().map(|(n, _)| n.clone()).collect(),
    );
    let arch = archive.clone();
    let entries = Arc::new(entries);
    let compressed_wal = archive
        .store
        .put_stream(
            &format!("{}/{wal_part}", parts_prefix(&name)),
            move |sink| {
                let entries = entries.clone();
                codec::encode_with(sink, compression, arch.encryption.as_ref(), |w| {
                    let mut tar = tar::Builder::new(w);
                    tar.mode(tar::HeaderMode::Complete);
                    for (entry, path) in entries.iter() {
                        let file = std::fs::File::open(path)?;
                        let meta = file.metadata()?;
                        let mut h = tar::Header::new_gnu();
                        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
                        append_named(&mut tar, &mut h, entry, file)?;
                    }
                    tar.finish()
                })
                .map(|_| ())
            },
        )
        .await?;
    body.partitions += 1;
    body.compressed += compressed_wal;
    let (uncompressed, compressed, partitions) =
        (body.uncompressed, body.compressed, body.partitions);
    let spec = body.spec.clone();

    let finished_at = Utc::now();
    let hostname = hostname();
    let sentinel = Sentinel {
        start_lsn: control.redo,
        timeline,
        finish_lsn,
        system_identifier: Some(control.system_identifier),
        pg_version: version,
        uncompressed_size: uncompressed as i64,
        compressed_size: compressed as i64,
        spec: Some(spec),
        version: 2,
        start_time: Some(started_at),
        finish_time: Some(finished_at),
        date_fmt: "%Y-%m-%dT%H:%M:%S.%fZ".into(),
        hostname: hostname.clone(),
        data_dir: pgdata.display().to_string(),
        is_permanent: opts.permanent,
        tar_partitions: Some(partitions),
        wal_segment_size: Some(control.seg_size),
        user_data: opts.user_data.clone(),
        page_checksums: verify.map(|_| body.checksums.clone()),
        ..Default::default()
    };
    let metadata = Metadata {
        start_time: started_at,
        finish_time: finished_at,
        date_fmt: sentinel.date_fmt.clone(),
        hostname,
        data_dir: sentinel.data_dir.clone(),
        pg_version: version,
        start_lsn: control.redo,
        finish_lsn,
        is_permanent: opts.permanent,
        system_identifier: Some(control.system_identifier),
        timeline,
        uncompressed_size: sentinel.uncompressed_size,
        compressed_size: sentinel.compressed_size,
        user_data: opts.user_data.clone(),
        ..Default::default()
    };
    archive
        .store
        .put_bytes(
            &format!("{BACKUP_FOLDER}/{name}/metadata.json"),
            to_json(&metadata)?,
        )
        .await?;
    // WAL-G's backup-fetch requires it from a sentinel of version 2.
    let files_key = files::files_metadata_key(&name);
    archive
        .store
        .put_bytes(
            &files_key,
            serde_json::to_vec(&body.files)
                .map(bytes::Bytes::from)
                .map_err(|e| Error::Corrupt {
                    key: files_key.clone(),
                    msg: e.to_string(),
                })?,
        )
        .await?;
    archive
        .store
        .put_bytes(&sentinel_key(&name), to_json(&sentinel)?)
        .await?;
    tracing::info!(backup = name, finish_lsn = %finish_lsn, uncompressed, "offline backup complete");
    Ok(sentinel)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7312345678901234567
Database cluster state:               shut down
pg_control last modified:             Thu Dec  3 15:00:00 2026
Latest checkpoint location:           0/3000028
Latest checkpoint's REDO location:    0/3000028
Latest checkpoint's REDO WAL file:    000000010000000000000003
Latest checkpoint's TimeLineID:       1
Minimum recovery ending location:     0/0
Min recovery ending loc's timeline:   0
Bytes per WAL segment:                16777216
";

    #[test]
    fn pg_controldata_output_gives_the_checkpoint_and_state() {
        let c = parse_controldata(SAMPLE).unwrap();
        assert_eq!(c.state, "shut down");
        assert_eq!(c.system_identifier, 7312345678901234567);
        assert_eq!((c.checkpoint, c.redo), (Lsn(0x3000028), Lsn(0x3000028)));
        assert_eq!(c.timeline, 1);
        let segs = needed_segments(&c, c.checkpoint);
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].name(), "000000010000000000000003");
        let err = parse_controldata("Database cluster state: in production\n").unwrap_err();
        assert!(
            err.to_string().contains("Database system identifier"),
            "{err}"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_controldata_text_is_parsed_or_refused_never_a_panic(
            lines in proptest::collection::vec(("[A-Za-z' ]{0,40}", "[ -~]{0,30}"), 0..20)
        ) {
            let text: String = lines.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
            let _ = parse_controldata(&text);
            let _ = version_num(&text);
        }
    }

    #[test]
    fn versions_map_to_server_version_num() {
        assert_eq!(
            version_num("pg_controldata (PostgreSQL) 15.4 (Debian 15.4-2.pgdg120+1)"),
            Some(150004)
        );
        assert_eq!(
            version_num("pg_controldata (PostgreSQL) 9.6.3"),
            Some(90603)
        );
    }
}
