//! `walkeeper delete [--dry-run|-n] [--confirm] …`: WAL-E's and WAL-G's forms.
//! - `retain [FULL|FIND_FULL] N [--after TIME|NAME]`
//! - `before [FIND_FULL] NAME|TIME`
//! - `target [FIND_FULL] NAME`
//! - `garbage [ARCHIVES|BACKUPS]`
//! - `everything [FORCE]`
//! - `old-versions` (WAL-E)
//!
//! `retain FULL N` counts full backups; `target FIND_FULL` deletes the target's whole delta
//! chain. A kept delta always keeps the backups it is restored over, so `FIND_FULL` elsewhere
//! changes nothing. Without
//! `--confirm` (or with `--dry-run`, which wins, as in WAL-E), only prints what would be deleted.

use crate::archive::Archive;
use crate::backup::delete::{execute, old_version_plan, plan, After, Retention};
use crate::backup::restore::{parse_given_time, GivenTime};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
    /// Delete for real; without it, print what would be deleted.
    #[arg(long, global = true)]
    pub confirm: bool,
    /// Only print what would be deleted, even with --confirm (WAL-E's `--dry-run`/`-n`).
    #[arg(short = 'n', long, global = true)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Keep the newest N backups, every permanent backup, and the WAL they need.
    Retain {
        /// [FULL|FIND_FULL] N (WAL-G's modifiers; every walkeeper backup is full).
        #[arg(num_args = 1..=2, required = true, value_name = "[FULL|FIND_FULL] N")]
        words: Vec<String>,
        /// Also keep every backup that finished at or after TIME (with a zone), or NAME and
        /// the newer ones (WAL-G's `--after`/`-a`).
        #[arg(short = 'a', long, value_name = "TIME|NAME")]
        after: Option<String>,
    },
    /// Delete the non-permanent backups older than NAME (or that finished before TIME) and
    /// the WAL no kept backup needs.
    Before {
        /// [FIND_FULL] NAME|TIME
        #[arg(num_args = 1..=2, required = true, value_name = "[FIND_FULL] NAME|TIME")]
        words: Vec<String>,
    },
    /// WAL-G's `target [FIND_FULL] NAME`: delete one backup (not a permanent one); WAL stays
    /// (`delete garbage` removes what no backup needs).
    Target {
        #[arg(num_args = 1..=2, required = true, value_name = "[FIND_FULL] NAME")]
        words: Vec<String>,
    },
    /// WAL-G's `garbage [ARCHIVES|BACKUPS]`: the WAL older than the oldest backup (ARCHIVES)
    /// and the leftovers of failed backups older than it (BACKUPS); both by default.
    Garbage { what: Option<String> },
    /// Delete every backup, all WAL and the `.history` files. Refuses while a permanent backup
    /// exists, unless forced (`--force`, or WAL-G's `FORCE`).
    Everything {
        /// `FORCE` (WAL-G's spelling): delete permanent backups too.
        force_word: Option<String>,
        /// Delete permanent backups too.
        #[arg(long)]
        force: bool,
    },
    /// WAL-E's `old-versions`: delete the objects of WAL-E's obsolete layouts
    /// (`basebackups_000`…`_004`, `wal_000`…`_004`); the current `_005` layout is untouched.
    OldVersions,
}

/// The last word after WAL-G's optional modifier (`FULL`/`FIND_FULL`, or only `FIND_FULL`).
fn after_modifier<'a>(
    what: &str,
    words: &'a [String],
    allowed: &[&str],
) -> Result<&'a str, String> {
    match words {
        [one] => Ok(one),
        [m, one] if allowed.contains(&m.as_str()) => Ok(one),
        [m, _] => Err(format!(
            "delete {what}: unexpected {m:?} (accepted: {})",
            allowed.join(", ")
        )),
        _ => Err(format!("delete {what}: expected one argument")),
    }
}

fn retention_of(what: &What) -> Result<Option<Retention>, String> {
    Ok(Some(match what {
        What::Retain { words, after } => {
            let n = after_modifier("retain", words, &["FULL", "FIND_FULL"])?;
            let full = words.first().is_some_and(|w| w == "FULL") && words.len() == 2;
            let n: usize = n
                .parse()
                .map_err(|_| format!("delete retain: {n:?} is not a number of backups"))?;
            let after = match after {
                None => None,
                Some(a) if crate::backup::is_backup_name(a) => Some(After::Name(a.clone())),
                Some(a) => match parse_given_time(a).map_err(|e| e.to_string())? {
                    GivenTime::Absolute(t) => Some(After::Time(t)),
                    GivenTime::Local(_) => {
                        return Err(format!(
                            "delete retain --after {a:?}: give the time with a zone (e.g. \
                             2026-11-22T12:30:00Z)"
                        ))
                    }
                },
            };
            match after {
                _ if full => Retention::RetainFull(n, after),
                None => Retention::Retain(n),
                Some(a) => Retention::RetainAfter(n, a),
            }
        }
        What::Before { words } => {
            let x = after_modifier("before", words, &["FIND_FULL"])?;
            if crate::backup::is_backup_name(x) {
                Retention::Before(x.to_string())
            } else {
                match parse_given_time(x).map_err(|e| {
                    format!("delete before: {x:?} is neither a backup name nor a time: {e}")
                })? {
                    GivenTime::Absolute(t) => Retention::BeforeTime(t),
                    GivenTime::Local(_) => {
                        return Err(format!(
                            "delete before {x:?}: give the time with a zone (e.g. \
                             2026-11-22T12:30:00Z)"
                        ))
                    }
                }
            }
        }
        What::Target { words } => Retention::Target {
            name: after_modifier("target", words, &["FIND_FULL"])?.to_string(),
            find_full: words.len() == 2,
        },
        What::Garbage { what } => match what.as_deref() {
            None | Some("ARCHIVES") | Some("BACKUPS") => Retention::Garbage,
            Some(other) => {
                return Err(format!(
                    "delete garbage: unexpected {other:?} (accepted: ARCHIVES, BACKUPS)"
                ))
            }
        },
        What::Everything { force_word, force } => match force_word.as_deref() {
            None => Retention::Everything { force: *force },
            Some("FORCE") => Retention::Everything { force: true },
            Some(other) => {
                return Err(format!(
                    "delete everything: unexpected {other:?} (only FORCE is accepted)"
                ))
            }
        },
        What::OldVersions => return Ok(None),
    }))
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let retention = match retention_of(&args.what) {
        Ok(r) => r,
        Err(msg) => {
            eprintln!("{msg}");
            return 2;
        }
    };
    let confirm = args.confirm && !args.dry_run;
    let result = async {
        let archive = Archive::open(cli.settings()?)?;
        let mut p = match &retention {
            Some(r) => plan(&archive.store, r).await?,
            None => old_version_plan(&archive.store).await?,
        };
        if let What::Garbage { what: Some(w) } = &args.what {
            let folder = if w == "ARCHIVES" {
                crate::wal::names::WAL_FOLDER
            } else {
                crate::backup::BACKUP_FOLDER
            };
            p.keys.retain(|k| k.starts_with(&format!("{folder}/")));
        }
        let verb = if confirm { "delete" } else { "would delete" };
        for key in &p.keys {
            println!("{verb} {key}");
        }
        if confirm {
            let n = execute(&archive.store, &p).await?;
            tracing::info!(
                objects = n,
                backups = p.deleted_backups.len(),
                kept = p.kept.len(),
                "deleted"
            );
        } else {
            tracing::info!(objects = p.keys.len(), "dry run; add --confirm to delete");
        }
        Ok(())
    }
    .await;
    super::exit("delete", result)
}
