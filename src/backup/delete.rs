//! `delete`: retention. Dry run by default; every key is printed before anything is deleted.
//!
//! A backup's sentinel goes first (it stops being listed), then its objects. WAL is deleted only
//! below the oldest kept backup's start, so every kept backup can still be restored to the
//! newest point; `.history` files are kept (they are tiny and any timeline may need them).
//! Deleting a key twice is not an error, so two runs at once are safe.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    list_backups, sentinel_key, BackupInfo, BACKUP_FOLDER, DEFAULT_SEG_SIZE, SENTINEL_SUFFIX,
};
use crate::error::{Error, Result};
use crate::storage::Store;
use crate::wal::names::{WalName, WAL_FOLDER};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retention {
    /// Keep the newest N backups.
    Retain(usize),
    /// Keep the newest N backups and every backup younger than the age (the agent's policy).
    RetainYoung(usize, chrono::Duration),
    /// Keep this backup and the newer ones.
    Before(String),
    /// Delete every backup and all WAL.
    Everything,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub kept: Vec<String>,
    pub deleted_backups: Vec<String>,
    /// Keys in the order they will be deleted.
    pub keys: Vec<String>,
}

pub async fn plan(store: &Store, retention: &Retention) -> Result<Plan> {
    let backups = list_backups(store).await?;
    let kept: Vec<&BackupInfo> = match retention {
        Retention::Retain(0) => {
            return Err(Error::BadInput(
                "retain 0 would delete every backup; say `delete everything`".into(),
            ))
        }
        Retention::Retain(n) => backups.iter().rev().take(*n).collect(),
        Retention::RetainYoung(0, _) => {
            return Err(Error::BadInput(
                "retain 0 would delete every backup; say `delete everything`".into(),
            ))
        }
        Retention::RetainYoung(n, min_age) => {
            let young = chrono::Utc::now() - *min_age;
            backups
                .iter()
                .enumerate()
                .filter(|(i, b)| *i + n >= backups.len() || b.end_time() >= young)
                .map(|(_, b)| b)
                .collect()
        }
        Retention::Before(name) => {
            let idx = backups
                .iter()
                .position(|b| &b.name == name)
                .ok_or_else(|| {
                    Error::BadInput(format!("backup {name:?} not found (or incomplete)"))
                })?;
            backups[idx..].iter().collect()
        }
        Retention::Everything => Vec::new(),
    };
    let kept_names: BTreeSet<&str> = kept.iter().map(|b| b.name.as_str()).collect();
    // The oldest WAL position a kept backup needs.
    let floor = kept.iter().map(|b| (b.start_lsn.0, b.seg_size)).min();

    let mut plan = Plan {
        kept: kept.iter().map(|b| b.name.clone()).collect(),
        ..Default::default()
    };
    // Group every object under basebackups_005 by backup name.
    let mut folders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, _) in store.list(BACKUP_FOLDER).await? {
        let rest = key
            .strip_prefix(&format!("{BACKUP_FOLDER}/"))
            .unwrap_or(&key);
        let name = rest
            .strip_suffix(SENTINEL_SUFFIX)
            .unwrap_or_else(|| rest.split('/').next().unwrap_or(rest));
        folders
            .entry(name.to_string())
            .or_default()
            .push(key.clone());
    }
    let complete: BTreeSet<&str> = backups.iter().map(|b| b.name.as_str()).collect();
    for (name, keys) in &folders {
        let delete = if complete.contains(name.as_str()) {
            !kept_names.contains(name.as_str())
        } else {
            // Incomplete (no sentinel): a failed push, or one still running. Only leftovers
            // older than everything kept are removed.
            match (floor, backup_start_segno(name)) {
                (None, _) => true,
                (Some((lsn, seg)), Some(segno)) => segno < lsn / seg.get(),
                _ => false,
            }
        };
        if !delete {
            continue;
        }
        if complete.contains(name.as_str()) {
            plan.deleted_backups.push(name.clone());
            plan.keys.push(sentinel_key(name));
        }
        plan.keys
            .extend(keys.iter().filter(|k| **k != sentinel_key(name)).cloned());
    }
    // WAL below the floor (all of it for `everything`).
    for (key, _) in store.list(WAL_FOLDER).await? {
        let file = key.rsplit('/').next().unwrap_or("");
        let base = file.rsplit_once('.').map(|(b, _)| b).unwrap_or(file);
        let Ok(wal) = WalName::parse(base) else {
            continue;
        };
        let delete = match (floor, &wal) {
            (None, _) => true,
            (Some(_), WalName::History(_)) => false,
            (
                Some((lsn, seg_size)),
                WalName::Segment(s) | WalName::Partial(s) | WalName::Backup(s, _),
            ) => s.segno(seg_size) < lsn / seg_size.get(),
        };
        if delete {
            plan.keys.push(key);
        }
    }
    Ok(plan)
}

fn backup_start_segno(name: &str) -> Option<u64> {
    let seg = name.strip_prefix("base_")?.get(0..24)?;
    WalName::parse(seg)
        .ok()?
        .segment()
        .map(|s| s.segno(DEFAULT_SEG_SIZE))
}

/// Deletes the planned keys in order. Missing keys are fine (another run got there first).
pub async fn execute(store: &Store, plan: &Plan) -> Result<usize> {
    for key in &plan.keys {
        store.delete(key).await?;
    }
    Ok(plan.keys.len())
}
