//! Which backup a delta backup is taken from, by WAL-G's rules (`WALG_DELTA_MAX_STEPS`,
//! `WALG_DELTA_ORIGIN`, `--full`, `--delta-from-name`, `--delta-from-user-data`), and what the
//! push needs to know of it: its start LSN and the modification time of each of its files.

use std::collections::HashMap;

use chrono::{DateTime, FixedOffset};

use super::files::{files_metadata_key, FilesMetadata};
use super::{list_backups, sentinel_key, BackupInfo, Format};
use crate::config::DeltaOrigin;
use crate::error::{Error, Result};
use crate::storage::Store;
use crate::wal::Lsn;

/// What backup-push was asked for.
#[derive(Debug, Clone, Default)]
pub struct DeltaRequest {
    /// `WALG_DELTA_MAX_STEPS`: deltas allowed after a full backup (0: always full).
    pub max_steps: u32,
    pub origin: DeltaOrigin,
    /// `--full`: a full backup whatever else is set.
    pub full: bool,
    /// `--delta-from-name NAME`: this backup is the base.
    pub from_name: Option<String>,
    /// `--delta-from-user-data DATA`: the backup whose user data is this is the base.
    pub from_user_data: Option<serde_json::Value>,
}

impl DeltaRequest {
    fn explicit(&self) -> bool {
        self.from_name.is_some() || self.from_user_data.is_some()
    }
}

/// The base of a delta backup.
#[derive(Debug, Clone)]
pub struct DeltaBase {
    pub name: String,
    /// The base's start LSN: pages at or past it are stored.
    pub start_lsn: Lsn,
    /// The full backup the chain starts from.
    pub full_name: String,
    /// This delta's place in the chain (1 for a delta of a full backup).
    pub count: u32,
    /// The base's files by tar entry name, with the modification time it recorded: a file whose
    /// time is unchanged is not stored again.
    pub files: HashMap<String, Option<DateTime<FixedOffset>>>,
}

impl DeltaBase {
    /// The delta's name: `base_<its start segment>_D_<the base's start segment>`, as WAL-G
    /// names it.
    pub fn delta_name(&self, full_name: &str) -> String {
        let base_segment = self.name.get(5..29).unwrap_or_default();
        format!("{full_name}_D_{base_segment}")
    }
}

/// The server a backup is about to be taken of.
#[derive(Debug, Clone, Copy)]
pub struct Server {
    pub system_identifier: u64,
    pub version_num: i64,
}

/// Chooses the base for a backup of `server`, or None for a full backup (saying why in the
/// log). A base the user named that cannot be used is an error; one chosen by the settings
/// falls back to a full backup, as WAL-G does.
pub async fn choose_base(
    store: &Store,
    req: &DeltaRequest,
    permanent: bool,
    server: Server,
) -> Result<Option<DeltaBase>> {
    if req.full {
        tracing::info!("full backup asked for (--full)");
        return Ok(None);
    }
    if !req.explicit() && req.max_steps == 0 {
        return Ok(None);
    }
    let all = list_backups(store).await?;
    let (base, count) = if let Some(name) = &req.from_name {
        let b = all.iter().find(|b| &b.name == name).ok_or_else(|| {
            Error::BadInput(format!(
                "--delta-from-name {name}: no complete backup of that name in {}",
                store.description
            ))
        })?;
        (b.clone(), b.delta_count.unwrap_or(0) + 1)
    } else if let Some(data) = &req.from_user_data {
        let b = by_user_data(store, &all, data).await?;
        (b.clone(), b.delta_count.unwrap_or(0) + 1)
    } else {
        let Some(latest) = all.last() else {
            tracing::info!("no backup yet to take a delta from: full backup");
            return Ok(None);
        };
        let count = latest.delta_count.unwrap_or(0) + 1;
        if count > req.max_steps {
            tracing::info!(
                latest = latest.name,
                max_steps = req.max_steps,
                "WALG_DELTA_MAX_STEPS reached: full backup"
            );
            return Ok(None);
        }
        if !permanent && req.origin == DeltaOrigin::Latest && latest.is_permanent {
            tracing::info!(
                latest = latest.name,
                "a delta is not taken from a permanent backup: full backup"
            );
            return Ok(None);
        }
        let base = match (req.origin, &latest.delta_full_name) {
            (DeltaOrigin::LatestFull, Some(full)) => match all.iter().find(|b| &b.name == full) {
                Some(b) => b.clone(),
                None => {
                    tracing::warn!(
                        latest = latest.name,
                        full,
                        "the full backup of the newest chain is gone: full backup"
                    );
                    return Ok(None);
                }
            },
            _ => latest.clone(),
        };
        (base, count)
    };
    match usable(store, &base, server).await {
        Ok(files) => {
            let full_name = base
                .delta_full_name
                .clone()
                .unwrap_or_else(|| base.name.clone());
            tracing::info!(base = base.name, start_lsn = %base.start_lsn, count, "delta backup");
            Ok(Some(DeltaBase {
                name: base.name.clone(),
                start_lsn: base.start_lsn,
                full_name,
                count,
                files,
            }))
        }
        Err(why) if req.explicit() => Err(Error::BadInput(format!(
            "backup {} cannot be the base of a delta: {why}",
            base.name
        ))),
        Err(why) => {
            tracing::info!(base = base.name, "{why}: full backup");
            Ok(None)
        }
    }
}

