//! `restore`: point-in-time recovery in one command. Picks the newest backup that finished
//! before the target, fetches it, and writes the recovery settings; `pg_ctl start` then replays
//! the archive to the target.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};

use super::fetch::{backup_fetch, FetchOptions};
use super::{list_backups, resolve, BackupInfo};
use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::wal::Lsn;

#[derive(Debug, Clone)]
pub enum Target {
    Time(DateTime<Utc>),
    Lsn(Lsn),
    /// Replay everything the archive holds.
    Latest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Promote,
    Pause,
}

/// A target time as given: with a zone, or a wall-clock time without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GivenTime {
    Absolute(DateTime<Utc>),
    /// `2016-10-06 16:38:00` (dingo's `date "+%Y-%m-%d %H:%M:%S"`): PostgreSQL reads it in its
    /// TimeZone setting, so only a server can say which instant it is.
    Local(NaiveDateTime),
}

/// Parses RFC 3339 (`2026-11-22T12:30:00+01:00`), PostgreSQL's form with a zone
/// (`2026-11-22 12:30:00.5+01`), or a time without a zone (`2026-11-22 12:30:00`).
pub fn parse_given_time(s: &str) -> Result<GivenTime> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(GivenTime::Absolute(t.with_timezone(&Utc)));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::<FixedOffset>::parse_from_str(s, f) {
            return Ok(GivenTime::Absolute(t.with_timezone(&Utc)));
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(GivenTime::Local(t));
        }
    }
    Err(Error::BadInput(format!(
        "target time {s:?} is neither a time with a zone (2026-11-22T12:30:00+00:00) nor one \
         without (2026-11-22 12:30:00)"
    )))
}

/// Refuses a target in the future.
pub fn check_past(t: DateTime<Utc>, given: &str) -> Result<DateTime<Utc>> {
    if t > Utc::now() {
        return Err(Error::BadInput(format!(
            "target time {given} ({}) is in the future",
            t.to_rfc3339()
        )));
    }
    Ok(t)
}

/// Parses a target time that must carry a zone, and must not be in the future. Without a
/// running server there is no TimeZone to read a zone-less time in (the restored server's may
/// differ from this machine's), so `restore` refuses one rather than guess.
pub fn parse_target_time(s: &str) -> Result<DateTime<Utc>> {
    match parse_given_time(s)? {
        GivenTime::Absolute(t) => check_past(t, s),
        GivenTime::Local(_) => Err(Error::BadInput(format!(
            "target time {s:?} has no zone: without a running server walkeeper cannot know the \
             TimeZone PostgreSQL would read it in; give one (e.g. 2026-11-22T12:30:00+00:00, or \
             `date --rfc-3339=seconds`)"
        ))),
    }
}

/// PostgreSQL's accepted form (it refuses the `T…Z` form; see REFERENCE.md).
pub fn pg_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// Picks the backup for a target: the newest one that finished before it.
pub fn choose<'a>(backups: &'a [BackupInfo], target: &Target) -> Result<&'a BackupInfo> {
    let earliest = || {
        backups
            .first()
            .map(|b| {
                format!(
                    "the earliest restorable point is {} (LSN {}), when backup {} finished",
                    b.end_time().to_rfc3339(),
                    b.finish_lsn,
                    b.name
                )
            })
            .unwrap_or_else(|| "the archive holds no complete backup".into())
    };
    let pick = match target {
        Target::Time(t) => backups.iter().rev().find(|b| b.end_time() <= *t),
        Target::Lsn(l) => backups.iter().rev().find(|b| b.finish_lsn <= *l),
        Target::Latest => backups.last(),
    };
    pick.ok_or_else(|| {
        Error::BadInput(format!(
            "no backup finished before the target; {}",
            earliest()
        ))
    })
}

pub struct RestoreOptions {
    pub target: Target,
    pub backup: Option<String>,
    /// The timeline whose history recovery follows; None: the newest in the archive.
    pub timeline: Option<u32>,
    pub action: Action,
    pub fetch: FetchOptions,
    /// The restore_command to write (walkeeper with the same global options).
    pub restore_command: String,
    /// Run when recovery ends: `walkeeper recovery-done`, which removes these settings again.
    pub recovery_end_command: Option<String>,
}

