//! Base backups in WAL-G's layout (and WAL-E's, for reading).
//!
//! ```text
//! basebackups_005/<name>_backup_stop_sentinel.json      written last: a backup without it does not exist
//! basebackups_005/<name>/metadata.json
//! basebackups_005/<name>/files_metadata.json            every regular file, by tar entry name
//! basebackups_005/<name>/tar_partitions/part_001.tar.lz4 …
//! basebackups_005/<name>/tar_partitions/part_<N>.tar.lz4  the last one: backup_label, tablespace_map
//! basebackups_005/<name>/tar_partitions/pg_control.tar.lz4
//! ```
//!
//! Entries are named `/` + the path relative to the data directory, as WAL-G names them.
//! Backups walkeeper wrote before it followed WAL-G there (relative names, and
//! `backup_label.tar.<ext>` instead of the last part) are read too.

pub mod branches;
pub mod delete;
pub mod delta;
pub mod fetch;
pub mod files;
pub mod increment;
pub mod list_text;
pub mod offline;
pub mod pages;
pub mod pg;
pub mod pgtls;
pub mod push;
pub mod restore;
pub mod seed;
pub mod verify;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::Store;
use crate::wal::names::{SegmentId, WalSegSize};
use crate::wal::Lsn;

pub use crate::archive::{BACKUP_FOLDER, SENTINEL_SUFFIX};
/// PostgreSQL's default; backups record the real size where they know it.
pub const DEFAULT_SEG_SIZE: WalSegSize = WalSegSize::DEFAULT;

/// WAL-G's tablespace spec: `base_prefix`, `tablespaces` (names), and one `{loc, link}` per name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TablespaceSpec {
    pub base_prefix: String,
    /// symlink name (the OID under pg_tblspc) → location
    pub tablespaces: BTreeMap<String, TablespaceLocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceLocation {
    pub loc: String,
    pub link: String,
}

impl Serialize for TablespaceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2 + self.tablespaces.len()))?;
        m.serialize_entry("base_prefix", &self.base_prefix)?;
        let names: Vec<&String> = self.tablespaces.keys().collect();
        m.serialize_entry("tablespaces", &names)?;
        for (k, v) in &self.tablespaces {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for TablespaceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut raw: BTreeMap<String, serde_json::Value> = BTreeMap::deserialize(d)?;
        let base_prefix = raw
            .remove("base_prefix")
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let names: Vec<String> = match raw.remove("tablespaces") {
            Some(v) => serde_json::from_value(v).map_err(D::Error::custom)?,
            None => Vec::new(),
        };
        let mut tablespaces = BTreeMap::new();
        for n in names {
            let v = raw
                .remove(&n)
                .ok_or_else(|| D::Error::custom(format!("tablespace {n} has no location")))?;
            tablespaces.insert(n, serde_json::from_value(v).map_err(D::Error::custom)?);
        }
        Ok(TablespaceSpec {
            base_prefix,
            tablespaces,
        })
    }
}

