//! Which timeline branches cover a point in time. A recovery target that lies on WAL the
//! chosen history abandoned (a branch a point-in-time restart left behind) is refused, never
//! silently read on that history: recovery would stop at the first commit after the branch
//! point instead.
//!
//! A timeline's history file ends with `<parent> <switch point> <reason>`. For a timeline that
//! a time-targeted recovery created, the reason is `before|after <timestamp>`: the parent's WAL
//! after that time, up to the child's creation (the history object's upload time), belongs to
//! no history that goes through the child.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::wal::history::{fetch_object, History};

/// One timeline as the archive knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub history: History,
    /// When its history file was archived (about when it was created); None for timeline 1.
    pub created: Option<DateTime<Utc>>,
    /// Where a time-targeted recovery stopped on the parent to start this timeline.
    pub stopped_at: Option<DateTime<Utc>>,
}

/// Timeline 1 and every timeline whose history file the archive holds, up to the first gap.
pub async fn load(archive: &Archive) -> Result<BTreeMap<u32, Branch>> {
    let mut out = BTreeMap::new();
    out.insert(
        1,
        Branch {
            history: History::first(),
            created: None,
            stopped_at: None,
        },
    );
    for tli in 2u32.. {
        let Some(o) = fetch_object(archive, tli).await? else {
            break;
        };
        let parent = o.history.entries.last().map(|(p, _)| *p);
        out.insert(
            tli,
            Branch {
                stopped_at: parent.and_then(|p| stop_time(&o.text, p)),
                created: Some(o.archived_at),
                history: o.history,
            },
        );
    }
    Ok(out)
}

/// The history of `tli`, from the loaded branches.
pub fn history_of(branches: &BTreeMap<u32, Branch>, tli: u32) -> Result<History> {
    branches
        .get(&tli)
        .map(|b| b.history.clone())
        .ok_or_else(|| {
            Error::BadInput(format!(
                "timeline {tli} is not in the archive (it holds timelines 1 to {})",
                branches.keys().last().copied().unwrap_or(1)
            ))
        })
}

/// The newest timeline the archive holds.
pub fn newest(branches: &BTreeMap<u32, Branch>) -> u32 {
    branches.keys().last().copied().unwrap_or(1)
}

/// The time in the reason of the history line for `parent`, when a time target made it.
fn stop_time(text: &str, parent: u32) -> Option<DateTime<Utc>> {
    text.lines().find_map(|l| {
        let mut f = l.trim().splitn(3, char::is_whitespace);
        let tli: u32 = f.next()?.parse().ok()?;
        if tli != parent {
            return None;
        }
        let _switch = f.next()?;
        let reason = f.next()?.trim();
        let ts = reason
            .strip_prefix("before ")
            .or_else(|| reason.strip_prefix("after "))?;
        parse_pg_timestamptz(ts.trim())
    })
}