pub async fn restore(
    archive: Arc<Archive>,
    pgdata: &Path,
    opts: RestoreOptions,
) -> Result<BackupInfo> {
    let branches = super::branches::load(&archive).await?;
    let timeline = opts
        .timeline
        .unwrap_or_else(|| super::branches::newest(&branches));
    let lineage = super::branches::history_of(&branches, timeline)?;
    if let Target::Time(t) = &opts.target {
        super::branches::check_target(&branches, &lineage, *t)?;
    }
    // Only backups on that history: after a restart, the newest backup may sit on the
    // abandoned branch.
    let backups: Vec<BackupInfo> = list_backups(&archive.store)
        .await?
        .into_iter()
        .filter(|b| lineage.contains(b.timeline, b.finish_lsn.0))
        .collect();
    let chosen = match &opts.backup {
        Some(name) => {
            let b = resolve(&archive.store, name).await?;
            if !lineage.contains(b.timeline, b.finish_lsn.0) {
                return Err(Error::BadInput(format!(
                    "backup {} (timeline {}) is not on timeline {timeline}'s history",
                    b.name, b.timeline
                )));
            }
            b
        }
        None => choose(&backups, &opts.target)?.clone(),
    };
    if let Target::Time(t) = &opts.target {
        if chosen.end_time() > *t {
            return Err(Error::BadInput(format!(
                "backup {} finished at {}, after the target {}",
                chosen.name,
                chosen.end_time().to_rfc3339(),
                t.to_rfc3339()
            )));
        }
    }
    let info = backup_fetch(archive.clone(), pgdata, &chosen.name, opts.fetch).await?;
    let mut conf = format!("\n{BLOCK_BEGIN}\n");
    conf.push_str(&format!(
        "restore_command = '{}'\n",
        opts.restore_command.replace('\'', "''")
    ));
    match &opts.target {
        Target::Time(t) => conf.push_str(&format!("recovery_target_time = '{}'\n", pg_time(t))),
        Target::Lsn(l) => conf.push_str(&format!("recovery_target_lsn = '{l}'\n")),
        Target::Latest => {}
    }
    if !matches!(opts.target, Target::Latest) {
        let action = match opts.action {
            Action::Promote => "promote",
            Action::Pause => "pause",
        };
        conf.push_str(&format!(
            "recovery_target_action = '{action}'\nrecovery_target_timeline = '{timeline}'\n"
        ));
    }
    if let Some(cmd) = &opts.recovery_end_command {
        conf.push_str(&format!(
            "recovery_end_command = '{}'\n",
            cmd.replace('\'', "''")
        ));
    }
    conf.push_str(BLOCK_END);
    conf.push('\n');
    write_recovery_settings(pgdata, "postgresql.auto.conf", &conf, "recovery.signal")?;
    Ok(info)
}

/// The recovery settings `restore` writes sit between these lines in postgresql.auto.conf, and
/// are removed when recovery ends (`recovery_end_command`): left there, a target would come back
/// with every later base backup, and a standby restored from one would stop at it.
const BLOCK_BEGIN: &str = "# walkeeper restore: begin (removed when recovery ends)";
const BLOCK_END: &str = "# walkeeper restore: end";