/// The stop sentinel (WAL-G's fields, plus the V2 fields WAL-G also writes).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sentinel {
    #[serde(rename = "LSN")]
    pub start_lsn: Lsn,
    #[serde(rename = "Timeline", default)]
    pub timeline: u32,
    /// A delta backup: the start LSN of the backup it was taken from (WAL-G's
    /// `IncrementFromLSN`; older WAL-G wrote `DeltaFromLSN`).
    #[serde(
        rename = "DeltaLSN",
        alias = "DeltaFromLSN",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub delta_lsn: Option<Lsn>,
    /// A delta backup: the backup it was taken from (WAL-G's `IncrementFrom`).
    #[serde(rename = "DeltaFrom", default, skip_serializing_if = "Option::is_none")]
    pub delta_from: Option<String>,
    /// A delta backup: the full backup its chain starts from (WAL-G's `IncrementFullName`).
    #[serde(
        rename = "DeltaFullName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub delta_full_name: Option<String>,
    /// A delta backup: how many deltas since the full backup, this one included.
    #[serde(
        rename = "DeltaCount",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub delta_count: Option<u32>,
    #[serde(rename = "FinishLSN")]
    pub finish_lsn: Lsn,
    #[serde(
        rename = "SystemIdentifier",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub system_identifier: Option<u64>,
    #[serde(rename = "PgVersion", default)]
    pub pg_version: i64,
    #[serde(rename = "UncompressedSize", default)]
    pub uncompressed_size: i64,
    #[serde(rename = "CompressedSize", default)]
    pub compressed_size: i64,
    /// WAL-G's `DataCatalogSize`: the bytes of the data directory the backup walked (for a
    /// delta, the whole database, not what it stored).
    #[serde(
        rename = "DataCatalogSize",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub data_catalog_size: Option<i64>,
    #[serde(rename = "Spec", default)]
    pub spec: Option<TablespaceSpec>,
    #[serde(rename = "UserData", default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<serde_json::Value>,
    #[serde(rename = "Version", default)]
    pub version: i64,
    #[serde(rename = "StartTime", default)]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(rename = "FinishTime", default)]
    pub finish_time: Option<DateTime<Utc>>,
    #[serde(rename = "DateFmt", default)]
    pub date_fmt: String,
    #[serde(rename = "Hostname", default)]
    pub hostname: String,
    #[serde(rename = "DataDir", default)]
    pub data_dir: String,
    #[serde(rename = "IsPermanent", default)]
    pub is_permanent: bool,
    /// walkeeper's own: how many `part_NNN` partitions the backup has, so a lost one is noticed.
    #[serde(
        rename = "TarPartitions",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tar_partitions: Option<u32>,
    /// walkeeper's own: the WAL segment size, so LSN arithmetic never assumes 16 MiB.
    #[serde(
        rename = "WalSegmentSize",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub wal_segment_size: Option<WalSegSize>,
    /// What page checksum verification found while the backup read the data directory
    /// (walkeeper's own field; absent when it did not verify).
    #[serde(
        rename = "PageChecksums",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub page_checksums: Option<pages::ChecksumReport>,
}

impl Sentinel {
    /// Parses a stop sentinel read from `key` (named in the error, as is a bad field such as a
    /// `WalSegmentSize` that is not a segment size, or a delta's base without its LSN).
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Sentinel> {
        let s: Sentinel = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            key: key.into(),
            msg: format!("unreadable sentinel: {e}"),
        })?;
        // WAL-G's rule (`IsIncremental`): a delta has its base's LSN, full name and count too.
        if s.delta_from.is_some()
            && (s.delta_lsn.is_none() || s.delta_full_name.is_none() || s.delta_count.is_none())
        {
            return Err(Error::Corrupt {
                key: key.into(),
                msg: "inconsistent delta backup sentinel: DeltaFrom without DeltaLSN, \
                      DeltaFullName or DeltaCount"
                    .into(),
            });
        }
        Ok(s)
    }
}

impl Metadata {
    /// Parses a `metadata.json` read from `key` (named in the error).
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Metadata> {
        serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            key: key.into(),
            msg: format!("unreadable backup metadata: {e}"),
        })
    }
}

/// `metadata.json` (WAL-G's ExtendedMetadataDto).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metadata {
    pub start_time: DateTime<Utc>,
    pub finish_time: DateTime<Utc>,
    pub date_fmt: String,
    pub hostname: String,
    pub data_dir: String,
    pub pg_version: i64,
    pub start_lsn: Lsn,
    pub finish_lsn: Lsn,
    pub is_permanent: bool,
    pub system_identifier: Option<u64>,
    /// walkeeper's own field: WAL-G's metadata.json has none (0 when read from one).
    #[serde(default)]
    pub timeline: u32,
    pub uncompressed_size: i64,
    pub compressed_size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<serde_json::Value>,
}

