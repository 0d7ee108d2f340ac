//! WAL-G's per-file records of a backup, `basebackups_005/<name>/files_metadata.json` (its
//! `FilesMetadataDto`; older WAL-G kept the same `Files` map in the sentinel), and the tar entry
//! names they are keyed by.
//!
//! WAL-G names every data-directory entry `/` + its path relative to the data directory
//! (`/global/pg_control`), except `backup_label` and `tablespace_map`, which it names bare.
//! Its backup-fetch restores only the regular files that `Files` lists (plus those three), by
//! exact name, and a delta backup takes the unchanged files from its base by the same names:
//! so walkeeper writes both the names and the map the way WAL-G does.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::BACKUP_FOLDER;
use crate::error::{Error, Result};

pub const FILES_METADATA: &str = "files_metadata.json";

/// Names WAL-G always restores, whether `Files` lists them or not.
pub const UTILITY_FILES: [&str; 3] = ["/global/pg_control", "backup_label", "tablespace_map"];

pub fn files_metadata_key(backup: &str) -> String {
    format!("{BACKUP_FOLDER}/{backup}/{FILES_METADATA}")
}

/// The tar entry name WAL-G gives a path relative to the data directory.
pub fn entry_name(rel: &str) -> String {
    format!("/{}", rel.trim_start_matches('/'))
}

/// A tar entry name (either tool's) as a path relative to the data directory: leading `/` and
/// `.` components dropped. None for a name that climbs out (`..`) or names the directory itself.
pub fn relative(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// `files_metadata.json`. Unknown fields (`DatabasesByNames`, for WAL-G's partial restore) are
/// ignored on reading and not written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilesMetadata {
    #[serde(
        rename = "Files",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub files: BTreeMap<String, FileDescription>,
    /// Tar object name (`part_001.tar.lz4`) → the entry names it holds.
    #[serde(
        rename = "TarFileSets",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tar_file_sets: BTreeMap<String, Vec<String>>,
}

/// WAL-G's `BackupFileDescription`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileDescription {
    #[serde(rename = "IsIncremented", default)]
    pub is_incremented: bool,
    #[serde(rename = "IsSkipped", default)]
    pub is_skipped: bool,
    /// The file's modification time when it was read, to the nanosecond: WAL-G's delta backup
    /// skips a file whose time is equal.
    #[serde(rename = "MTime", default, with = "go_time")]
    pub mtime: Option<DateTime<FixedOffset>>,
    #[serde(rename = "UpdatesCount", default)]
    pub updates_count: u64,
    /// WAL-G's `CorruptBlocks`: pages whose checksum failed while the backup read them.
    #[serde(
        rename = "CorruptBlocks",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub corrupt_blocks: Option<super::pages::CorruptBlocks>,
    /// The file's size when it was read (newer WAL-G writes it too).
    #[serde(rename = "Size", default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
}

impl FileDescription {
    /// A file stored whole in a full backup.
    pub fn full(mtime: DateTime<Utc>, size: u64) -> Self {
        FileDescription {
            mtime: Some(mtime.fixed_offset()),
            size: Some(size as i64),
            ..Default::default()
        }
    }
}

fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Go's `time.Time` in JSON: RFC 3339 with up to nine fraction digits; the zero time
/// (`0001-01-01T00:00:00Z`) for none.
mod go_time {
    use super::*;

    const ZERO: &str = "0001-01-01T00:00:00Z";

    pub fn serialize<S: Serializer>(
        t: &Option<DateTime<FixedOffset>>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            None => s.serialize_str(ZERO),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<DateTime<FixedOffset>>, D::Error> {
        use serde::de::Error as _;
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s == ZERO => Ok(None),
            Some(s) => DateTime::parse_from_rfc3339(&s)
                .map(Some)
                .map_err(|e| D::Error::custom(format!("MTime {s:?}: {e}"))),
        }
    }
}

