//! WAL-G's base backups restore with walkeeper, and walkeeper's with WAL-G's rules.
//!
//! WAL-G itself is not installable here (no Debian or PyPI package), so the test packs a real
//! PostgreSQL 15 base backup (a non-exclusive pg_backup_start/stop on a running server) exactly
//! the way WAL-G's backup-push lays it out (see DESIGN.md, "WAL-G's backups"): every entry named
//! `/` + its path relative to the data directory, USTAR headers as Go's archive/tar writes them,
//! WAL-G's exclusions, partitions cut after the size threshold with the numbers WAL-G's tarball
//! queue gives (pg_control's tar takes one, and the label files go in the partition after it),
//! compressed by the lz4 and zstd tools, and WAL-G's sentinel, metadata.json and
//! files_metadata.json written from structures with WAL-G's field names and types.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use support::*;

/// A primary archiving WAL through walkeeper (WAL-G's `wal_005/<name>.lz4` layout).
struct Cluster {
    scratch: Scratch,
    archive: PathBuf,
    env: PathBuf,
    primary: Pg,
}

impl Cluster {
    fn start(extra_env: &[(&str, &str)]) -> Cluster {
        let scratch = Scratch::new();
        let backend = Backend::file(&scratch);
        let env = backend.envdir(&scratch, extra_env);
        let Backend::File(archive) = backend else {
            unreachable!()
        };
        let wk = walkeeper();
        let mut primary = Pg::init(
            &scratch,
            "primary",
            &format!(
                "wal_level = replica\narchive_mode = on\narchive_command = '{wk} --envdir {env} wal-push %p'\n",
                env = env.display()
            ),
        );
        primary.start();
        Cluster {
            scratch,
            archive,
            env,
            primary,
        }
    }

    fn walkeeper(&self, args: &[&str]) -> Output {
        let mut c = as_postgres(walkeeper());
        c.arg("--envdir").arg(&self.env).args(args);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PGHOST", &self.primary.sock)
            .env("PGPORT", self.primary.port.to_string())
            .env("PGUSER", "postgres")
            .current_dir(self.scratch.path());
        c.output().unwrap()
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// Starts a server on a restored data directory and waits for the end of recovery.
    fn start_restored(&self, name: &str, data: PathBuf, with_restore_command: bool) -> Pg {
        chown_pg_recursive(&data);
        let wk = walkeeper();
        let restore = if with_restore_command {
            format!(
                "restore_command = '{wk} --envdir {env} wal-fetch %f %p'\n",
                env = self.env.display()
            )
        } else {
            String::new()
        };
        let mut pg = Pg::configure(
            &self.scratch,
            name,
            data,
            &format!("archive_mode = off\n{restore}"),
        );
        pg.start();
        wait_until("recovery to finish", Duration::from_secs(300), || {
            pg.psql("SELECT pg_is_in_recovery()") == "f"
        });
        pg
    }
}

// ---- WAL-G's structures, with its JSON field names and types ----

/// WAL-G's `BackupSentinelDtoV2` (`BackupSentinelDto` plus the V2 fields).
#[derive(Debug, Serialize, Deserialize)]
struct WalgSentinel {
    #[serde(rename = "LSN")]
    lsn: u64,
    #[serde(rename = "Timeline")]
    timeline: u32,
    #[serde(rename = "DeltaLSN", default, skip_serializing_if = "Option::is_none")]
    delta_lsn: Option<u64>,
    #[serde(rename = "DeltaFrom", default, skip_serializing_if = "Option::is_none")]
    delta_from: Option<String>,
    #[serde(
        rename = "DeltaFullName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    delta_full_name: Option<String>,
    #[serde(
        rename = "DeltaCount",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    delta_count: Option<u32>,
    #[serde(rename = "PgVersion")]
    pg_version: i64,
    #[serde(rename = "FinishLSN")]
    finish_lsn: u64,
    #[serde(rename = "SystemIdentifier", default)]
    system_identifier: Option<u64>,
    #[serde(rename = "UncompressedSize")]
    uncompressed_size: i64,
    #[serde(rename = "CompressedSize")]
    compressed_size: i64,
    #[serde(
        rename = "DataCatalogSize",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    data_catalog_size: Option<i64>,
    #[serde(rename = "Spec")]
    spec: Option<serde_json::Value>,
    #[serde(rename = "UserData", default, skip_serializing_if = "Option::is_none")]
    user_data: Option<serde_json::Value>,
    #[serde(rename = "FilesMetadataDisabled", default)]
    files_metadata_disabled: bool,
    #[serde(rename = "Version")]
    version: i64,
    #[serde(rename = "StartTime")]
    start_time: String,
    #[serde(rename = "FinishTime")]
    finish_time: String,
    #[serde(rename = "DateFmt")]
    date_fmt: String,
    #[serde(rename = "Hostname")]
    hostname: String,
    #[serde(rename = "DataDir")]
    data_dir: String,
    #[serde(rename = "IsPermanent")]
    is_permanent: bool,
}

/// WAL-G's `ExtendedMetadataDto` (`metadata.json`).
#[derive(Debug, Serialize, Deserialize)]
struct WalgMetadata {
    start_time: String,
    finish_time: String,
    date_fmt: String,
    hostname: String,
    data_dir: String,
    pg_version: i64,
    start_lsn: u64,
    finish_lsn: u64,
    is_permanent: bool,
    system_identifier: Option<u64>,
    timeline: u32,
    uncompressed_size: i64,
    compressed_size: i64,
}

/// WAL-G's `BackupFileDescription`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WalgFile {
    #[serde(rename = "IsIncremented")]
    is_incremented: bool,
    #[serde(rename = "IsSkipped")]
    is_skipped: bool,
    /// Go's time.Time: RFC 3339 with nanoseconds.
    #[serde(rename = "MTime")]
    mtime: String,
    #[serde(rename = "UpdatesCount", default)]
    updates_count: u64,
}

/// WAL-G's `FilesMetadataDto` (`files_metadata.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct WalgFiles {
    #[serde(rename = "Files")]
    files: BTreeMap<String, WalgFile>,
    #[serde(rename = "TarFileSets")]
    tar_file_sets: BTreeMap<String, Vec<String>>,
}

// ---- packing a data directory as WAL-G's backup-push does ----

#[derive(Clone, Copy)]
enum Codec {
    Lz4,
    Zstd,
}

impl Codec {
    fn ext(self) -> &'static str {
        match self {
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zst",
        }
    }
    fn tool(self) -> &'static str {
        match self {
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
    fn pipe(self, input: &[u8], decompress: bool) -> Vec<u8> {
        let mut c = Command::new(self.tool());
        c.args(if decompress {
            ["-d", "-c", "-q"]
        } else {
            ["-c", "-q", "-q"]
        });
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data));
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        writer.join().unwrap().unwrap();
        assert!(child.wait().unwrap().success());
        out
    }
}

/// WAL-G's `ExcludedFilenames`: directories kept empty, files left out, matched by base name.
const WALG_EXCLUDED: &[&str] = &[
    "log",
    "pg_log",
    "pg_xlog",
    "pg_wal",
    "pgsql_tmp",
    "postgresql.auto.conf.tmp",
    "postmaster.pid",
    "postmaster.opts",
    "recovery.conf",
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_stat_tmp",
    "pg_snapshots",
    "pg_subtrans",
    "standby.signal",
];

