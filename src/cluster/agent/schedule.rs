//! When base backups run: `off`, an interval, or a cron expression, counted from the newest
//! backup's finish.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::backup::list_backups;
use crate::error::{Error, Result};

/// When base backups run.
#[derive(Debug, Clone)]
pub enum Schedule {
    Off,
    Every(Duration),
    Cron(Box<croner::Cron>),
}

impl Schedule {
    /// `off`, `every 6h` / `@every 6h` / a duration (`6h`), or a cron expression.
    pub fn parse(text: &str) -> Result<Schedule> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("off") || t.is_empty() {
            return Ok(Schedule::Off);
        }
        let dur = t
            .strip_prefix("every ")
            .or_else(|| t.strip_prefix("@every "))
            .unwrap_or(t);
        if let Ok(d) = humantime::parse_duration(dur.trim()) {
            if d < Duration::from_secs(1) {
                return Err(Error::Config(format!(
                    "backup schedule {t:?} is shorter than a second"
                )));
            }
            return Ok(Schedule::Every(d));
        }
        t.parse::<croner::Cron>()
            .map(|c| Schedule::Cron(Box::new(c)))
            .map_err(|e| {
                Error::Config(format!(
                    "backup schedule {t:?} is neither `off`, a duration (`every 24h`) nor a cron expression: {e}"
                ))
            })
    }

    /// The next run after `now`.
    pub fn next(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Off => None,
            Schedule::Every(d) => chrono::Duration::from_std(*d).ok().map(|d| now + d),
            Schedule::Cron(c) => c.find_next_occurrence(&now, false).ok(),
        }
    }

    /// When the next scheduled backup is due, counted from the newest backup's finish (so an
    /// agent restarted more often than the interval still takes its backups): that finish plus
    /// the interval, or the first cron tick after it. Due now when that is past or the archive
    /// holds no backup. None when backups are off.
    pub fn due(
        &self,
        newest_finish: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if matches!(self, Schedule::Off) {
            return None;
        }
        let Some(finish) = newest_finish else {
            return Some(now);
        };
        // A finish time in the future (a skewed clock) counts as now.
        let at = self.next(finish.min(now))?;
        Some(at.max(now))
    }
}

/// When the next scheduled backup is due, from the archive's newest backup.
pub async fn due_from_archive(
    store: &crate::storage::Store,
    schedule: &Schedule,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>> {
    let newest = list_backups(store).await?.last().map(|b| b.end_time());
    Ok(schedule.due(newest, now))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::config::Settings;

    #[test]
    fn schedules_parse_durations_and_cron() {
        assert!(matches!(Schedule::parse("off").unwrap(), Schedule::Off));
        let every = Schedule::parse("every 6h").unwrap();
        let now = Utc::now();
        assert_eq!(every.next(now), Some(now + chrono::Duration::hours(6)));
        let cron = Schedule::parse("0 3 * * *").unwrap();
        let next = cron.next(now).unwrap();
        assert!(next > now && next - now <= chrono::Duration::hours(24));
        assert_eq!(next.format("%H:%M:%S").to_string(), "03:00:00");
        assert!(Schedule::parse("sometimes").is_err());
    }

    #[test]
    fn the_next_backup_is_due_from_the_newest_backups_finish() {
        let now: DateTime<Utc> = "2026-12-02T10:00:00Z".parse().unwrap();
        let h = chrono::Duration::hours;
        let every = Schedule::parse("every 6h").unwrap();
        // Restarted an hour after the last backup: due 5 h from now, not 6.
        assert_eq!(every.due(Some(now - h(1)), now), Some(now + h(5)));
        // Overdue (or no backup yet): due now.
        assert_eq!(every.due(Some(now - h(30)), now), Some(now));
        assert_eq!(every.due(None, now), Some(now));
        // A finish time in the future counts as now.
        assert_eq!(every.due(Some(now + h(2)), now), Some(now + h(6)));
        let cron = Schedule::parse("0 3 * * *").unwrap();
        let finish: DateTime<Utc> = "2026-12-02T03:00:05Z".parse().unwrap();
        assert_eq!(
            cron.due(Some(finish), now),
            Some("2026-12-03T03:00:00Z".parse().unwrap())
        );
        let finish: DateTime<Utc> = "2026-12-01T02:00:00Z".parse().unwrap();
        assert_eq!(
            cron.due(Some(finish), now),
            Some(now),
            "the 03:00 tick was missed"
        );
        assert_eq!(Schedule::Off.due(Some(now), now), None);
    }

    #[tokio::test]
    async fn agent_start_takes_the_due_time_from_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let mut vars = BTreeMap::new();
        vars.insert(
            "WALG_FILE_PREFIX".to_string(),
            format!("file://{}", dir.path().display()),
        );
        let settings = Settings::from_sources(vars, None, None).unwrap();
        let store = crate::storage::Store::from_settings(&settings).unwrap();
        let every = Schedule::parse("every 24h").unwrap();
        let now = Utc::now();
        assert_eq!(
            due_from_archive(&store, &every, now).await.unwrap(),
            Some(now),
            "an empty archive is due at once"
        );
        let finish = now - chrono::Duration::hours(3);
        let sentinel = json!({
            "LSN": 0x2000028u64, "FinishLSN": 0x3000100u64, "Timeline": 1,
            "FinishTime": finish.to_rfc3339(),
        });
        store
            .put_bytes(
                "basebackups_005/base_000000010000000000000002_backup_stop_sentinel.json",
                serde_json::to_vec(&sentinel).unwrap().into(),
            )
            .await
            .unwrap();
        let due = due_from_archive(&store, &every, now)
            .await
            .unwrap()
            .unwrap();
        let want = finish + chrono::Duration::hours(24);
        assert!(
            (due - want).num_milliseconds().abs() < 1000,
            "{due} vs {want}"
        );
    }
}