/// Removes `restore`'s recovery settings from postgresql.auto.conf. Returns whether there were
/// any.
pub fn remove_recovery_block(pgdata: &Path) -> Result<bool> {
    let path = pgdata.join("postgresql.auto.conf");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let mut kept = String::with_capacity(text.len());
    let mut inside = false;
    let mut found = false;
    for line in text.lines() {
        if line.trim() == BLOCK_BEGIN {
            inside = true;
            found = true;
            continue;
        }
        if inside {
            inside = line.trim() != BLOCK_END;
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    if found {
        // The rewritten file keeps the original's mode (PostgreSQL makes it 0600).
        let mode = std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .permissions();
        crate::storage::local::write_atomic_with(&path, |w| w.write_all(kept.as_bytes()))
            .map_err(|e| Error::io(&path, e))?;
        std::fs::set_permissions(&path, mode).map_err(|e| Error::io(&path, e))?;
    }
    Ok(found)
}

/// Appends `settings` to `conf_file` in the data directory (durably) and creates `signal`
/// (`recovery.signal` or `standby.signal`).
pub fn write_recovery_settings(
    pgdata: &Path,
    conf_file: &str,
    settings: &str,
    signal: &str,
) -> Result<()> {
    let conf = pgdata.join(conf_file);
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&conf)
        .map_err(|e| Error::io(&conf, e))?;
    f.write_all(settings.as_bytes())
        .map_err(|e| Error::io(&conf, e))?;
    f.sync_all().map_err(|e| Error::io(&conf, e))?;
    let signal = pgdata.join(signal);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&signal)
        .map_err(|e| Error::io(&signal, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn any_text_as_a_target_time_is_parsed_or_refused_never_a_panic(s in "[ -~]{0,40}") {
            let _ = parse_given_time(&s);
            let _ = parse_target_time(&s);
        }

        #[test]
        fn dates_without_a_zone_are_local_and_with_one_absolute(
            secs in 0i64..4_000_000_000, off in -14i32..=14
        ) {
            let t = DateTime::from_timestamp(secs, 0).unwrap();
            let local = t.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string();
            proptest::prop_assert_eq!(parse_given_time(&local).unwrap(), GivenTime::Local(t.naive_utc()));
            let zone = FixedOffset::east_opt(off * 3600).unwrap();
            let with = t.with_timezone(&zone).format("%Y-%m-%d %H:%M:%S%:z").to_string();
            proptest::prop_assert_eq!(parse_given_time(&with).unwrap(), GivenTime::Absolute(t));
        }
    }

    #[test]
    fn target_times_need_a_zone_and_must_be_past() {
        assert!(parse_target_time("2026-01-02T03:04:05+01:00").is_ok());
        assert_eq!(
            parse_target_time("2026-01-02 03:04:05.5+01").unwrap(),
            parse_target_time("2026-01-02T02:04:05.5Z").unwrap()
        );
        let e = parse_target_time("2026-01-02 03:04:05")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no zone"), "{e}");
        assert_eq!(
            parse_given_time("2016-10-06 16:38:00").unwrap(),
            GivenTime::Local(
                NaiveDateTime::parse_from_str("2016-10-06 16:38:00", "%Y-%m-%d %H:%M:%S").unwrap()
            )
        );
        assert!(parse_given_time("now").is_err());
        assert!(parse_given_time("yesterday 10:00").is_err());
        let e = parse_target_time("2999-01-01T00:00:00Z")
            .unwrap_err()
            .to_string();
        assert!(e.contains("future"), "{e}");
    }

    #[test]
    fn the_recovery_block_is_removed_and_the_rest_of_auto_conf_kept() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("postgresql.auto.conf");
        let mode = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777
        };
        std::fs::write(
            &conf,
            "# Do not edit this file manually!\nwork_mem = '8MB'\n",
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        write_recovery_settings(
            d.path(),
            "postgresql.auto.conf",
            &format!("\n{BLOCK_BEGIN}\nrecovery_target_time = 'x'\n{BLOCK_END}\n"),
            "recovery.signal",
        )
        .unwrap();
        assert_eq!(mode(&d.path().join("recovery.signal")), 0o600);
        assert!(remove_recovery_block(d.path()).unwrap());
        assert_eq!(mode(&conf), 0o600, "the rewritten file keeps its mode");
        let text = std::fs::read_to_string(&conf).unwrap();
        assert!(text.contains("work_mem = '8MB'"), "{text}");
        assert!(!text.contains("recovery_target_time"), "{text}");
        assert!(!remove_recovery_block(d.path()).unwrap());
    }

    #[test]
    fn postgres_gets_a_time_format_it_accepts() {
        let t = parse_target_time("2026-11-22T12:29:59.375007Z").unwrap();
        assert_eq!(pg_time(&t), "2026-11-22 12:29:59.375007+00");
    }
}
