//! `delete`: retention. Dry run by default; every key is printed before anything is deleted.
//!
//! Rules (retention never deletes what must be kept):
//! - `retain N`, `before NAME` and the agent's policy select the backups to keep; every
//!   permanent backup (`IsPermanent` in its sentinel) is kept as well, and every backup a kept
//!   delta backup is restored over (its chain back to the full backup).
//! - WAL is deleted only below the oldest selected backup's start segment; the segments from
//!   each permanent backup's start to its stop segment are kept too.
//! - `.history` files and backups still being written (parts, no sentinel) are deleted only by
//!   `delete everything`.
//! - With no complete backup to keep, `retain`/`before` refuse (they would empty the archive's
//!   WAL); `delete everything` refuses while a permanent backup exists, unless forced.
//!
//! A backup's sentinel goes first (it stops being listed), then its objects. Deleting a key twice
//! is not an error, so two runs at once are safe.

use std::collections::{BTreeMap, BTreeSet};

use super::{list_backups, sentinel_key, BackupInfo, BACKUP_FOLDER, SENTINEL_SUFFIX};
use crate::error::{Error, Result};
use crate::storage::Store;
use crate::wal::names::{WalName, WalSegSize, WAL_FOLDER};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retention {
    /// Keep the newest N backups.
    Retain(usize),
    /// Keep the newest N backups and every backup younger than the age (the agent's policy).
    RetainYoung(usize, chrono::Duration),
    /// Keep this backup and the newer ones.
    Before(String),
    /// Delete every backup and all WAL; permanent backups only when `force`.
    Everything { force: bool },
    /// WAL-G's `retain N --after TIME|NAME`: keep the newest N backups and every backup that
    /// finished at or after the time (or is the named one or newer).
    RetainAfter(usize, After),
    /// WAL-G's `before TIME`: keep the backups that finished at or after the time.
    BeforeTime(chrono::DateTime<chrono::Utc>),
    /// WAL-G's `retain FULL N [--after TIME|NAME]`: keep the newest N full backups and every
    /// backup after the oldest of them (their deltas), and every backup after `--after`.
    RetainFull(usize, Option<After>),
    /// WAL-G's `target [FIND_FULL] NAME`: delete that backup and the deltas taken from it (with
    /// `find_full`, its whole chain: the full backup it starts from and every delta of that);
    /// never a permanent one; no WAL.
    Target { name: String, find_full: bool },
    /// WAL-G's `garbage`: keep every complete backup; delete the WAL older than the oldest and
    /// the leftovers of failed backups that started before it.
    Garbage,
}

/// `--after`'s argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    Time(chrono::DateTime<chrono::Utc>),
    Name(String),
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub kept: Vec<String>,
    pub deleted_backups: Vec<String>,
    /// Keys in the order they will be deleted.
    pub keys: Vec<String>,
}

/// A segment range (by segment number, inclusive) that a permanent backup needs.
#[derive(Debug, Clone, Copy)]
struct KeptRange {
    first: u64,
    last: u64,
    seg_size: WalSegSize,
}

fn no_backup_to_keep(what: &str) -> Error {
    Error::BadInput(format!(
        "{what}: the archive holds no complete backup to keep, so this would delete all of its WAL; \
         nothing was deleted (to empty the archive, say `delete everything`)"
    ))
}