/// A USTAR header as Go's archive/tar writes one for `tar.FileInfoHeader`: the name in the
/// name field, split into prefix and name past 100 bytes.
fn go_header(
    name: &str,
    dir: bool,
    mode: u32,
    size: u64,
    mtime: i64,
    uid: u32,
    gid: u32,
) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_mode(mode & 0o7777);
    h.set_size(size);
    h.set_mtime(mtime.max(0) as u64);
    h.set_uid(uid as u64);
    h.set_gid(gid as u64);
    let bytes = name.as_bytes();
    let ustar = h.as_ustar_mut().unwrap();
    if bytes.len() <= 100 {
        ustar.name[..bytes.len()].copy_from_slice(bytes);
    } else {
        let cut = (0..bytes.len())
            .rev()
            .find(|&i| bytes[i] == b'/' && i <= 155 && bytes.len() - i - 1 <= 100)
            .expect("a path USTAR can hold");
        ustar.prefix[..cut].copy_from_slice(&bytes[..cut]);
        ustar.name[..bytes.len() - cut - 1].copy_from_slice(&bytes[cut + 1..]);
    }
    h.set_cksum();
    h
}

struct Tarball {
    number: u32,
    builder: Option<tar::Builder<Vec<u8>>>,
    /// Bytes of file content packed (WAL-G's tarball Size()).
    size: u64,
    files: Vec<String>,
}

impl Tarball {
    fn new(number: u32) -> Self {
        Tarball {
            number,
            builder: None,
            size: 0,
            files: Vec::new(),
        }
    }
    fn append(&mut self, h: &tar::Header, data: &[u8]) {
        self.builder
            .get_or_insert_with(|| tar::Builder::new(Vec::new()))
            .append(h, data)
            .unwrap();
    }
}

/// WAL-G's record of a file or directory packed whole.
fn walg_file(meta: &std::fs::Metadata) -> WalgFile {
    WalgFile {
        is_incremented: false,
        is_skipped: false,
        mtime: chrono::DateTime::from_timestamp(meta.mtime(), meta.mtime_nsec() as u32)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        updates_count: 0,
    }
}

/// Writes partitions the way WAL-G's tarball queue does, and records what it wrote.
struct WalgPacker {
    parts: PathBuf,
    codec: Codec,
    /// WAL-G's tarball maker numbers every tarball it makes, written or not.
    made: u32,
    files: WalgFiles,
    uncompressed: u64,
    compressed: u64,
    data_catalog: u64,
    /// A delta: the base's start LSN and its files.
    base: Option<(u64, BTreeMap<String, WalgFile>)>,
}

/// WAL-G's `isPagedFile`: under base/ or pg_tblspc/, named `<digits>[.<digits>]`, non-empty, a
/// whole number of 8 KiB pages.
fn walg_is_paged(entry: &str, size: u64) -> bool {
    let name = entry.rsplit('/').next().unwrap();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (entry.contains("/base/") || entry.contains("/pg_tblspc/"))
        && size > 0
        && size.is_multiple_of(8192)
        && match name.split_once('.') {
            Some((a, b)) => digits(a) && digits(b),
            None => digits(name),
        }
}

/// WAL-G's increment of a paged file (`IncrementalPageReader`, full scan): the pages whose
/// header is valid and whose LSN is at or past `since`, and new (pd_upper 0) pages; None when a
/// page header is not valid (WAL-G then stores the file whole).
fn walg_increment(data: &[u8], since: u64) -> Option<Vec<u8>> {
    let mut blocks = Vec::new();
    for (no, page) in data.chunks_exact(8192).enumerate() {
        let u16_at = |i: usize| u16::from_le_bytes([page[i], page[i + 1]]);
        let lsn = (u32::from_le_bytes(page[0..4].try_into().unwrap()) as u64) << 32
            | u32::from_le_bytes(page[4..8].try_into().unwrap()) as u64;
        let (flags, lower, upper, special, version) =
            (u16_at(10), u16_at(12), u16_at(14), u16_at(16), u16_at(18));
        let valid = flags & !7 == 0
            && lower >= 24
            && lower <= upper
            && upper <= special
            && special <= 8192
            && lsn != 0
            && version == 8192 + 4;
        if upper == 0 || (valid && lsn >= since) {
            blocks.push(no as u32);
        } else if !valid {
            return None;
        }
    }
    let mut out = vec![b'w', b'i', b'1', 0x55];
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for b in &blocks {
        out.extend_from_slice(&b.to_le_bytes());
    }
    for b in &blocks {
        out.extend_from_slice(&data[*b as usize * 8192..][..8192]);
    }
    Some(out)
}

impl WalgPacker {
    fn new(archive: &Path, name: &str, codec: Codec) -> Self {
        let parts = archive.join(format!("basebackups_005/{name}/tar_partitions"));
        std::fs::create_dir_all(&parts).unwrap();
        WalgPacker {
            parts,
            codec,
            made: 0,
            files: WalgFiles::default(),
            uncompressed: 0,
            compressed: 0,
            data_catalog: 0,
            base: None,
        }
    }

    fn make(&mut self) -> Tarball {
        self.made += 1;
        Tarball::new(self.made)
    }

    fn finish(&mut self, t: Tarball, file_name: Option<String>) {
        let Some(builder) = t.builder else {
            return; // never written: its number stays unused
        };
        let tar = builder.into_inner().unwrap();
        let file =
            file_name.unwrap_or_else(|| format!("part_{:03}.tar.{}", t.number, self.codec.ext()));
        let body = self.codec.pipe(&tar, false);
        std::fs::write(self.parts.join(&file), &body).unwrap();
        self.compressed += body.len() as u64;
        self.uncompressed += t.size;
        if !t.files.is_empty() {
            self.files.tar_file_sets.insert(file, t.files);
        }
    }

    /// The data directory (in backup mode), then pg_control in a tar of its own.
    fn pack_data(&mut self, pgdata: &Path, threshold: u64) {
        let mut current = self.make();
        let mut pg_control = None;
        // filepath.Walk: lexical order, the root first.
        let mut stack = vec![pgdata.to_path_buf()];
        while let Some(path) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue; // deleted during the walk
            };
            self.data_catalog += meta.len();
            let rel = path
                .strip_prefix(pgdata)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let entry = format!("/{rel}");
            let base = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let excluded = WALG_EXCLUDED.contains(&base.as_str());
            if base == "pg_control" {
                pg_control = Some(path.clone());
                continue;
            }
            if meta.is_dir() {
                let h = go_header(
                    &entry,
                    true,
                    meta.mode(),
                    0,
                    meta.mtime(),
                    meta.uid(),
                    meta.gid(),
                );
                current.append(&h, &[]);
                // AddHeader: directories are in Files and TarFileSets too.
                current.files.push(entry.clone());
                self.files.files.insert(entry.clone(), walg_file(&meta));
                if !excluded {
                    let mut children: Vec<PathBuf> = std::fs::read_dir(&path)
                        .unwrap()
                        .map(|e| e.unwrap().path())
                        .collect();
                    children.sort();
                    stack.extend(children.into_iter().rev());
                }
            } else if meta.is_file() && !excluded {
                let mut record = walg_file(&meta);
                let in_base = self.base.as_ref().and_then(|(_, f)| f.get(&entry));
                if in_base.is_some_and(|b| b.mtime == record.mtime) {
                    // SkipFile: unchanged modification time; not in any tar.
                    record.is_skipped = true;
                    self.files.files.insert(entry, record);
                    continue;
                }
                let Ok(mut data) = std::fs::read(&path) else {
                    continue;
                };
                if let (Some(_), Some((since, _))) = (in_base, &self.base) {
                    if walg_is_paged(&entry, data.len() as u64) {
                        if let Some(inc) = walg_increment(&data, *since) {
                            data = inc;
                            record.is_incremented = true;
                        }
                    }
                }
                let h = go_header(
                    &entry,
                    false,
                    meta.mode(),
                    data.len() as u64,
                    meta.mtime(),
                    meta.uid(),
                    meta.gid(),
                );
                current.append(&h, &data);
                current.size += data.len() as u64;
                current.files.push(entry.clone());
                self.files.files.insert(entry, record);
                if current.size > threshold {
                    let next = self.make();
                    let full = std::mem::replace(&mut current, next);
                    self.finish(full, None);
                }
            }
        }
        self.finish(current, None);
        // UploadPgControl: a tarball of its own, which takes the next number.
        let mut control = self.make();
        let path = pg_control.expect("global/pg_control");
        let meta = std::fs::metadata(&path).unwrap();
        let data = std::fs::read(&path).unwrap();
        let h = go_header(
            "/global/pg_control",
            false,
            meta.mode(),
            data.len() as u64,
            meta.mtime(),
            meta.uid(),
            meta.gid(),
        );
        control.append(&h, &data);
        control.size += data.len() as u64;
        let file = format!("pg_control.tar.{}", self.codec.ext());
        // Its tar holds pg_control, but WAL-G records no file set for it.
        control.files.clear();
        self.finish(control, Some(file));
    }

    /// uploadLabelFiles: backup_label and tablespace_map, named bare, in the next part.
    fn pack_labels(&mut self, label: &str, spcmap: &str) {
        let mut labels = self.make();
        for (n, body) in [("backup_label", label), ("tablespace_map", spcmap)] {
            let mut h = tar::Header::new_ustar();
            h.as_ustar_mut().unwrap().name[..n.len()].copy_from_slice(n.as_bytes());
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o600);
            h.set_size(body.len() as u64);
            h.set_cksum();
            labels.append(&h, body.as_bytes());
            labels.size += body.len() as u64;
        }
        labels.files = vec!["tablespace_map".into(), "backup_label".into()];
        self.finish(labels, None);
    }
}