/// WAL-E's sentinel, for reading WAL-E archives.
#[derive(Debug, Clone, Deserialize)]
struct WalESentinel {
    wal_segment_backup_stop: String,
    wal_segment_offset_backup_stop: String,
    #[serde(default)]
    expanded_size_bytes: Option<i64>,
    #[serde(default)]
    spec: Option<TablespaceSpec>,
}

/// Which tool wrote a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    WalG,
    WalE,
}

/// A complete backup (one with a sentinel), as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupInfo {
    pub name: String,
    pub format: Format,
    pub last_modified: DateTime<Utc>,
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub finish_lsn: Lsn,
    pub start_segment: String,
    pub start_offset: u64,
    pub stop_segment: String,
    pub stop_offset: u64,
    pub expanded_size_bytes: Option<i64>,
    pub compressed_size: Option<i64>,
    pub seg_size: WalSegSize,
    pub finish_time: Option<DateTime<Utc>>,
    pub system_identifier: Option<u64>,
    pub pg_version: Option<i64>,
    pub spec: Option<TablespaceSpec>,
    pub tar_partitions: Option<u32>,
    /// Marked permanent (`backup-push --permanent`): retention keeps it and the WAL from its
    /// start to its stop segment; only `delete everything --force` removes it.
    #[serde(default)]
    pub is_permanent: bool,
    /// Pages whose checksum failed while the backup read them (None: not verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt_pages: Option<u64>,
    /// The size of the data directory the backup was taken of (WAL-G's `DataCatalogSize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_catalog_size: Option<i64>,
    /// A delta backup: the backup it was taken from, and the start LSN of that backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_lsn: Option<Lsn>,
    /// A delta backup: the full backup its chain starts from, and its place in the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_full_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_count: Option<u32>,
}

impl BackupInfo {
    /// When the backup became consistent: its finish time, or the sentinel's upload time.
    pub fn end_time(&self) -> DateTime<Utc> {
        self.finish_time.unwrap_or(self.last_modified)
    }

    /// The size of the database the backup restores: the data directory it walked, else what
    /// it stored (for a full backup, the same).
    pub fn database_size(&self) -> Option<i64> {
        self.data_catalog_size.or(self.expanded_size_bytes)
    }

    /// Whether this is a delta backup (restored on top of the backups it was taken from).
    pub fn is_delta(&self) -> bool {
        self.delta_from.is_some()
    }
}

/// The backups a restore of `info` needs, oldest (the full backup) first and `info` last, found
/// in `all` by each delta's `DeltaFrom`. A base that is missing, or a loop, is an error naming
/// the backup that needs it.
pub fn delta_chain(all: &[BackupInfo], info: &BackupInfo) -> Result<Vec<BackupInfo>> {
    let mut chain = vec![info.clone()];
    while let Some(from) = chain.last().and_then(|b| b.delta_from.clone()) {
        let needer = chain.last().map(|b| b.name.clone()).unwrap_or_default();
        if chain.iter().any(|b| b.name == from) || chain.len() > all.len() {
            return Err(Error::Corrupt {
                key: sentinel_key(&needer),
                msg: format!("the delta chain loops back to {from}"),
            });
        }
        let base = all
            .iter()
            .find(|b| b.name == from)
            .ok_or_else(|| Error::Corrupt {
                key: sentinel_key(&needer),
                msg: format!(
                    "delta backup {needer} needs its base {from}, which is not in the archive \
                     (deleted, or incomplete)"
                ),
            })?;
        chain.push(base.clone());
    }
    chain.reverse();
    Ok(chain)
}

pub fn sentinel_key(name: &str) -> String {
    format!("{BACKUP_FOLDER}/{name}{SENTINEL_SUFFIX}")
}

pub fn parts_prefix(name: &str) -> String {
    format!("{BACKUP_FOLDER}/{name}/tar_partitions")
}

/// Whether `name` has the form of a backup name: `base_<segment>` (WAL-G) or
/// `base_<segment>_<offset>` (WAL-E).
pub fn is_backup_name(name: &str) -> bool {
    parse_name(name).is_some()
}