/// Which complete backups the rule selects (before permanent ones are added).
fn select<'a>(backups: &'a [BackupInfo], retention: &Retention) -> Result<Vec<&'a BackupInfo>> {
    let retain_zero =
        || Error::BadInput("retain 0 would delete every backup; say `delete everything`".into());
    Ok(match retention {
        Retention::Retain(0) | Retention::RetainYoung(0, _) => return Err(retain_zero()),
        Retention::Retain(n) => backups.iter().rev().take(*n).collect(),
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
                    Error::BadInput(format!(
                        "backup {name:?} not found (or incomplete); nothing was deleted"
                    ))
                })?;
            backups[idx..].iter().collect()
        }
        Retention::Everything { .. } => Vec::new(),
        Retention::RetainAfter(n, after) => {
            let first_kept = first_after(backups, after)?;
            backups
                .iter()
                .enumerate()
                .filter(|(i, _)| *i + n >= backups.len() || *i >= first_kept)
                .map(|(_, b)| b)
                .collect()
        }
        Retention::BeforeTime(t) => backups.iter().filter(|b| b.end_time() >= *t).collect(),
        Retention::RetainFull(0, None) => return Err(retain_zero()),
        Retention::RetainFull(n, after) => {
            let fulls: Vec<usize> = (0..backups.len())
                .filter(|i| !backups[*i].is_delta())
                .collect();
            let mut first_kept = match fulls.len().checked_sub(*n) {
                Some(skip) if *n > 0 => fulls.get(skip).copied().unwrap_or(backups.len()),
                Some(_) => backups.len(),
                None => 0,
            };
            if let Some(after) = after {
                first_kept = first_kept.min(first_after(backups, after)?);
            }
            backups[first_kept.min(backups.len())..].iter().collect()
        }
        Retention::Target { name, find_full } => {
            let i = find(backups, name)?;
            let root = match (&backups[i].delta_full_name, find_full) {
                (Some(full), true) => full.clone(),
                _ => name.clone(),
            };
            let doomed: BTreeSet<&str> = backups
                .iter()
                .filter(|b| chain_of(backups, b).iter().any(|n| *n == root))
                .map(|b| b.name.as_str())
                .collect();
            if let Some(p) = backups
                .iter()
                .find(|b| b.is_permanent && doomed.contains(b.name.as_str()))
            {
                return Err(Error::BadInput(format!(
                    "delete target: backup {} is permanent; nothing was deleted (unmark it \
                     first: `backup-mark -i {}`)",
                    p.name, p.name
                )));
            }
            backups
                .iter()
                .filter(|b| !doomed.contains(b.name.as_str()))
                .collect()
        }
        Retention::Garbage => backups.iter().collect(),
    })
}

/// The first backup `--after` keeps (the number of backups when it keeps none).
fn first_after(backups: &[BackupInfo], after: &After) -> Result<usize> {
    Ok(match after {
        After::Time(t) => backups
            .iter()
            .position(|b| b.end_time() >= *t)
            .unwrap_or(backups.len()),
        After::Name(name) => find(backups, name)?,
    })
}

/// The names of the backups a restore of `b` reads: `b`, its base, that one's base, … (as far
/// as they are in `backups`).
fn chain_of<'a>(backups: &'a [BackupInfo], b: &'a BackupInfo) -> Vec<&'a str> {
    let mut chain = vec![b.name.as_str()];
    let mut cur = b;
    while let Some(from) = &cur.delta_from {
        if chain.contains(&from.as_str()) {
            break;
        }
        match backups.iter().find(|x| &x.name == from) {
            Some(base) => {
                chain.push(base.name.as_str());
                cur = base;
            }
            None => break,
        }
    }
    chain
}

fn find(backups: &[BackupInfo], name: &str) -> Result<usize> {
    backups.iter().position(|b| b.name == name).ok_or_else(|| {
        Error::BadInput(format!(
            "backup {name:?} not found (or incomplete); nothing was deleted"
        ))
    })
}