impl FilesMetadata {
    /// Parses a `files_metadata.json` read from `key` (named in the error).
    pub fn parse(key: &str, bytes: &[u8]) -> Result<FilesMetadata> {
        serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            key: key.into(),
            msg: format!("unreadable files metadata: {e}"),
        })
    }

    /// The `Files` map older WAL-G versions kept inside the sentinel (None when it has none).
    pub fn from_sentinel(key: &str, bytes: &[u8]) -> Result<Option<FilesMetadata>> {
        #[derive(Deserialize)]
        struct Legacy {
            #[serde(rename = "Files", default)]
            files: Option<BTreeMap<String, FileDescription>>,
        }
        let l: Legacy = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            key: key.into(),
            msg: format!("unreadable sentinel Files: {e}"),
        })?;
        Ok(l.files.map(|files| FilesMetadata {
            files,
            ..Default::default()
        }))
    }

    /// A delta backup: some files are increments of, or are taken from, an earlier backup.
    pub fn is_delta(&self) -> bool {
        self.files
            .values()
            .any(|d| d.is_incremented || d.is_skipped)
    }

    /// The entries this backup must restore, relative to the data directory: WAL-G lists its
    /// regular files and directories (the data directory itself as `/`, which is left out
    /// here). An entry that climbs out (`..`) is an error naming `key`.
    pub fn required(&self, key: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (name, d) in &self.files {
            if name.split('/').any(|c| c == "..") {
                return Err(Error::Corrupt {
                    key: key.into(),
                    msg: format!("file {name:?} is outside the data directory"),
                });
            }
            if let (false, Some(rel)) = (d.is_skipped, relative(name)) {
                out.push(rel);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_g_files_metadata_parses_and_round_trips() {
        let text = r#"{"Files":{"/base/1/1259":{"IsIncremented":false,"IsSkipped":false,
            "MTime":"2024-03-01T10:11:12.123456789+03:00","UpdatesCount":0,
            "CorruptBlocks":{"CorruptBlocksCount":1,"SomeCorruptBlocks":[3]}},
            "/PG_VERSION":{"IsIncremented":false,"IsSkipped":false,"MTime":"0001-01-01T00:00:00Z","UpdatesCount":0}},
            "TarFileSets":{"part_001.tar.lz4":["/base/1/1259","/PG_VERSION"],
            "part_002.tar.lz4":["tablespace_map","backup_label"]},
            "DatabasesByNames":{"postgres":{"oid":5,"tables":{}}}}"#;
        let m = FilesMetadata::parse("k", text.as_bytes()).unwrap();
        let d = &m.files["/base/1/1259"];
        assert_eq!(
            d.mtime.unwrap().timestamp_nanos_opt(),
            DateTime::parse_from_rfc3339("2024-03-01T07:11:12.123456789Z")
                .unwrap()
                .timestamp_nanos_opt()
        );
        assert_eq!(m.files["/PG_VERSION"].mtime, None);
        assert!(!m.is_delta());
        assert_eq!(m.required("k").unwrap(), vec!["PG_VERSION", "base/1/1259"]);
        assert_eq!(m.tar_file_sets["part_002.tar.lz4"].len(), 2);
        let back: FilesMetadata = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        // Nanoseconds survive writing.
        let t = DateTime::parse_from_rfc3339("2026-12-03T15:48:36.000000001Z")
            .unwrap()
            .with_timezone(&Utc);
        let v = serde_json::to_value(FileDescription::full(t, 9)).unwrap();
        assert_eq!(v["MTime"], "2026-12-03T15:48:36.000000001Z");
        assert_eq!(v["IsIncremented"], false);
        assert_eq!(v["UpdatesCount"], 0);
    }

    #[test]
    fn legacy_files_in_the_sentinel_and_deltas_are_recognised() {
        let s = br#"{"LSN":1,"FinishLSN":2,"Files":{"/base/1/2":{"IsIncremented":true,"IsSkipped":false,"MTime":"2024-01-01T00:00:00Z"}}}"#;
        let m = FilesMetadata::from_sentinel("k", s).unwrap().unwrap();
        assert!(m.is_delta());
        assert!(FilesMetadata::from_sentinel("k", br#"{"LSN":1}"#)
            .unwrap()
            .is_none());
        assert!(FilesMetadata::from_sentinel("k", br#"{"Files":null}"#)
            .unwrap()
            .is_none());
        let e = FilesMetadata::parse("basebackups_005/b/files_metadata.json", b"{\"Files\":3}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("basebackups_005/b/files_metadata.json"), "{e}");
        let m = FilesMetadata::parse("k", br#"{"Files":{"/../etc/x":{}}}"#).unwrap();
        assert!(m.required("k").is_err());
        // WAL-G lists the data directory itself as "/".
        let m = FilesMetadata::parse("k", br#"{"Files":{"/":{},"/base":{}}}"#).unwrap();
        assert_eq!(m.required("k").unwrap(), vec!["base"]);
    }

    #[test]
    fn entry_names_are_relative_to_the_data_directory() {
        assert_eq!(entry_name("global/pg_control"), "/global/pg_control");
        assert_eq!(
            relative("/global/pg_control").as_deref(),
            Some("global/pg_control")
        );
        assert_eq!(relative("./base//1/").as_deref(), Some("base/1"));
        assert_eq!(relative("backup_label").as_deref(), Some("backup_label"));
        assert_eq!(relative("/"), None);
        assert_eq!(relative("/base/../../etc"), None);
    }

    proptest::proptest! {
        #[test]
        fn files_metadata_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(m) = FilesMetadata::parse("k", &bytes) {
                let _ = m.required("k");
                let _ = m.is_delta();
            }
            let _ = FilesMetadata::from_sentinel("k", &bytes);
        }

        #[test]
        fn files_metadata_fields_of_any_value_never_panic(
            name in "[/.a-z0-9]{0,12}",
            inc in proptest::prop_oneof![proptest::strategy::Just("true".to_string()), proptest::strategy::Just("1".to_string()), "\\PC{0,8}"],
            mtime in proptest::prop_oneof![proptest::strategy::Just("\"0001-01-01T00:00:00Z\"".to_string()), "\"\\PC{0,30}\"", proptest::strategy::Just("null".to_string()), "[0-9]{1,20}"],
        ) {
            let text = format!(r#"{{"Files":{{{name:?}:{{"IsIncremented":{inc},"MTime":{mtime}}}}},"TarFileSets":{{"a":[{name:?}]}}}}"#);
            match FilesMetadata::parse("k", text.as_bytes()) {
                Ok(m) => {
                    if let Ok(req) = m.required("k") {
                        for r in req {
                            proptest::prop_assert!(!r.split('/').any(|c| c == ".." || c.is_empty()));
                        }
                    }
                }
                Err(e) => proptest::prop_assert!(e.to_string().contains("k")),
            }
        }

        #[test]
        fn relative_names_never_climb_out(name in "[/.a]{0,16}") {
            if let Some(r) = relative(&name) {
                proptest::prop_assert!(!r.starts_with('/'));
                proptest::prop_assert!(!r.split('/').any(|c| c == ".." || c == "." || c.is_empty()));
            }
        }
    }
}