/// Parses `base_<24 hex>` (WAL-G), `base_<24 hex>_D_<24 hex>` (a WAL-G delta, named after its
/// base's segment) or `base_<24 hex>_<8 digits>` (WAL-E).
pub(crate) fn parse_name(name: &str) -> Option<(SegmentId, Option<u64>, Format)> {
    let rest = name.strip_prefix("base_")?;
    let seg = rest.get(0..24)?;
    let crate::wal::names::WalName::Segment(id) = crate::wal::names::WalName::parse(seg).ok()?
    else {
        return None;
    };
    match rest.get(24..) {
        Some("") => Some((id, None, Format::WalG)),
        Some(delta) if delta.starts_with("_D_") => {
            let base = delta.get(3..)?;
            let crate::wal::names::WalName::Segment(_) =
                crate::wal::names::WalName::parse(base).ok()?
            else {
                return None;
            };
            (base.len() == 24).then_some((id, None, Format::WalG))
        }
        Some(off) if off.len() == 9 && off.starts_with('_') => {
            off[1..].parse().ok().map(|o| (id, Some(o), Format::WalE))
        }
        _ => None,
    }
}

/// Lists complete backups, oldest first. Reads only the top level of `basebackups_005/` (one
/// listing call with a delimiter) and each sentinel; never `wal_005/`.
pub async fn list_backups(store: &Store) -> Result<Vec<BackupInfo>> {
    let entries = store.list_top(BACKUP_FOLDER).await?;
    let mut out = Vec::new();
    for (key, meta) in entries {
        let Some(file) = key.rsplit('/').next() else {
            continue;
        };
        let Some(name) = file.strip_suffix(SENTINEL_SUFFIX) else {
            continue;
        };
        let Some((seg, offset, format)) = parse_name(name) else {
            continue;
        };
        let bytes = match store.get_bytes(&key).await {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => continue, // deleted while listing
            Err(e) => return Err(e),
        };
        let info = match format {
            Format::WalG => {
                let s = Sentinel::parse(&key, &bytes)?;
                let seg_size = s.wal_segment_size.unwrap_or(DEFAULT_SEG_SIZE);
                let timeline = if s.timeline > 0 {
                    s.timeline
                } else {
                    seg.timeline
                };
                let stop = s.finish_lsn.prev_segment(timeline, seg_size);
                BackupInfo {
                    name: name.to_string(),
                    format,
                    last_modified: meta.last_modified,
                    timeline,
                    start_lsn: s.start_lsn,
                    finish_lsn: s.finish_lsn,
                    start_segment: seg.name(),
                    start_offset: s.start_lsn.0 % seg_size.get(),
                    stop_segment: stop.name(),
                    stop_offset: s.finish_lsn.0 - stop.start_lsn(seg_size),
                    expanded_size_bytes: Some(s.uncompressed_size),
                    compressed_size: Some(s.compressed_size),
                    seg_size,
                    finish_time: s.finish_time,
                    system_identifier: s.system_identifier,
                    pg_version: Some(s.pg_version),
                    spec: s.spec,
                    tar_partitions: s.tar_partitions,
                    is_permanent: s.is_permanent,
                    corrupt_pages: s.page_checksums.as_ref().map(|c| c.corrupt_pages),
                    data_catalog_size: s.data_catalog_size,
                    delta_from: s.delta_from,
                    delta_lsn: s.delta_lsn,
                    delta_full_name: s.delta_full_name,
                    delta_count: s.delta_count,
                }
            }
            Format::WalE => {
                let s: WalESentinel =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                        key: key.clone(),
                        msg: format!("WAL-E sentinel is not valid JSON: {e}"),
                    })?;
                let seg_size = DEFAULT_SEG_SIZE;
                let start_offset = offset.unwrap_or(0);
                let stop_seg = crate::wal::names::WalName::parse(&s.wal_segment_backup_stop)
                    .ok()
                    .and_then(|w| w.segment())
                    .ok_or_else(|| Error::Corrupt {
                        key: key.clone(),
                        msg: "bad wal_segment_backup_stop".into(),
                    })?;
                let stop_offset: u64 = s.wal_segment_offset_backup_stop.parse().unwrap_or(0);
                BackupInfo {
                    name: name.to_string(),
                    format,
                    last_modified: meta.last_modified,
                    timeline: seg.timeline,
                    start_lsn: Lsn(seg.start_lsn(seg_size) + start_offset),
                    finish_lsn: Lsn(stop_seg.start_lsn(seg_size) + stop_offset),
                    start_segment: seg.name(),
                    start_offset,
                    stop_segment: stop_seg.name(),
                    stop_offset,
                    expanded_size_bytes: s.expanded_size_bytes,
                    compressed_size: None,
                    seg_size,
                    finish_time: None,
                    system_identifier: None,
                    pg_version: None,
                    spec: s.spec,
                    tar_partitions: None,
                    is_permanent: false,
                    corrupt_pages: None,
                    data_catalog_size: None,
                    delta_from: None,
                    delta_lsn: None,
                    delta_full_name: None,
                    delta_count: None,
                }
            }
        };
        out.push(info);
    }
    out.sort_by(|a, b| {
        (a.end_time(), a.finish_lsn, &a.name).cmp(&(b.end_time(), b.finish_lsn, &b.name))
    });
    Ok(out)
}