/// The backup whose user data equals `data` (WAL-G's user data selector): exactly one.
async fn by_user_data<'a>(
    store: &Store,
    all: &'a [BackupInfo],
    data: &serde_json::Value,
) -> Result<&'a BackupInfo> {
    let mut found = Vec::new();
    for b in all.iter().filter(|b| b.format == Format::WalG) {
        let key = sentinel_key(&b.name);
        let bytes = match store.get_bytes(&key).await {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        if super::Sentinel::parse(&key, &bytes)?.user_data.as_ref() == Some(data) {
            found.push(b);
        }
    }
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::BadInput(format!(
            "--delta-from-user-data: no backup has the user data {data}"
        ))),
        many => Err(Error::BadInput(format!(
            "--delta-from-user-data: {} backups have the user data {data} ({}); name one with \
             --delta-from-name",
            many.len(),
            many.iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The base's recorded files, or why it cannot be a base for this server.
async fn usable(
    store: &Store,
    base: &BackupInfo,
    server: Server,
) -> std::result::Result<HashMap<String, Option<DateTime<FixedOffset>>>, String> {
    if base.format != Format::WalG {
        return Err("it is a WAL-E backup (no per-file records)".into());
    }
    if base.system_identifier != Some(server.system_identifier) {
        return Err(format!(
            "it is of another cluster (system identifier {:?}, this server's is {})",
            base.system_identifier, server.system_identifier
        ));
    }
    if base.pg_version.is_some_and(|v| v != server.version_num) {
        return Err(format!(
            "it is of PostgreSQL {:?}, this server is {}",
            base.pg_version, server.version_num
        ));
    }
    let key = files_metadata_key(&base.name);
    let meta = match store.get_bytes(&key).await {
        Ok(b) => FilesMetadata::parse(&key, &b).map_err(|e| e.to_string())?,
        Err(Error::NotFound { .. }) => {
            let skey = sentinel_key(&base.name);
            let bytes = store.get_bytes(&skey).await.map_err(|e| e.to_string())?;
            FilesMetadata::from_sentinel(&skey, &bytes)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("it has no {}", super::files::FILES_METADATA))?
        }
        Err(e) => return Err(e.to_string()),
    };
    if meta.files.is_empty() {
        return Err(format!(
            "its {} lists no files",
            super::files::FILES_METADATA
        ));
    }
    Ok(meta
        .files
        .into_iter()
        .map(|(name, d)| (name, d.mtime))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_named_after_their_base_segment_as_wal_g_names_them() {
        let base = DeltaBase {
            name: "base_000000010000000000000004_D_000000010000000000000002".into(),
            start_lsn: Lsn(0),
            full_name: "base_000000010000000000000002".into(),
            count: 2,
            files: HashMap::new(),
        };
        assert_eq!(
            base.delta_name("base_000000010000000000000009"),
            "base_000000010000000000000009_D_000000010000000000000004"
        );
    }
}
