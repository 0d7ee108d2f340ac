//! WAL-G's commands and options that walkeeper does not implement: when clap refuses a command
//! line, the refusal names the command or option and says what walkeeper does instead (exit 2,
//! 128 for wal-fetch), rather than clap's bare "unrecognized". Options clap accepts never reach
//! this table.

use std::ffi::OsString;

const NO_INCREMENTAL: &str = "walkeeper takes no catchup backups (from a replica's LSN); \
     rebuild a lagging replica from the archive (`create-replica`, or `backup-fetch` and WAL \
     replay)";

/// WAL-G's commands (of `wal-g` for PostgreSQL) with what walkeeper does instead.
const COMMANDS: &[(&str, &str)] = &[
    (
        "wal-receive",
        "walkeeper does not stream WAL; PostgreSQL's archive_command (`walkeeper wal-push %p`) \
         archives each segment, under the agent on the leader only",
    ),
    (
        "wal-restore",
        "walkeeper does not copy WAL for pg_rewind; give pg_rewind `--restore-target-wal` \
         (PostgreSQL 13+, Patroni's `use_pg_rewind`) and it fetches what it misses through \
         restore_command = 'walkeeper wal-fetch %f %p'",
    ),
    ("catchup-push", NO_INCREMENTAL),
    ("catchup-fetch", NO_INCREMENTAL),
    ("catchup-list", NO_INCREMENTAL),
    ("catchup-send", NO_INCREMENTAL),
    ("catchup-receive", NO_INCREMENTAL),
    (
        "copy",
        "walkeeper does not copy backups between storages; copy the prefix with the storage's \
         own tools (aws s3 sync, rclone, gsutil rsync): the archive is plain objects",
    ),
    (
        "daemon",
        "walkeeper has no archive-library daemon; archive_command = 'walkeeper wal-push %p' \
         archives, uploading ahead with WALKEEPER_PUSH_LOOKAHEAD",
    ),
    (
        "pgbackrest",
        "walkeeper reads no pgBackRest repository; restore with pgBackRest, then archive and \
         back up with walkeeper",
    ),
    (
        "backup-merge",
        "walkeeper does not merge delta backups; take a full one (`backup-push --full`) and \
         let retention delete the old chain",
    ),
    (
        "snapshot-push",
        "walkeeper takes no disk-snapshot backups; backup-push copies the data directory",
    ),
    (
        "snapshot-fetch",
        "walkeeper takes no disk-snapshot backups; backup-fetch restores a base backup",
    ),
    (
        "flags",
        "`walkeeper --help` and each command's `--help` list walkeeper's options; WAL-G's \
         settings are variables here (environment, --envdir or the config file)",
    ),
    (
        "completion",
        "walkeeper generates no shell completion script",
    ),
    (
        "wal-purge",
        "`delete garbage ARCHIVES` deletes the WAL older than the oldest backup",
    ),
];

/// WAL-G's `st` subcommands walkeeper lacks.
const ST_COMMANDS: &[(&str, &str)] = &[
    (
        "check",
        "walkeeper checks the storage on every command; `st ls` reads it, `st put` and `st rm` \
         write it",
    ),
    (
        "cp",
        "walkeeper copies no objects between storages; use `st get` then `st put`",
    ),
    (
        "mv",
        "walkeeper never overwrites or renames objects; use `st get`, `st put` and `st rm`",
    ),
    ("stat", "`st ls PATH` shows an object's size and time"),
    (
        "transfer",
        "walkeeper has no failover storages to transfer between; copy the prefix with the \
         storage's own tools",
    ),
    ("get-stream", "`backup-fetch` restores a backup"),
];