/// Finds `LATEST` or a named backup.
pub async fn resolve(store: &Store, which: &str) -> Result<BackupInfo> {
    resolve_in(&list_backups(store).await?, which, &store.description)
}

/// Finds `LATEST` or a named backup among `all` (oldest first, as listed) of the store
/// described by `store`.
pub fn resolve_in(all: &[BackupInfo], which: &str, store: &str) -> Result<BackupInfo> {
    if which.eq_ignore_ascii_case("LATEST") {
        return all.last().cloned().ok_or_else(|| {
            Error::BadInput(format!("{store}: the archive holds no complete backup"))
        });
    }
    all.iter()
        .find(|b| b.name == which)
        .cloned()
        .ok_or_else(|| {
            Error::BadInput(format!(
                "backup {which:?} not found in {store} (or it has no sentinel: incomplete)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_of_both_tools_parse() {
        assert!(matches!(
            parse_name("base_000000010000000000000002"),
            Some((_, None, Format::WalG))
        ));
        assert!(matches!(
            parse_name("base_000000010000000000000002_00000040"),
            Some((_, Some(40), Format::WalE))
        ));
        assert!(parse_name("base_0000000100000000000002").is_none());
        assert!(matches!(
            parse_name("base_000000010000000000000009_D_000000010000000000000002"),
            Some((_, None, Format::WalG))
        ));
        assert!(parse_name("base_000000010000000000000009_D_0000000100000000000002").is_none());
        assert!(parse_name("base_000000010000000000000009_D_").is_none());
        assert!(parse_name("notabackup").is_none());
    }

    #[test]
    fn tablespace_spec_uses_wal_g_json_shape() {
        let mut spec = TablespaceSpec {
            base_prefix: "/pg/data".into(),
            ..Default::default()
        };
        spec.tablespaces.insert(
            "16384".into(),
            TablespaceLocation {
                loc: "/pg/ts1".into(),
                link: "pg_tblspc/16384".into(),
            },
        );
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["base_prefix"], "/pg/data");
        assert_eq!(v["tablespaces"][0], "16384");
        assert_eq!(v["16384"]["loc"], "/pg/ts1");
        let back: TablespaceSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn sentinels_with_a_bad_segment_size_are_errors_naming_the_key() {
        for size in ["0", "3221225472", "12345", "-1"] {
            let text = format!(r#"{{"LSN":1,"FinishLSN":2,"WalSegmentSize":{size}}}"#);
            let e = Sentinel::parse(
                "basebackups_005/base_x_backup_stop_sentinel.json",
                text.as_bytes(),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("basebackups_005/base_x_backup_stop_sentinel.json"),
                "{e}"
            );
        }
        let e = Metadata::parse(
            "basebackups_005/base_x/metadata.json",
            b"{\"start_time\":3}",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("basebackups_005/base_x/metadata.json"), "{e}");
    }

    fn sentinel_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let num = prop_oneof![
            Just(serde_json::json!(0)),
            Just(serde_json::json!(-1)),
            Just(serde_json::json!(1u64 << 24)),
            Just(serde_json::json!(3u64 << 30)),
            any::<u64>().prop_map(|v| serde_json::json!(v)),
            any::<i64>().prop_map(|v| serde_json::json!(v)),
            ".*".prop_map(|v| serde_json::json!(v)),
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(|v| serde_json::json!(v)),
        ];
        const FIELDS: [&str; 14] = [
            "LSN",
            "FinishLSN",
            "Timeline",
            "WalSegmentSize",
            "IsPermanent",
            "TarPartitions",
            "FinishTime",
            "Spec",
            "start_time",
            "finish_time",
            "start_lsn",
            "finish_lsn",
            "is_permanent",
            "timeline",
        ];
        proptest::collection::vec((proptest::sample::select(&FIELDS[..]), num), 0..10).prop_map(
            |kv| {
                serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            },
        )
    }

    proptest::proptest! {
        #[test]
        fn sentinel_and_metadata_parsers_never_panic_on_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = Sentinel::parse("k", &bytes);
            let _ = Metadata::parse("k", &bytes);
        }

        #[test]
        fn sentinel_parser_accepts_only_valid_segment_sizes(v in sentinel_json()) {
            let text = serde_json::to_vec(&v).unwrap();
            let _ = Metadata::parse("k", &text);
            match Sentinel::parse("k", &text) {
                Ok(s) => {
                    if let Some(size) = s.wal_segment_size {
                        let n = size.get();
                        proptest::prop_assert!(n.is_power_of_two() && (WalSegSize::MIN..=WalSegSize::MAX).contains(&n));
                        // LSN arithmetic on it cannot panic.
                        let _ = s.finish_lsn.prev_segment(1, size).name();
                    }
                }
                Err(e) => proptest::prop_assert!(e.to_string().contains("k")),
            }
        }

        #[test]
        fn backup_name_parser_never_panics(name in "\\PC*") {
            let _ = parse_name(&name);
        }

        #[test]
        fn backup_names_round_trip(tli in 1u32.., log in proptest::num::u32::ANY, seg in 0u32..256, off in proptest::option::of(0u64..100_000_000)) {
            let seg_name = format!("{tli:08X}{log:08X}{seg:08X}");
            let name = match off {
                None => format!("base_{seg_name}"),
                Some(o) => format!("base_{seg_name}_{o:08}"),
            };
            let (id, got_off, format) = parse_name(&name).unwrap();
            proptest::prop_assert_eq!(id.name(), seg_name);
            proptest::prop_assert_eq!(got_off, off);
            proptest::prop_assert_eq!(format, if off.is_some() { Format::WalE } else { Format::WalG });
        }

        #[test]
        fn wal_name_parser_never_panics(name in "[0-9A-Fa-f.a-z_]{0,40}", name2 in "\\PC*") {
            let _ = crate::wal::names::WalName::parse(&name);
            let _ = crate::wal::names::WalName::parse(&name2);
        }

        #[test]
        fn wal_segment_names_round_trip(tli in 1u32.., log in proptest::num::u32::ANY, seg in 0u32..256) {
            let name = format!("{tli:08X}{log:08X}{seg:08X}");
            let w = crate::wal::names::WalName::parse(&name).unwrap();
            let s = w.segment().unwrap();
            proptest::prop_assert_eq!(s.name(), name);
            proptest::prop_assert_eq!(
                SegmentId::from_segno(tli, s.segno(WalSegSize::DEFAULT), WalSegSize::DEFAULT),
                s
            );
        }
    }
}