/// The keys retention would delete, in order. Pure: `backups` are the complete backups (oldest
/// first), `backup_keys` every key under `basebackups_005/`, `wal_keys` every key under
/// `wal_005/`.
pub fn plan_keys(
    backups: &[BackupInfo],
    backup_keys: &[String],
    wal_keys: &[String],
    retention: &Retention,
) -> Result<Plan> {
    let everything = matches!(retention, Retention::Everything { .. });
    let target = matches!(retention, Retention::Target { .. });
    let garbage = matches!(retention, Retention::Garbage);
    let mut selected = select(backups, retention)?;
    // A kept delta is restored over its base chain: every backup of it is kept too.
    if !everything {
        let needed: BTreeSet<&str> = selected.iter().flat_map(|b| chain_of(backups, b)).collect();
        selected = backups
            .iter()
            .filter(|b| needed.contains(b.name.as_str()))
            .collect();
    }
    if !everything && !target && selected.is_empty() {
        return Err(no_backup_to_keep(match retention {
            Retention::Before(_) | Retention::BeforeTime(_) => "delete before",
            Retention::Garbage => "delete garbage",
            _ => "delete retain",
        }));
    }
    let permanent: Vec<&BackupInfo> = backups.iter().filter(|b| b.is_permanent).collect();
    if let Retention::Everything { force: false } = retention {
        if !permanent.is_empty() {
            return Err(Error::BadInput(format!(
                "delete everything: the archive holds permanent backups ({}); nothing was deleted \
                 (`delete everything --force` (or FORCE) removes them too)",
                permanent
                    .iter()
                    .map(|b| b.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut kept_names: BTreeSet<&str> = selected.iter().map(|b| b.name.as_str()).collect();
    let mut ranges = Vec::new();
    if !everything {
        for b in &permanent {
            // A permanent delta keeps its base chain too (their data, not their WAL).
            kept_names.extend(chain_of(backups, b));
            if let (Ok(WalName::Segment(start)), Ok(WalName::Segment(stop))) = (
                WalName::parse(&b.start_segment),
                WalName::parse(&b.stop_segment),
            ) {
                ranges.push(KeptRange {
                    first: start.segno(b.seg_size),
                    last: stop.segno(b.seg_size).max(start.segno(b.seg_size)),
                    seg_size: b.seg_size,
                });
            }
        }
    }
    // The oldest WAL position a selected backup needs: everything from there on is kept.
    // `delete target` deletes no WAL (`delete garbage` does, later).
    let floor = selected
        .iter()
        .map(|b| (b.start_lsn.0 / b.seg_size.get(), b.seg_size))
        .min_by_key(|(segno, _)| *segno)
        .filter(|_| !target);

    let mut plan = Plan {
        kept: backups
            .iter()
            .filter(|b| kept_names.contains(b.name.as_str()))
            .map(|b| b.name.clone())
            .collect(),
        ..Default::default()
    };
    // Group every object under basebackups_005 by backup name.
    let mut folders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in backup_keys {
        let rest = key
            .strip_prefix(&format!("{BACKUP_FOLDER}/"))
            .unwrap_or(key);
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
            // No sentinel: a backup still being written (or a failed one). Retention cannot
            // tell them apart, so only `delete everything` removes it; `delete garbage` removes
            // one that started before the oldest complete backup (a new one starts after it).
            everything
                || (garbage
                    && match (super::parse_name(name), floor) {
                        (Some((seg, _, _)), Some((floor_segno, seg_size))) => {
                            seg.segno(seg_size) < floor_segno
                        }
                        _ => false,
                    })
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
    // WAL below the floor and outside every permanent backup's range (all of it for
    // `everything`); never a `.history` file except for `everything`.
    for key in wal_keys {
        let file = key.rsplit('/').next().unwrap_or("");
        let base = file.rsplit_once('.').map(|(b, _)| b).unwrap_or(file);
        let Ok(wal) = WalName::parse(base) else {
            continue;
        };
        let delete = match (&wal, floor) {
            _ if everything => true,
            (WalName::History(_), _) => false,
            (_, None) => false,
            (
                WalName::Segment(s) | WalName::Partial(s) | WalName::Backup(s, _),
                Some((floor_segno, seg_size)),
            ) => {
                s.segno(seg_size) < floor_segno
                    && !ranges.iter().any(|r| {
                        let n = s.segno(r.seg_size);
                        (r.first..=r.last).contains(&n)
                    })
            }
        };
        if delete {
            plan.keys.push(key.clone());
        }
    }
    Ok(plan)
}

pub async fn plan(store: &Store, retention: &Retention) -> Result<Plan> {
    let backups = list_backups(store).await?;
    let backup_keys: Vec<String> = store
        .list(BACKUP_FOLDER)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let wal_keys: Vec<String> = store
        .list(WAL_FOLDER)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    plan_keys(&backups, &backup_keys, &wal_keys, retention)
}

/// WAL-E's obsolete layout versions; `delete old-versions` removes their folders.
pub const OBSOLETE_VERSIONS: [&str; 5] = ["000", "001", "002", "003", "004"];

/// `delete old-versions`: every object under WAL-E's obsolete `basebackups_00N/` and
/// `wal_00N/` folders (N < 5).
pub async fn old_version_plan(store: &Store) -> Result<Plan> {
    let mut plan = Plan::default();
    for v in OBSOLETE_VERSIONS {
        for folder in [format!("basebackups_{v}"), format!("wal_{v}")] {
            plan.keys
                .extend(store.list(&folder).await?.into_iter().map(|(k, _)| k));
        }
    }
    Ok(plan)
}

/// Deletes the planned keys in order. Missing keys are fine (another run got there first).
pub async fn execute(store: &Store, plan: &Plan) -> Result<usize> {
    for key in &plan.keys {
        store.delete(key).await?;
    }
    Ok(plan.keys.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::Format;
    use crate::wal::Lsn;

    const SEG: u64 = 16 << 20;

    /// A backup starting in segment `start` (timeline 1) and stopping in `stop`, finished
    /// `age_h` hours ago.
    fn backup(start: u64, stop: u64, age_h: i64, permanent: bool) -> BackupInfo {
        let seg = |n: u64| format!("00000001{:08X}{:08X}", n / 256, n % 256);
        BackupInfo {
            name: format!("base_{}", seg(start)),
            format: Format::WalG,
            last_modified: chrono::Utc::now() - chrono::Duration::hours(age_h),
            timeline: 1,
            start_lsn: Lsn(start * SEG + 0x28),
            finish_lsn: Lsn(stop * SEG + 0x100),
            start_segment: seg(start),
            start_offset: 0x28,
            stop_segment: seg(stop),
            stop_offset: 0x100,
            expanded_size_bytes: None,
            compressed_size: None,
            seg_size: WalSegSize::DEFAULT,
            finish_time: None,
            system_identifier: None,
            pg_version: None,
            spec: None,
            tar_partitions: None,
            is_permanent: permanent,
            corrupt_pages: None,
            data_catalog_size: None,
            delta_from: None,
            delta_lsn: None,
            delta_full_name: None,
            delta_count: None,
        }
    }

    /// A delta of `base`, named as WAL-G names it.
    fn delta_of(base: &BackupInfo, start: u64, age_h: i64) -> BackupInfo {
        let mut d = backup(start, start + 1, age_h, false);
        d.name = format!("{}_D_{}", d.name, base.start_segment);
        d.delta_from = Some(base.name.clone());
        d.delta_lsn = Some(base.start_lsn);
        d.delta_full_name = Some(base.delta_full_name.clone().unwrap_or(base.name.clone()));
        d.delta_count = Some(base.delta_count.unwrap_or(0) + 1);
        d
    }

    #[test]
    fn a_kept_delta_keeps_its_whole_chain_and_retain_full_counts_full_backups() {
        let f1 = backup(2, 3, 60, false);
        let d1 = delta_of(&f1, 5, 50);
        let d2 = delta_of(&d1, 8, 40);
        let f2 = backup(11, 12, 30, false);
        let d3 = delta_of(&f2, 14, 20);
        let all = vec![f1.clone(), d1.clone(), d2.clone(), f2.clone(), d3.clone()];
        let keys: Vec<String> = all.iter().flat_map(folder).collect();
        let wal_keys = wal(1..17);
        // retain 1 keeps d3 and its base f2; before d2 keeps d2's chain.
        let p = plan_keys(&all, &keys, &wal_keys, &Retention::Retain(1)).unwrap();
        assert_eq!(p.kept, vec![f2.name.clone(), d3.name.clone()]);
        let p = plan_keys(&all, &keys, &wal_keys, &Retention::Before(d2.name.clone())).unwrap();
        assert!(p.deleted_backups.is_empty(), "{:?}", p.deleted_backups);
        // WAL is kept from the oldest kept backup's start, base included.
        assert!(!p.keys.iter().any(|k| k == &seg_key(2)));
        assert!(p.keys.iter().any(|k| k == &seg_key(1)));
        // retain FULL 1: f2 and what follows; retain FULL 2: everything.
        let p = plan_keys(&all, &keys, &wal_keys, &Retention::RetainFull(1, None)).unwrap();
        assert_eq!(p.kept, vec![f2.name.clone(), d3.name.clone()]);
        assert_eq!(
            p.deleted_backups,
            vec![f1.name.clone(), d1.name.clone(), d2.name.clone()]
        );
        let p = plan_keys(&all, &keys, &wal_keys, &Retention::RetainFull(2, None)).unwrap();
        assert!(p.deleted_backups.is_empty());
        // target d1 takes d2 with it; target FIND_FULL d2 takes f1's whole chain.
        let t = |name: &BackupInfo, find_full| Retention::Target {
            name: name.name.clone(),
            find_full,
        };
        let mut deleted = plan_keys(&all, &keys, &wal_keys, &t(&d1, false))
            .unwrap()
            .deleted_backups;
        deleted.sort();
        let mut want = vec![d1.name.clone(), d2.name.clone()];
        want.sort();
        assert_eq!(deleted, want);
        let p = plan_keys(&all, &keys, &wal_keys, &t(&d2, true)).unwrap();
        assert_eq!(p.kept, vec![f2.name.clone(), d3.name.clone()]);
        // A permanent delta keeps its base, and target refuses to delete under it.
        let mut pd = d1.clone();
        pd.is_permanent = true;
        let all2 = vec![f1.clone(), pd.clone(), f2.clone()];
        let keys2: Vec<String> = all2.iter().flat_map(folder).collect();
        let p = plan_keys(&all2, &keys2, &wal_keys, &Retention::Retain(1)).unwrap();
        assert!(p.kept.contains(&f1.name), "{:?}", p.kept);
        let e = plan_keys(&all2, &keys2, &wal_keys, &t(&f1, false)).unwrap_err();
        assert!(e.to_string().contains("permanent"), "{e}");
    }

    fn wal(range: std::ops::Range<u64>) -> Vec<String> {
        let mut v: Vec<String> = range
            .map(|n| format!("wal_005/00000001{:08X}{:08X}.lz4", n / 256, n % 256))
            .collect();
        v.push("wal_005/00000002.history.lz4".into());
        v
    }

    fn folder(b: &BackupInfo) -> Vec<String> {
        vec![
            sentinel_key(&b.name),
            format!("{BACKUP_FOLDER}/{}/metadata.json", b.name),
            format!("{BACKUP_FOLDER}/{}/tar_partitions/part_001.tar.lz4", b.name),
        ]
    }

    fn seg_key(n: u64) -> String {
        format!("wal_005/00000001{:08X}{:08X}.lz4", n / 256, n % 256)
    }

    #[test]
    fn permanent_backups_and_their_wal_survive_retain_and_before() {
        let perm = backup(2, 3, 50, true);
        let old = backup(5, 6, 40, false);
        let mid = backup(8, 9, 30, false);
        let new = backup(11, 12, 20, false);
        let all = vec![perm.clone(), old.clone(), mid.clone(), new.clone()];
        let keys: Vec<String> = all.iter().flat_map(folder).collect();
        let wal_keys = wal(1..14);
        for r in [
            Retention::Retain(1),
            Retention::Before(new.name.clone()),
            Retention::RetainYoung(1, chrono::Duration::zero()),
        ] {
            let p = plan_keys(&all, &keys, &wal_keys, &r).unwrap();
            assert_eq!(
                p.deleted_backups,
                vec![old.name.clone(), mid.name.clone()],
                "{r:?}"
            );
            assert_eq!(p.kept, vec![perm.name.clone(), new.name.clone()], "{r:?}");
            assert!(!p.keys.iter().any(|k| k.contains(&perm.name)), "{r:?}");
            // Below the floor (segment 11) only the permanent backup's 2..=3 stays.
            let want: Vec<String> = [1u64, 4, 5, 6, 7, 8, 9, 10]
                .iter()
                .map(|n| seg_key(*n))
                .collect();
            let got: Vec<String> = p
                .keys
                .iter()
                .filter(|k| k.starts_with("wal_005/"))
                .cloned()
                .collect();
            assert_eq!(got, want, "{r:?}");
        }
    }

    #[test]
    fn everything_refuses_while_a_permanent_backup_exists_unless_forced() {
        let perm = backup(2, 3, 50, true);
        let all = vec![perm.clone()];
        let keys = folder(&perm);
        let wal_keys = wal(1..5);
        let e = plan_keys(
            &all,
            &keys,
            &wal_keys,
            &Retention::Everything { force: false },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(&perm.name) && e.contains("--force"), "{e}");
        let p = plan_keys(
            &all,
            &keys,
            &wal_keys,
            &Retention::Everything { force: true },
        )
        .unwrap();
        assert_eq!(p.deleted_backups, vec![perm.name.clone()]);
        assert_eq!(p.keys.len(), keys.len() + wal_keys.len());
        assert_eq!(
            p.keys[0],
            sentinel_key(&perm.name),
            "the sentinel goes first"
        );
    }

    #[test]
    fn retain_and_before_refuse_without_a_complete_backup() {
        let in_progress = vec![
            "basebackups_005/base_000000010000000000000002/tar_partitions/part_001.tar.lz4"
                .to_string(),
        ];
        for r in [
            Retention::Retain(1),
            Retention::RetainYoung(2, chrono::Duration::zero()),
        ] {
            let e = plan_keys(&[], &in_progress, &wal(1..5), &r)
                .unwrap_err()
                .to_string();
            assert!(e.contains("delete everything"), "{e}");
        }
        let e = plan_keys(
            &[],
            &in_progress,
            &wal(1..5),
            &Retention::Before("x".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nothing was deleted"), "{e}");
    }

    #[test]
    fn in_progress_backups_and_history_files_survive_retention() {
        let old = backup(5, 6, 40, false);
        let new = backup(11, 12, 20, false);
        let all = vec![old.clone(), new.clone()];
        let running =
            "basebackups_005/base_000000010000000000000001/tar_partitions/part_001.tar.lz4";
        let mut keys: Vec<String> = all.iter().flat_map(folder).collect();
        keys.push(running.to_string());
        let p = plan_keys(&all, &keys, &wal(1..14), &Retention::Retain(1)).unwrap();
        assert!(!p.keys.iter().any(|k| k == running), "{:?}", p.keys);
        assert!(!p.keys.iter().any(|k| k.ends_with(".history.lz4")));
        let p = plan_keys(
            &all,
            &keys,
            &wal(1..14),
            &Retention::Everything { force: false },
        )
        .unwrap();
        assert!(p.keys.iter().any(|k| k == running));
        assert!(p.keys.iter().any(|k| k.ends_with(".history.lz4")));
    }

    #[test]
    fn agent_policy_keeps_young_backups_and_permanent_ones() {
        let perm = backup(2, 3, 500, true);
        let old = backup(5, 6, 400, false);
        let young = backup(8, 9, 2, false);
        let new = backup(11, 12, 1, false);
        let all = vec![perm.clone(), old.clone(), young.clone(), new.clone()];
        let keys: Vec<String> = all.iter().flat_map(folder).collect();
        let p = plan_keys(
            &all,
            &keys,
            &wal(1..14),
            &Retention::RetainYoung(1, chrono::Duration::hours(24)),
        )
        .unwrap();
        assert_eq!(p.deleted_backups, vec![old.name.clone()]);
        assert_eq!(p.kept, vec![perm.name, young.name, new.name]);
    }
}