/// What WAL-G's backup-push would have left: the name and its records.
struct WalgBackup {
    name: String,
    tar_file_sets: BTreeMap<String, Vec<String>>,
    start_lsn: u64,
    files: BTreeMap<String, WalgFile>,
    /// A delta's full backup and its place in the chain.
    delta_full_name: Option<String>,
    delta_count: Option<u32>,
}

/// Runs a real non-exclusive base backup of the primary, packed the WAL-G way, with WAL-G's
/// sentinel, metadata.json and files_metadata.json. Rows inserted while the backup runs come
/// back only through WAL replay.
fn walg_backup(c: &Cluster, threshold: u64, codec: Codec) -> WalgBackup {
    walg_backup_from(c, threshold, codec, None)
}

/// A WAL-G backup; with `base`, a delta of it, as WAL-G's backup-push with
/// WALG_DELTA_MAX_STEPS takes one: files whose MTime is unchanged are skipped, paged files the
/// base has are stored as increments of the pages changed since the base's start LSN, and the
/// sentinel names the base (`DeltaFrom`, `DeltaLSN`, `DeltaFullName`, `DeltaCount`).
fn walg_backup_from(
    c: &Cluster,
    threshold: u64,
    codec: Codec,
    base: Option<&WalgBackup>,
) -> WalgBackup {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(&c.primary.sock)
            .port(c.primary.port)
            .user("postgres")
            .dbname("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let started = chrono::Utc::now();
        let row = client
            .query_one("SELECT pg_backup_start('wal-g test', true)::text", &[])
            .await
            .unwrap();
        let start_lsn: String = row.get(0);
        let row = client
            .query_one(
                "SELECT pg_walfile_name($1::text::pg_lsn), \
                 (SELECT timeline_id FROM pg_control_checkpoint()), \
                 (SELECT system_identifier FROM pg_control_system())::text, \
                 current_setting('server_version_num')::int, current_setting('data_directory')",
                &[&start_lsn],
            )
            .await
            .unwrap();
        let (start_file, timeline, sysid, version, data_dir): (String, i32, String, i32, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let name = match base {
            // WAL-G's delta name: its own segment, `_D_`, the base's segment.
            Some(b) => format!("base_{start_file}_D_{}", &b.name[5..29]),
            None => format!("base_{start_file}"),
        };
        c.primary
            .psql("INSERT INTO rows_kept SELECT g FROM generate_series(1001, 2000) g");
        let mut packer = WalgPacker::new(&c.archive, &name, codec);
        packer.base = base.map(|b| (b.start_lsn, b.files.clone()));
        packer.pack_data(&c.primary.data, threshold);
        let row = client
            .query_one(
                "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)",
                &[],
            )
            .await
            .unwrap();
        let (finish_lsn, label, spcmap): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        packer.pack_labels(&label, &spcmap);
        drop(client);
        let _ = conn.await;

        let finished = chrono::Utc::now();
        let fmt = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        };
        let sentinel = WalgSentinel {
            lsn: parse_lsn(&start_lsn),
            timeline: timeline as u32,
            delta_lsn: base.map(|b| b.start_lsn),
            delta_from: base.map(|b| b.name.clone()),
            delta_full_name: base.map(|b| b.delta_full_name.clone().unwrap_or(b.name.clone())),
            delta_count: base.map(|b| b.delta_count.unwrap_or(0) + 1),
            pg_version: version as i64,
            finish_lsn: parse_lsn(&finish_lsn),
            system_identifier: Some(sysid.parse().unwrap()),
            uncompressed_size: packer.uncompressed as i64,
            compressed_size: packer.compressed as i64,
            data_catalog_size: Some(packer.data_catalog as i64),
            spec: None,
            user_data: None,
            files_metadata_disabled: false,
            version: 2,
            start_time: fmt(started),
            finish_time: fmt(finished),
            date_fmt: "%Y-%m-%dT%H:%M:%S.%fZ".into(),
            hostname: "walg-host".into(),
            data_dir: data_dir.clone(),
            is_permanent: false,
        };
        let meta = WalgMetadata {
            start_time: fmt(started),
            finish_time: fmt(finished),
            date_fmt: sentinel.date_fmt.clone(),
            hostname: sentinel.hostname.clone(),
            data_dir,
            pg_version: sentinel.pg_version,
            start_lsn: sentinel.lsn,
            finish_lsn: sentinel.finish_lsn,
            is_permanent: false,
            system_identifier: sentinel.system_identifier,
            timeline: sentinel.timeline,
            uncompressed_size: sentinel.uncompressed_size,
            compressed_size: sentinel.compressed_size,
        };
        // WAL-G's order: metadata.json, files_metadata.json, then the sentinel.
        let folder = c.archive.join("basebackups_005");
        std::fs::write(
            folder.join(format!("{name}/metadata.json")),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        std::fs::write(
            folder.join(format!("{name}/files_metadata.json")),
            serde_json::to_vec(&packer.files).unwrap(),
        )
        .unwrap();
        std::fs::write(
            folder.join(format!("{name}_backup_stop_sentinel.json")),
            serde_json::to_vec(&sentinel).unwrap(),
        )
        .unwrap();
        chown_pg_recursive(&c.archive);
        WalgBackup {
            name,
            start_lsn: sentinel.lsn,
            delta_full_name: sentinel.delta_full_name.clone(),
            delta_count: sentinel.delta_count,
            files: packer.files.files,
            tar_file_sets: packer.files.tar_file_sets,
        }
    })
}