/// WAL-G's options (of any command: `*`) with what walkeeper does instead.
const OPTIONS: &[(&str, &str, &str)] = &[
    (
        "*",
        "--target-storage",
        "walkeeper has no failover storages: it uses the one archive prefix",
    ),
    (
        "delete",
        "--use-sentinel-time",
        "walkeeper orders backups by their start LSN and timeline, which never disagree with \
         the sentinel's times on one cluster",
    ),
    (
        "delete",
        "--target-user-data",
        "name the backup: `delete target NAME`",
    ),
    (
        "delete",
        "--without-backup-check",
        "`delete garbage` keeps what the oldest backup needs and nothing else",
    ),
    (
        "delete",
        "--explain",
        "without --confirm, delete is a dry run that prints every object it would delete",
    ),
    (
        "delete",
        "--format",
        "the dry run prints one `would delete KEY` line per object",
    ),
    (
        "backup-fetch",
        "--reverse-unpack",
        "backup-fetch restores a delta backup's chain by itself; there is no unpack order to \
         choose",
    ),
    (
        "backup-push",
        "-r",
        "walkeeper cuts partitions by size (WALG_TAR_SIZE_THRESHOLD); there is no rating composer",
    ),
    (
        "backup-push",
        "-c",
        "walkeeper cuts partitions by size (WALG_TAR_SIZE_THRESHOLD); there is no copy composer",
    ),
    (
        "backup-push",
        "-b",
        "walkeeper cuts partitions by size (WALG_TAR_SIZE_THRESHOLD); there is no database \
         composer",
    ),
];

/// The first word that is neither a global option nor its value, and the words after it.
pub fn command_words(args: &[OsString]) -> (Option<String>, Vec<String>) {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else { break };
        match s {
            s if super::GLOBAL_VALUE_OPTIONS.contains(&s) => {
                it.next();
            }
            s if super::GLOBAL_VALUE_OPTIONS
                .iter()
                .any(|o| o.starts_with("--") && s.starts_with(&format!("{o}="))) => {}
            s if super::GLOBAL_FLAGS.contains(&s) => {}
            s => {
                let rest = it.map(|a| a.to_string_lossy().into_owned()).collect();
                return (Some(s.to_string()), rest);
            }
        }
    }
    (None, Vec::new())
}

/// The refusal for a command line clap refused, when it holds a WAL-G command or option
/// walkeeper does not implement.
pub fn refusal(args: &[OsString]) -> Option<String> {
    let (command, rest) = command_words(args);
    let command = command?;
    if let Some((_, instead)) = COMMANDS.iter().find(|(c, _)| *c == command) {
        return Some(format!(
            "{command}: WAL-G's command is not implemented: {instead}"
        ));
    }
    // The words before `--`: anything after it is an operand.
    let words: Vec<&str> = rest
        .iter()
        .map(String::as_str)
        .take_while(|w| *w != "--")
        .collect();
    if command == "st" {
        let sub = words
            .iter()
            .copied()
            .filter(|w| !w.starts_with('-'))
            .find(|w| ST_COMMANDS.iter().any(|(c, _)| c == w));
        if let Some(sub) = sub {
            let instead = ST_COMMANDS.iter().find(|(c, _)| *c == sub)?.1;
            return Some(format!(
                "st {sub}: WAL-G's command is not implemented: {instead}"
            ));
        }
    }
    for (cmd, opt, instead) in OPTIONS {
        if *cmd != "*" && *cmd != command {
            continue;
        }
        let given = words
            .iter()
            .any(|w| w == opt || (opt.starts_with("--") && w.starts_with(&format!("{opt}="))));
        if given {
            return Some(format!(
                "{command} {opt}: WAL-G's option is not implemented: {instead}; drop the option"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(args: &[&str]) -> Option<String> {
        refusal(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn wal_g_commands_and_options_are_named_with_what_walkeeper_does_instead() {
        let m = r(&["--config", "/x", "wal-receive"]).unwrap();
        assert!(
            m.starts_with("wal-receive:") && m.contains("archive_command"),
            "{m}"
        );
        let m = r(&["st", "-t", "default", "transfer", "x"]).unwrap();
        assert!(m.starts_with("st transfer:"), "{m}");
        let m = r(&["delete", "retain", "5", "--use-sentinel-time"]).unwrap();
        assert!(m.contains("--use-sentinel-time"), "{m}");
        let m = r(&["wal-push", "--target-storage=s2", "x"]).unwrap();
        assert!(m.contains("--target-storage"), "{m}");
        assert_eq!(r(&["wal-push", "--bogus"]), None);
        assert_eq!(r(&["wal-fetc", "a", "b"]), None);
        // An operand after `--` is not an option.
        assert_eq!(r(&["delete", "target", "--", "--explain"]), None);
    }
}