/// PostgreSQL's `timestamptz_to_str` form: `2026-12-02 01:21:43.364+00` (offset `±HH`,
/// `±HH:MM` or `±HH:MM:SS`).
fn parse_pg_timestamptz(s: &str) -> Option<DateTime<Utc>> {
    let split = s.rfind(['+', '-']).filter(|&i| i > 10)?;
    let (local, off) = s.split_at(split);
    let naive = NaiveDateTime::parse_from_str(local.trim(), "%Y-%m-%d %H:%M:%S%.f").ok()?;
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let mut parts = off[1..].split(':').map(|p| p.parse::<i32>().ok());
    let h = parts.next()??;
    let m = parts.next().unwrap_or(Some(0))?;
    let sec = parts.next().unwrap_or(Some(0))?;
    let offset = FixedOffset::east_opt(sign * (h * 3600 + m * 60 + sec))?;
    offset
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// When `tli` stopped being written: the newest creation among the timelines that branched
/// off it. None while none has (it may still be written).
fn ended(branches: &BTreeMap<u32, Branch>, tli: u32) -> Option<DateTime<Utc>> {
    branches
        .values()
        .filter(|b| b.history.entries.last().map(|(p, _)| *p) == Some(tli))
        .filter_map(|b| b.created)
        .max()
}

fn range(branches: &BTreeMap<u32, Branch>, tli: u32) -> String {
    let from = branches
        .get(&tli)
        .and_then(|b| b.created)
        .map_or("its start".to_string(), |t| t.to_rfc3339());
    let to = ended(branches, tli).map_or("now".to_string(), |t| t.to_rfc3339());
    format!("timeline {tli} (from {from} to about {to})")
}

/// Refuses a target time that `lineage` does not cover because a branch point on it abandoned
/// that time's WAL. The error names the branches that cover the time, with their ranges, and
/// how to restore one of them.
pub fn check_target(
    branches: &BTreeMap<u32, Branch>,
    lineage: &History,
    target: DateTime<Utc>,
) -> Result<()> {
    for (i, &(parent, _switch)) in lineage.entries.iter().enumerate() {
        let child = lineage
            .entries
            .get(i + 1)
            .map(|(t, _)| *t)
            .unwrap_or(lineage.timeline);
        let Some(b) = branches.get(&child) else {
            continue;
        };
        let (Some(stop), Some(created)) = (b.stopped_at, b.created) else {
            continue;
        };
        if !(stop < target && target < created) {
            continue;
        }
        // The parent's own WAL past the branch point, and any other timeline alive then
        // that is not on this history.
        let mut covering = vec![parent];
        for (&tli, other) in branches {
            let on_lineage = tli == lineage.timeline || lineage.switch_point(tli).is_some();
            let born = other.created.is_none_or(|c| c <= target);
            let alive = ended(branches, tli).is_none_or(|e| e > target);
            if !on_lineage && born && alive {
                covering.push(tli);
            }
        }
        let names: Vec<String> = covering.iter().map(|&t| range(branches, t)).collect();
        return Err(Error::BadInput(format!(
            "recovery target {} lies on WAL that timeline {}'s history abandoned: timeline {child} \
             branched off timeline {parent} at {} (and was created at {}), so the target is on {}. \
             Name the branch to restore with \"timeline\" (walkeeper restore --timeline), or pick \
             a time outside {} .. {}",
            target.to_rfc3339(),
            lineage.timeline,
            stop.to_rfc3339(),
            created.to_rfc3339(),
            names.join(", "),
            stop.to_rfc3339(),
            created.to_rfc3339(),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn branch(tli: u32, text: &str, created: &str) -> Branch {
        let history = History::from_text(tli, "test", text).unwrap();
        let parent = history.entries.last().map(|(p, _)| *p).unwrap();
        Branch {
            stopped_at: stop_time(text, parent),
            created: Some(at(created)),
            history,
        }
    }

    fn archive_of(list: Vec<(u32, Branch)>) -> BTreeMap<u32, Branch> {
        let mut m: BTreeMap<u32, Branch> = list.into_iter().collect();
        m.insert(
            1,
            Branch {
                history: History::first(),
                created: None,
                stopped_at: None,
            },
        );
        m
    }

    #[test]
    fn postgres_stop_times_parse_with_every_offset_form() {
        for (s, want) in [
            ("2026-12-02 01:21:43.364+00", "2026-12-02T01:21:43.364Z"),
            ("2026-12-02 02:21:43.364+01", "2026-12-02T01:21:43.364Z"),
            ("2026-12-01 20:51:43-04:30", "2026-12-02T01:21:43Z"),
            (
                "2026-12-02 01:21:43.364+00:00:00",
                "2026-12-02T01:21:43.364Z",
            ),
        ] {
            assert_eq!(parse_pg_timestamptz(s), Some(at(want)), "{s}");
        }
        for bad in [
            "",
            "2026-12-02",
            "yesterday+00",
            "2026-12-02 01:21:43.364+xx",
        ] {
            assert_eq!(parse_pg_timestamptz(bad), None, "{bad}");
        }
        assert_eq!(
            stop_time("1\t0/5000000\tbefore 2026-12-02 01:21:43.364+00\n", 1),
            Some(at("2026-12-02T01:21:43.364Z"))
        );
        assert_eq!(
            stop_time("1\t0/5000000\tno recovery target specified\n", 1),
            None
        );
    }

    #[test]
    fn a_target_on_an_abandoned_branch_is_refused_naming_the_branches() {
        // Timeline 1 ran until 12:10, when a restart to 12:00 created timeline 2.
        let b = archive_of(vec![(
            2,
            branch(
                2,
                "1\t0/5000000\tbefore 2026-12-02 12:00:00+00\n",
                "2026-12-02T12:10:00Z",
            ),
        )]);
        let lineage = b[&2].history.clone();
        assert!(check_target(&b, &lineage, at("2026-12-02T11:59:00Z")).is_ok());
        assert!(check_target(&b, &lineage, at("2026-12-02T12:11:00Z")).is_ok());
        let e = check_target(&b, &lineage, at("2026-12-02T12:05:00Z"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("timeline 1 (from its start to about 2026-12-02T12:10:00"),
            "{e}"
        );
        assert!(e.contains("\"timeline\""), "{e}");
        // On timeline 1's own history the same time is fine.
        assert!(check_target(&b, &History::first(), at("2026-12-02T12:05:00Z")).is_ok());
    }

    #[test]
    fn a_failover_leaves_no_window() {
        let b = archive_of(vec![(
            2,
            branch(
                2,
                "1\t0/5000000\tno recovery target specified\n",
                "2026-12-02T12:10:00Z",
            ),
        )]);
        let lineage = b[&2].history.clone();
        assert!(check_target(&b, &lineage, at("2026-12-02T12:05:00Z")).is_ok());
    }
}