fn restores_a_wal_g_backup(codec: Codec) {
    let c = Cluster::start(&[]);
    c.primary
        .psql("CREATE TABLE rows_kept AS SELECT g AS id FROM generate_series(1, 1000) g");
    c.primary.pgbench(&["-i", "-s", "1", "-q"]);
    // 1 MB partitions: several, as a larger cluster gets at WAL-G's 1 GB default.
    let b = walg_backup(&c, 1 << 20, codec);
    c.primary
        .psql("INSERT INTO rows_kept SELECT g FROM generate_series(2001, 2500) g");
    c.primary.switch_and_wait_archived();
    let sum = c.primary.psql("SELECT sum(id) FROM rows_kept");
    let accounts = c
        .primary
        .psql("SELECT sum(abalance), count(*) FROM pgbench_accounts");

    let parts: Vec<&String> = b.tar_file_sets.keys().collect();
    assert!(parts.len() >= 3, "several partitions: {parts:?}");
    let list = c.walkeeper(&["backup-list", "--detail"]);
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
    assert!(
        String::from_utf8_lossy(&list.stdout).contains(&b.name),
        "{}",
        String::from_utf8_lossy(&list.stdout)
    );

    // backup-fetch, then PostgreSQL replays the archive with walkeeper's restore_command.
    let target = c.dir("fetched");
    let out = c.walkeeper(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_eq!(out.status.code(), Some(0), "backup-fetch: {}", stderr(&out));
    assert!(target.join("backup_label").exists());
    assert!(target.join("global/pg_control").exists());
    std::fs::write(target.join("recovery.signal"), "").unwrap();
    let restored = c.start_restored("fetched", target, true);
    assert_eq!(restored.psql("SELECT sum(id) FROM rows_kept"), sum);
    assert_eq!(
        restored.psql("SELECT sum(abalance), count(*) FROM pgbench_accounts"),
        accounts
    );
    drop(restored);

    // restore: the same backup, recovery settings written by walkeeper.
    let target = c.dir("restored");
    let out = c.walkeeper(&["restore", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "restore: {}", stderr(&out));
    let restored = c.start_restored("restored", target, false);
    assert_eq!(restored.psql("SELECT sum(id) FROM rows_kept"), sum);
}

#[test]
fn a_wal_g_backup_packed_with_lz4_restores_with_backup_fetch_and_restore() {
    restores_a_wal_g_backup(Codec::Lz4);
}

#[test]
fn a_wal_g_backup_packed_with_zstd_restores_with_backup_fetch_and_restore() {
    restores_a_wal_g_backup(Codec::Zstd);
}

#[test]
fn an_inconsistent_wal_g_delta_or_a_wal_g_backup_missing_a_listed_partition_or_file_fails_backup_fetch(
) {
    let c = Cluster::start(&[]);
    c.primary
        .psql("CREATE TABLE rows_kept AS SELECT g AS id FROM generate_series(1, 1000) g");
    c.primary.pgbench(&["-i", "-s", "1", "-q"]);
    let b = walg_backup(&c, 1 << 20, Codec::Lz4);

    // Files marked as increments in a backup whose sentinel names no base: refused, not half
    // restored.
    let meta_path = c
        .archive
        .join(format!("basebackups_005/{}/files_metadata.json", b.name));
    let original = std::fs::read(&meta_path).unwrap();
    let mut files: WalgFiles = serde_json::from_slice(&original).unwrap();
    files.files.values_mut().next().unwrap().is_incremented = true;
    std::fs::write(&meta_path, serde_json::to_vec(&files).unwrap()).unwrap();
    let target = c.dir("delta");
    for which in ["LATEST".to_string(), b.name.clone()] {
        let out = c.walkeeper(&["backup-fetch", target.to_str().unwrap(), &which]);
        assert_eq!(out.status.code(), Some(2), "{which}: {}", stderr(&out));
        assert!(stderr(&out).contains("delta backup"), "{}", stderr(&out));
        assert!(!target.join("PG_VERSION").exists());
    }
    std::fs::write(&meta_path, &original).unwrap();

    let parts = c
        .archive
        .join(format!("basebackups_005/{}/tar_partitions", b.name));
    // The middle data partition goes missing: files_metadata.json names it.
    let lost = b.tar_file_sets.keys().nth(1).unwrap().clone();
    let saved = std::fs::read(parts.join(&lost)).unwrap();
    std::fs::remove_file(parts.join(&lost)).unwrap();
    let target = c.dir("lost_part");
    let out = c.walkeeper(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains(&lost), "{}", stderr(&out));
    assert!(!target.join("global/pg_control").exists());

    // A partition that lost one listed file (rewritten without it).
    let plain = Codec::Lz4.pipe(&saved, true);
    let mut ar = tar::Archive::new(&plain[..]);
    let mut rebuilt = tar::Builder::new(Vec::new());
    let mut dropped = None;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if dropped.is_none() && e.header().entry_type().is_file() {
            dropped = Some(name);
            continue;
        }
        rebuilt.append(&e.header().clone(), &data[..]).unwrap();
    }
    let dropped = dropped.unwrap();
    std::fs::write(
        parts.join(&lost),
        Codec::Lz4.pipe(&rebuilt.into_inner().unwrap(), false),
    )
    .unwrap();
    chown_pg_recursive(&parts);
    let target = c.dir("lost_file");
    let out = c.walkeeper(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains(&format!("lists {dropped}")),
        "{dropped}: {}",
        stderr(&out)
    );
    assert!(!target.join("global/pg_control").exists());
}

#[test]
fn walkeepers_backup_has_the_metadata_wal_g_reads_and_restores_by_wal_gs_rules() {
    let c = Cluster::start(&[("WALG_TAR_SIZE_THRESHOLD", "1048576")]);
    c.primary
        .psql("CREATE TABLE rows_kept AS SELECT g AS id FROM generate_series(1, 1000) g");
    c.primary.pgbench(&["-i", "-s", "1", "-q"]);
    let out = c.walkeeper(&["backup-push", c.primary.data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "backup-push: {}", stderr(&out));
    c.primary
        .psql("INSERT INTO rows_kept SELECT g FROM generate_series(1001, 1500) g");
    c.primary.switch_and_wait_archived();
    let sum = c.primary.psql("SELECT sum(id) FROM rows_kept");

    let folder = c.archive.join("basebackups_005");
    let sentinel_file = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|f| f.ends_with("_backup_stop_sentinel.json"))
        .unwrap();
    let name = sentinel_file
        .strip_suffix("_backup_stop_sentinel.json")
        .unwrap()
        .to_string();
    let sentinel: WalgSentinel =
        serde_json::from_slice(&std::fs::read(folder.join(&sentinel_file)).unwrap())
            .expect("the sentinel reads as WAL-G's BackupSentinelDtoV2");
    let meta: WalgMetadata = serde_json::from_slice(
        &std::fs::read(folder.join(format!("{name}/metadata.json"))).unwrap(),
    )
    .expect("metadata.json reads as WAL-G's ExtendedMetadataDto");
    // A version-2 sentinel makes WAL-G's backup-fetch require files_metadata.json.
    assert_eq!(sentinel.version, 2);
    assert!(!sentinel.files_metadata_disabled);
    let files: WalgFiles = serde_json::from_slice(
        &std::fs::read(folder.join(format!("{name}/files_metadata.json")))
            .expect("files_metadata.json exists"),
    )
    .expect("files_metadata.json reads as WAL-G's FilesMetadataDto");
    assert_eq!(
        name,
        format!(
            "base_{}",
            c.primary.psql(&format!(
                "SELECT pg_walfile_name('{:X}/{:X}')",
                sentinel.lsn >> 32,
                sentinel.lsn & 0xFFFF_FFFF
            ))
        )
    );
    assert_eq!(meta.start_lsn, sentinel.lsn);
    assert_eq!(meta.finish_lsn, sentinel.finish_lsn);
    assert!(sentinel.finish_lsn > sentinel.lsn);
    assert_eq!(
        sentinel.system_identifier.unwrap().to_string(),
        c.primary
            .psql("SELECT system_identifier FROM pg_control_system()")
    );
    assert_eq!(
        sentinel.pg_version.to_string(),
        c.primary.psql("SHOW server_version_num")
    );
    assert!(sentinel.delta_from.is_none());

    // Every tar, decoded by the lz4 tool.
    let parts = folder.join(format!("{name}/tar_partitions"));
    let mut tars = Vec::new();
    let mut compressed = 0u64;
    for e in std::fs::read_dir(&parts).unwrap() {
        let e = e.unwrap();
        let file = e.file_name().to_string_lossy().into_owned();
        let body = std::fs::read(e.path()).unwrap();
        compressed += body.len() as u64;
        tars.push((file, Codec::Lz4.pipe(&body, true)));
    }
    tars.sort();
    let mut uncompressed = 0u64;
    let mut regular: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (file, plain) in &tars {
        let mut ar = tar::Archive::new(&plain[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let n = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            if e.header().entry_type().is_file() {
                uncompressed += e.size();
                regular.entry(file.clone()).or_default().push(n.clone());
            }
            // WAL-G's names: "/" + the path, except its two label files.
            assert!(
                n.starts_with('/') || n == "backup_label" || n == "tablespace_map",
                "{file}: {n}"
            );
        }
    }
    // pg_control in its own tar, named as WAL-G names it; the label files in the last part.
    assert_eq!(
        regular[&"pg_control.tar.lz4".to_string()],
        vec!["/global/pg_control".to_string()]
    );
    let last = regular
        .keys()
        .filter(|k| k.starts_with("part_"))
        .max()
        .unwrap()
        .clone();
    assert_eq!(
        regular[&last],
        vec!["backup_label".to_string(), "tablespace_map".to_string()]
    );
    assert!(
        regular.len() >= 4,
        "several partitions: {:?}",
        regular.keys()
    );
    // UncompressedSize: file bytes without tar headers; CompressedSize: the objects' bytes.
    assert_eq!(sentinel.uncompressed_size as u64, uncompressed);
    assert_eq!(sentinel.compressed_size as u64, compressed);
    assert_eq!(meta.uncompressed_size, sentinel.uncompressed_size);
    // Files lists every regular data file by its tar name (WAL-G restores nothing else), and
    // TarFileSets says which tar holds which.
    for (file, names) in &regular {
        if file.starts_with("pg_control.tar") {
            continue;
        }
        assert_eq!(files.tar_file_sets.get(file), Some(names), "{file}");
        for n in names {
            if n != "backup_label" && n != "tablespace_map" {
                let d = files
                    .files
                    .get(n)
                    .unwrap_or_else(|| panic!("{n} not in Files"));
                assert!(!d.is_incremented && !d.is_skipped, "{n}");
            }
        }
    }
    assert_eq!(
        files.files.len(),
        regular
            .values()
            .flatten()
            .filter(|n| n.starts_with('/') && *n != "/global/pg_control")
            .count()
    );
    // MTime to the nanosecond, as WAL-G's delta backup compares it: PG_VERSION never changes.
    let pv = std::fs::metadata(c.primary.data.join("PG_VERSION")).unwrap();
    let mtime = chrono::DateTime::parse_from_rfc3339(&files.files["/PG_VERSION"].mtime).unwrap();
    assert_eq!(
        (mtime.timestamp(), mtime.timestamp_subsec_nanos()),
        (pv.mtime(), pv.mtime_nsec() as u32)
    );

    // Restored by WAL-G's rules, PostgreSQL recovers and has every row.
    let target = c.scratch.mkdir("by_wal_g_rules");
    extract_chain_like_wal_g(&[(files, tars)], &target);
    std::fs::write(target.join("recovery.signal"), "").unwrap();
    let restored = c.start_restored("by_wal_g_rules", target, true);
    assert_eq!(restored.psql("SELECT sum(id) FROM rows_kept"), sum);
}

// ---- delta backups ----

/// A backup's tars by object name, decoded.
type Tars = Vec<(String, Vec<u8>)>;

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A backup's sentinel, files_metadata.json and tars (decoded by the lz4 or zstd tool).
fn read_backup(c: &Cluster, name: &str) -> (WalgSentinel, WalgFiles, Tars) {
    let folder = c.archive.join("basebackups_005");
    let sentinel = read_json(&folder.join(format!("{name}_backup_stop_sentinel.json")));
    let files = read_json(&folder.join(format!("{name}/files_metadata.json")));
    let mut tars = Vec::new();
    for e in std::fs::read_dir(folder.join(format!("{name}/tar_partitions"))).unwrap() {
        let e = e.unwrap();
        let file = e.file_name().to_string_lossy().into_owned();
        let codec = if file.ends_with(".zst") {
            Codec::Zstd
        } else {
            Codec::Lz4
        };
        tars.push((file, codec.pipe(&std::fs::read(e.path()).unwrap(), true)));
    }
    tars.sort();
    (sentinel, files, tars)
}

/// WAL-G's `ApplyFileIncrement`, from its format: `wi1` 0x55, u64 size, u32 count, the block
/// numbers, the pages; the file must exist, is cut or extended to the size, then each page is
/// written at its block.
fn apply_walg_increment(dest: &Path, inc: &[u8]) {
    use std::os::unix::fs::FileExt;
    assert_eq!(&inc[..4], b"wi1\x55", "{}", dest.display());
    let size = u64::from_le_bytes(inc[4..12].try_into().unwrap());
    let n = u32::from_le_bytes(inc[12..16].try_into().unwrap()) as usize;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dest)
        .unwrap_or_else(|e| {
            panic!(
                "incremented file should always exist: {}: {e}",
                dest.display()
            )
        });
    f.set_len(size).unwrap();
    let pages = &inc[16 + 4 * n..];
    assert_eq!(pages.len(), n * 8192);
    for i in 0..n {
        let block = u32::from_le_bytes(inc[16 + 4 * i..][..4].try_into().unwrap()) as u64;
        f.write_all_at(&pages[i * 8192..][..8192], block * 8192)
            .unwrap();
    }
}

/// A delta chain restored as WAL-G's backup-fetch restores one: each backup from the full one
/// on, a regular file only when its `Files` lists it and does not mark it skipped, increments
/// applied to the file the backups before restored; pg_control from the last backup; a file
/// the last backup's `Files` does not list is not part of the result.
fn extract_chain_like_wal_g(layers: &[(WalgFiles, Tars)], dir: &Path) {
    for (i, (files, tars)) in layers.iter().enumerate() {
        let last = i + 1 == layers.len();
        let mut ordered: Vec<&(String, Vec<u8>)> = tars
            .iter()
            .filter(|(n, _)| last || !n.starts_with("pg_control.tar"))
            .collect();
        ordered.sort_by_key(|(n, _)| n.starts_with("pg_control.tar"));
        for (_, plain) in ordered {
            let mut ar = tar::Archive::new(&plain[..]);
            for e in ar.entries().unwrap() {
                let mut e = e.unwrap();
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let dest = dir.join(name.trim_start_matches('/'));
                match e.header().entry_type() {
                    tar::EntryType::Directory => std::fs::create_dir_all(&dest).unwrap(),
                    tar::EntryType::Regular => {
                        let special = ["/global/pg_control", "backup_label", "tablespace_map"]
                            .contains(&name.as_str());
                        let record = files.files.get(&name);
                        if !special && record.is_none_or(|r| r.is_skipped) {
                            continue;
                        }
                        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                        let mut data = Vec::new();
                        e.read_to_end(&mut data).unwrap();
                        if record.is_some_and(|r| r.is_incremented) {
                            apply_walg_increment(&dest, &data);
                        } else {
                            std::fs::write(&dest, data).unwrap();
                        }
                    }
                    other => panic!("{name}: unexpected entry type {other:?}"),
                }
            }
        }
    }
    let Some((last, _)) = layers.last() else {
        return;
    };
    for e in walkdir::WalkDir::new(dir).min_depth(1) {
        let e = e.unwrap();
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let entry = format!("/{rel}");
        if !last.files.contains_key(&entry)
            && !["global/pg_control", "backup_label", "tablespace_map"].contains(&rel.as_str())
        {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    for d in [
        "pg_wal/archive_status",
        "pg_replslot",
        "pg_stat_tmp",
        "pg_subtrans",
        "pg_notify",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
}

#[test]
fn a_wal_g_delta_chain_restores_with_backup_fetch_applying_increments_and_dropping_removed_files() {
    let c = Cluster::start(&[]);
    c.primary
        .psql("CREATE TABLE rows_kept AS SELECT g AS id FROM generate_series(1, 1000) g");
    c.primary.pgbench(&["-i", "-s", "1", "-q"]);
    c.primary
        .psql("CREATE TABLE doomed AS SELECT g FROM generate_series(1, 20000) g");
    let doomed = c.primary.psql("SELECT pg_relation_filepath('doomed')");
    let accounts_file = c
        .primary
        .psql("SELECT pg_relation_filepath('pgbench_accounts')");
    let full = walg_backup(&c, 1 << 20, Codec::Lz4);
    assert!(full.files.contains_key(&format!("/{doomed}")));

    // About 1% of the accounts change, a table goes, another comes.
    c.primary
        .psql("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 100 = 0");
    c.primary.psql("DROP TABLE doomed");
    c.primary
        .psql("CREATE TABLE born AS SELECT g FROM generate_series(1, 5000) g");
    let d1 = walg_backup_from(&c, 1 << 20, Codec::Lz4, Some(&full));
    c.primary
        .psql("UPDATE pgbench_accounts SET abalance = abalance - 3 WHERE aid % 50 = 1");
    let d2 = walg_backup_from(&c, 1 << 20, Codec::Zstd, Some(&d1));
    c.primary
        .psql("INSERT INTO rows_kept SELECT g FROM generate_series(3001, 3500) g");
    c.primary.switch_and_wait_archived();
    let sum = c.primary.psql("SELECT sum(id) FROM rows_kept");
    let accounts = c
        .primary
        .psql("SELECT sum(abalance), count(*) FROM pgbench_accounts");

    // What the packer built is a real delta chain: increments, skipped files, names.
    assert!(
        d1.name.ends_with(&format!("_D_{}", &full.name[5..])),
        "{}",
        d1.name
    );
    assert!(
        d2.name.ends_with(&format!("_D_{}", &d1.name[5..29])),
        "{}",
        d2.name
    );
    assert_eq!(d2.delta_count, Some(2));
    assert_eq!(d2.delta_full_name.as_deref(), Some(full.name.as_str()));
    assert!(d1.files[&format!("/{accounts_file}")].is_incremented);
    assert!(d2.files["/PG_VERSION"].is_skipped);
    assert!(!d1.files.contains_key(&format!("/{doomed}")));

    let list = c.walkeeper(&["backup-list"]);
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
    let listed = String::from_utf8_lossy(&list.stdout).into_owned();
    for b in [&full, &d1, &d2] {
        assert!(listed.contains(&b.name), "{}: {listed}", b.name);
    }

    let target = c.dir("fetched");
    let out = c.walkeeper(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_eq!(out.status.code(), Some(0), "backup-fetch: {}", stderr(&out));
    assert!(
        !target.join(&doomed).exists(),
        "the dropped table's file is gone"
    );
    // The accounts file is the base's copy with both increments applied: every page of it is
    // the primary's as of d2 (pages changed since come from WAL replay).
    std::fs::write(target.join("recovery.signal"), "").unwrap();
    let restored = c.start_restored("fetched", target, true);
    assert_eq!(restored.psql("SELECT sum(id) FROM rows_kept"), sum);
    assert_eq!(
        restored.psql("SELECT sum(abalance), count(*) FROM pgbench_accounts"),
        accounts
    );
    assert_eq!(restored.psql("SELECT count(*) FROM born"), "5000");
    assert_eq!(
        restored.psql("SELECT count(*) FROM pg_class WHERE relname = 'doomed'"),
        "0"
    );
    drop(restored);

    // A delta whose base is gone is refused by name, and nothing is left behind.
    let full_sentinel = c.archive.join(format!(
        "basebackups_005/{}_backup_stop_sentinel.json",
        full.name
    ));
    let saved = std::fs::read(&full_sentinel).unwrap();
    std::fs::remove_file(&full_sentinel).unwrap();
    let target = c.dir("orphan");
    let out = c.walkeeper(&["backup-fetch", target.to_str().unwrap(), &d2.name]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&full.name) && stderr(&out).contains("needs its base"),
        "{}",
        stderr(&out)
    );
    assert!(!target.join("PG_VERSION").exists());
    std::fs::write(&full_sentinel, saved).unwrap();
}

#[test]
fn walkeepers_delta_backups_under_pgbench_load_store_changed_pages_and_restore_by_both_tools_rules()
{
    let c = Cluster::start(&[("WALG_DELTA_MAX_STEPS", "2")]);
    c.primary
        .psql("CREATE TABLE rows_kept AS SELECT g AS id FROM generate_series(1, 1000) g");
    c.primary.pgbench(&["-i", "-s", "4", "-q"]);
    let accounts_file = format!(
        "/{}",
        c.primary
            .psql("SELECT pg_relation_filepath('pgbench_accounts')")
    );
    let push = |extra: &[&str]| {
        let mut args = vec!["backup-push", c.primary.data.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = c.walkeeper(&args);
        assert_eq!(out.status.code(), Some(0), "backup-push: {}", stderr(&out));
        let list = c.walkeeper(&["backup-list", "LATEST"]);
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .last()
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_string()
    };
    let full = push(&[]);
    assert!(!full.contains("_D_"), "{full}");

    // 1% of the accounts change (a range, so a few pages): the delta stores a small part of
    // the full's bytes.
    c.primary
        .psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 4000");
    let d1 = push(&[]);
    assert_eq!(d1, format!("{}_D_{}", &d1[..29], &full[5..29]));
    let (fs, _, _) = read_backup(&c, &full);
    let (s1, f1, _) = read_backup(&c, &d1);
    assert_eq!(s1.delta_from.as_deref(), Some(full.as_str()));
    assert_eq!(s1.delta_full_name.as_deref(), Some(full.as_str()));
    assert_eq!(s1.delta_count, Some(1));
    assert_eq!(s1.delta_lsn, Some(fs.lsn));
    assert!(
        f1.files[&accounts_file].is_incremented,
        "{:?}",
        f1.files[&accounts_file]
    );
    assert!(f1.files["/PG_VERSION"].is_skipped);
    assert!(
        s1.compressed_size * 5 < fs.compressed_size,
        "delta {} bytes, full {}",
        s1.compressed_size,
        fs.compressed_size
    );

    // A delta of the delta, taken while pgbench writes (pages may be torn as they are read;
    // WAL replay from the backup's start rewrites them).
    let d2 = std::thread::scope(|s| {
        let load = s.spawn(|| c.primary.pgbench(&["-n", "-c", "2", "-T", "6"]));
        let d2 = push(&[]);
        load.join().unwrap();
        d2
    });
    let (s2, _, _) = read_backup(&c, &d2);
    assert_eq!(s2.delta_from.as_deref(), Some(d1.as_str()));
    assert_eq!(s2.delta_full_name.as_deref(), Some(full.as_str()));
    assert_eq!(s2.delta_count, Some(2));

    // Retention keeps the chain a kept delta needs.
    let out = c.walkeeper(&["delete", "retain", "1", "--confirm"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for b in [&full, &d1, &d2] {
        assert!(
            c.archive
                .join(format!("basebackups_005/{b}_backup_stop_sentinel.json"))
                .exists(),
            "{b} was deleted"
        );
    }

    c.primary.pgbench(&["-n", "-c", "1", "-t", "200"]);
    c.primary.switch_and_wait_archived();
    let sum = c.primary.psql("SELECT sum(id) FROM rows_kept");
    let accounts = c
        .primary
        .psql("SELECT sum(abalance), sum(bid), count(*) FROM pgbench_accounts");
    let history = c
        .primary
        .psql("SELECT count(*), sum(delta) FROM pgbench_history");

    // walkeeper walks the chain.
    let target = c.dir("fetched");
    let out = c.walkeeper(&["backup-fetch", target.to_str().unwrap(), &d2]);
    assert_eq!(out.status.code(), Some(0), "backup-fetch: {}", stderr(&out));
    std::fs::write(target.join("recovery.signal"), "").unwrap();
    let restored = c.start_restored("fetched", target, true);
    assert_eq!(restored.psql("SELECT sum(id) FROM rows_kept"), sum);
    assert_eq!(
        restored.psql("SELECT sum(abalance), sum(bid), count(*) FROM pgbench_accounts"),
        accounts
    );
    assert_eq!(
        restored.psql("SELECT count(*), sum(delta) FROM pgbench_history"),
        history
    );
    drop(restored);

    // WAL-G's rules give the same data directory.
    let layers: Vec<(WalgFiles, Tars)> = [&full, &d1, &d2]
        .iter()
        .map(|b| {
            let (_, files, tars) = read_backup(&c, b);
            (files, tars)
        })
        .collect();
    let target = c.scratch.mkdir("by_wal_g_rules");
    extract_chain_like_wal_g(&layers, &target);
    std::fs::write(target.join("recovery.signal"), "").unwrap();
    let restored = c.start_restored("by_wal_g_rules", target, true);
    assert_eq!(
        restored.psql("SELECT sum(abalance), sum(bid), count(*) FROM pgbench_accounts"),
        accounts
    );
    drop(restored);

    // The third backup after a full one is full again (WALG_DELTA_MAX_STEPS=2), and --full
    // forces one.
    let next = push(&[]);
    assert!(!next.contains("_D_"), "{next}");
    let forced = push(&["--full"]);
    assert!(
        !forced.contains("_D_") && forced != next,
        "{forced} after {next}"
    );
    let (sf, _, _) = read_backup(&c, &next);
    assert!(sf.delta_from.is_none());
}

#[test]
fn backup_fetch_delta_over_the_members_own_data_directory_keeps_matching_files_and_completes_after_an_interruption(
) {
    use std::os::unix::fs::MetadataExt as _;
    let mut c = Cluster::start(&[]);
    c.primary
        .psql("CREATE TABLE rows_kept AS SELECT g AS id FROM generate_series(1, 1000) g");
    c.primary.pgbench(&["-i", "-s", "2", "-q"]);
    let out = c.walkeeper(&["backup-push", c.primary.data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "backup-push: {}", stderr(&out));
    let name = c.walkeeper(&["backup-list", "LATEST"]);
    let name = String::from_utf8_lossy(&name.stdout)
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    c.primary
        .psql("UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid <= 2000");
    c.primary
        .psql("INSERT INTO rows_kept SELECT g FROM generate_series(2001, 2500) g");
    c.primary
        .psql("CREATE TABLE later AS SELECT g FROM generate_series(1, 3000) g");
    c.primary.switch_and_wait_archived();
    let sum = c.primary.psql("SELECT sum(id) FROM rows_kept");
    let accounts = c
        .primary
        .psql("SELECT sum(abalance), count(*) FROM pgbench_accounts");
    c.primary.stop();

    let data = c.primary.data.clone();
    let ino = |p: &str| std::fs::metadata(data.join(p)).unwrap().ino();
    let pg_version = ino("PG_VERSION");
    // A file the backup does not have, and the member's own configuration line.
    std::fs::write(data.join("stray_file"), b"not in the backup").unwrap();
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    conf.push_str("\n# the member's own line\n");
    std::fs::write(data.join("postgresql.conf"), &conf).unwrap();

    // Refused: another directory that is not a data directory, and a running server's.
    let other = c.dir("not_pgdata");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("precious"), b"x").unwrap();
    let out = c.walkeeper(&["backup-fetch", "--delta", other.to_str().unwrap(), &name]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(other.join("precious").exists());
    std::fs::write(data.join("postmaster.pid"), b"1\n").unwrap();
    let out = c.walkeeper(&["backup-fetch", "--delta", data.to_str().unwrap(), &name]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("postmaster.pid"), "{}", stderr(&out));
    std::fs::remove_file(data.join("postmaster.pid")).unwrap();

    // Interrupted: a partition is damaged, so the run fails after it started writing. The
    // directory does not start (no pg_control).
    let parts = c
        .archive
        .join(format!("basebackups_005/{name}/tar_partitions"));
    let part = std::fs::read_dir(&parts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("part_001")
        })
        .unwrap();
    let saved = std::fs::read(&part).unwrap();
    std::fs::write(&part, &saved[..saved.len() / 2]).unwrap();
    let out = c.walkeeper(&["backup-fetch", "--delta", data.to_str().unwrap(), &name]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!data.join("global/pg_control").exists());

    // The next run completes it.
    std::fs::write(&part, &saved).unwrap();
    let out = c.walkeeper(&["backup-fetch", "--delta", data.to_str().unwrap(), &name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(data.join("global/pg_control").exists());
    assert_eq!(
        ino("PG_VERSION"),
        pg_version,
        "an unchanged file is kept, not rewritten"
    );
    assert!(!data.join("stray_file").exists(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(data.join("postgresql.conf")).unwrap(),
        conf
    );
    assert!(
        std::fs::read_dir(data.join("pg_wal")).unwrap().all(|e| e
            .unwrap()
            .file_type()
            .unwrap()
            .is_dir()),
        "no WAL of the old history is left in pg_wal"
    );

    std::fs::write(data.join("recovery.signal"), "").unwrap();
    let mut auto = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.auto.conf"))
        .unwrap();
    writeln!(
        auto,
        "restore_command = '{} --envdir {} wal-fetch %f %p'",
        walkeeper(),
        c.env.display()
    )
    .unwrap();
    chown_pg_recursive(&data);
    c.primary.start();
    wait_until("recovery to finish", Duration::from_secs(300), || {
        c.primary.psql("SELECT pg_is_in_recovery()") == "f"
    });
    assert_eq!(c.primary.psql("SELECT sum(id) FROM rows_kept"), sum);
    assert_eq!(
        c.primary
            .psql("SELECT sum(abalance), count(*) FROM pgbench_accounts"),
        accounts
    );
    assert_eq!(c.primary.psql("SELECT count(*) FROM later"), "3000");
}

#[test]
fn create_replica_with_patronis_keep_data_restores_over_the_kept_directory_and_follows_the_archive()
{
    use std::os::unix::fs::MetadataExt as _;
    let mut c = Cluster::start(&[]);
    c.primary
        .psql("CREATE TABLE rows_kept AS SELECT g AS id FROM generate_series(1, 1000) g");
    c.primary.pgbench(&["-i", "-s", "1", "-q"]);
    let out = c.walkeeper(&["backup-push", c.primary.data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "backup-push: {}", stderr(&out));
    c.primary
        .psql("INSERT INTO rows_kept SELECT g FROM generate_series(1001, 1500) g");
    c.primary.switch_and_wait_archived();
    let sum = c.primary.psql("SELECT sum(id) FROM rows_kept");
    c.primary.stop();
    let data = c.primary.data.clone();
    let pg_version = std::fs::metadata(data.join("PG_VERSION")).unwrap().ino();
    let datadir = format!("--datadir={}", data.display());

    // Without keep_data the directory must be empty (Patroni empties it first).
    let out = c.walkeeper(&["create-replica", &datadir, "--no_leader=1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    // With Patroni's keep_data the backup is restored over it.
    let out = c.walkeeper(&[
        "create-replica",
        &datadir,
        "--no_leader=1",
        "--keep_data=True",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        std::fs::metadata(data.join("PG_VERSION")).unwrap().ino(),
        pg_version,
        "an unchanged file is kept"
    );
    assert!(data.join("standby.signal").exists());
    chown_pg_recursive(&data);
    c.primary.start();
    wait_until(
        "the standby to replay the archive",
        Duration::from_secs(300),
        || c.primary.psql("SELECT sum(id) FROM rows_kept") == sum,
    );
    assert_eq!(c.primary.psql("SELECT pg_is_in_recovery()"), "t");
}

/// The newest backup's name, from backup-list.
fn latest_backup(c: &Cluster) -> String {
    let out = c.walkeeper(&["backup-list", "LATEST"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .expect("a backup")
        .to_string()
}

/// Every file under `dir`: relative path → size, modification time (ns) and a hash of the
/// content.
fn tree_digest(dir: &Path) -> BTreeMap<String, (u64, i64, i64, u64)> {
    use std::hash::{Hash, Hasher};
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(e.path()).unwrap().hash(&mut h);
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, (m.len(), m.mtime(), m.mtime_nsec(), h.finish()));
            }
        }
    }
    out
}

#[test]
fn backup_fetch_seeded_from_an_old_data_directory_on_xfs_clones_its_unchanged_files_and_never_changes_it(
) {
    let mut c = Cluster::start(&[]);
    c.primary
        .psql("CREATE TABLE rows_kept AS SELECT g AS id FROM generate_series(1, 1000) g");
    c.primary.pgbench(&["-i", "-s", "4", "-q"]);
    c.primary.psql("CHECKPOINT");
    let out = c.walkeeper(&["backup-push", c.primary.data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "backup-push: {}", stderr(&out));
    let name = latest_backup(&c);
    c.primary
        .psql("INSERT INTO rows_kept SELECT g FROM generate_series(1001, 1500) g");
    c.primary.switch_and_wait_archived();
    let sum = c.primary.psql("SELECT sum(id) FROM rows_kept");
    let accounts = c
        .primary
        .psql("SELECT sum(abalance), count(*) FROM pgbench_accounts");
    c.primary.stop();

    let xfs = XfsMount::new(&c.scratch.path().join("xfs"));
    let (old, new) = (xfs.dir.join("old"), xfs.dir.join("new"));
    let out = Command::new("cp")
        .arg("-a")
        .arg(&c.primary.data)
        .arg(&old)
        .output()
        .unwrap();
    assert!(out.status.success(), "cp -a: {}", stderr(&out));
    let before = tree_digest(&old);
    let old_bytes: u64 = before.values().map(|v| v.0).sum();
    let used = xfs.used();

    // Refused: a target that is not empty.
    let out = c.walkeeper(&[
        "backup-fetch",
        "--seed-from",
        old.to_str().unwrap(),
        old.to_str().unwrap(),
        &name,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let out = c.walkeeper(&[
        "backup-fetch",
        "--seed-from",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        &name,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("how=\"reflink\"") || log.contains("how=reflink"),
        "{log}"
    );
    // The unchanged files are clones: the restore took far less room than the data.
    let grew = xfs.used().saturating_sub(used);
    assert!(
        grew < old_bytes / 3,
        "the seeded restore used {grew} bytes for {old_bytes} bytes of data: {log}"
    );
    assert_eq!(
        tree_digest(&old),
        before,
        "seeding only reads the old directory"
    );

    // A clone is a file of its own: recovery writing to it never reaches the old directory.
    {
        std::fs::write(new.join("recovery.signal"), "").unwrap();
        let pg = c.start_restored("seeded", new.clone(), true);
        assert_eq!(pg.psql("SELECT sum(id) FROM rows_kept"), sum);
        assert_eq!(
            pg.psql("SELECT sum(abalance), count(*) FROM pgbench_accounts"),
            accounts
        );
        pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1");
        pg.psql("CHECKPOINT");
    }
    assert_eq!(tree_digest(&old), before, "the old directory is as it was");
}

#[test]
fn a_delta_restore_never_reads_a_partition_whose_files_are_all_kept() {
    let mut c = Cluster::start(&[("WALG_TAR_SIZE_THRESHOLD", "1048576")]);
    c.primary.pgbench(&["-i", "-s", "2", "-q"]);
    c.primary
        .psql("CREATE TABLE later_rows AS SELECT g AS id FROM generate_series(1, 10) g");
    c.primary.psql("CHECKPOINT");
    let out = c.walkeeper(&["backup-push", c.primary.data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "backup-push: {}", stderr(&out));
    let name = latest_backup(&c);
    c.primary
        .psql("INSERT INTO later_rows SELECT g FROM generate_series(11, 20) g");
    c.primary.switch_and_wait_archived();
    let accounts = c
        .primary
        .psql("SELECT sum(abalance), count(*) FROM pgbench_accounts");
    c.primary.stop();
    let data = c.primary.data.clone();

    // The partitions whose every file the data directory still has as the backup read it.
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            c.archive
                .join(format!("basebackups_005/{name}/files_metadata.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let kept = |f: &str| {
        let d = &meta["Files"][f];
        let Ok(m) = std::fs::metadata(data.join(f.trim_start_matches('/'))) else {
            return false;
        };
        let t = chrono::DateTime::parse_from_rfc3339(d["MTime"].as_str().unwrap()).unwrap();
        d["Size"].as_u64() == Some(m.len())
            && m.mtime() == t.timestamp()
            && m.mtime_nsec() == t.timestamp_subsec_nanos() as i64
    };
    let parts = c
        .archive
        .join(format!("basebackups_005/{name}/tar_partitions"));
    let all_kept: Vec<String> = meta["TarFileSets"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, files)| {
            let files = files.as_array().unwrap();
            !files.is_empty() && files.iter().all(|f| kept(f.as_str().unwrap()))
        })
        .map(|(p, _)| p.clone())
        .collect();
    assert!(
        all_kept.len() >= 2,
        "the test needs partitions holding only unchanged files: {all_kept:?}"
    );
    // Gone from the archive: a restore that read one would fail.
    let moved = c.dir("moved-partitions");
    std::fs::create_dir_all(&moved).unwrap();
    for p in &all_kept {
        std::fs::rename(parts.join(p), moved.join(p)).unwrap();
    }
    let out = c.walkeeper(&["backup-fetch", "--delta", data.to_str().unwrap(), &name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("skipped={}", all_kept.len())),
        "{}",
        stderr(&out)
    );
    // A full restore does need them: the archive really lacks them.
    let full = c.dir("full");
    let out = c.walkeeper(&["backup-fetch", full.to_str().unwrap(), &name]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    chown_pg_recursive(&data);
    let mut auto = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.auto.conf"))
        .unwrap();
    writeln!(
        auto,
        "restore_command = '{} --envdir {} wal-fetch %f %p'",
        walkeeper(),
        c.env.display()
    )
    .unwrap();
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    c.primary.start();
    wait_until("recovery to finish", Duration::from_secs(300), || {
        c.primary.psql("SELECT pg_is_in_recovery()") == "f"
    });
    assert_eq!(
        c.primary
            .psql("SELECT sum(abalance), count(*) FROM pgbench_accounts"),
        accounts
    );
    assert_eq!(c.primary.psql("SELECT count(*) FROM later_rows"), "20");
}
