//! Command line: global options, logging, and one module per command.

mod agent;
mod backup_fetch;
mod backup_list;
mod backup_mark;
mod backup_push;
mod create_replica;
mod delete;
mod recovery_done;
mod refused;
mod restore;
mod st;
mod version;
mod wal_fetch;
mod wal_prefetch;
mod wal_push;
mod wal_push_ahead;
mod wal_show;
mod wal_verify;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "walkeeper",
    version,
    about = "WAL and base backup archiving for Patroni PostgreSQL clusters"
)]
pub struct Cli {
    /// YAML config file (also WALKEEPER_CONFIG). Environment variables take precedence over it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of files named after environment variables (daemontools envdir); they override
    /// the environment.
    #[arg(long, global = true, value_name = "DIR")]
    pub envdir: Option<PathBuf>,
    #[command(flatten)]
    pub wal_e: WalEGlobals,
    #[command(subcommand)]
    pub command: Command,
}

/// WAL-E's global options, accepted as WAL-E wrote them (before or after the command).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WalEGlobals {
    /// Log only warnings and errors (WAL-E's `--terse`; WALKEEPER_LOG still wins).
    #[arg(long, global = true)]
    pub terse: bool,
    /// WAL-E's GPG encryption: uploads are encrypted to this key of gpg's keyring, and gpg
    /// (with its agent) decrypts on fetch (as WALE_GPG_KEY_ID).
    #[arg(long, global = true, value_name = "ID")]
    pub gpg_key_id: Option<String>,
    /// The archive prefix (as WALE_S3_PREFIX), over every variable and the config file.
    #[arg(long, global = true, value_name = "URL")]
    pub s3_prefix: Option<String>,
    /// The archive prefix (as WALE_WABS_PREFIX).
    #[arg(long, global = true, value_name = "URL")]
    pub wabs_prefix: Option<String>,
    /// The archive prefix (as WALE_GS_PREFIX).
    #[arg(long, global = true, value_name = "URL")]
    pub gs_prefix: Option<String>,
    /// The archive prefix (as WALE_FILE_PREFIX).
    #[arg(long, global = true, value_name = "URL")]
    pub file_prefix: Option<String>,
    /// The AWS access key id (public); the secret comes only from AWS_SECRET_ACCESS_KEY.
    #[arg(
        short = 'k',
        long,
        global = true,
        value_name = "ID",
        conflicts_with = "aws_instance_profile"
    )]
    pub aws_access_key_id: Option<String>,
    /// Authenticate to S3 with the instance's IAM profile: AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN are then ignored.
    #[arg(long, global = true)]
    pub aws_instance_profile: bool,
    /// WAL-G's `--turbo`: ignore the throttling the configuration sets (WALG_DISK_RATE_LIMIT,
    /// WALG_NETWORK_RATE_LIMIT); an option on the command line still applies.
    #[arg(long, global = true)]
    pub turbo: bool,
}

/// The throttling `--turbo` ignores.
const TURBO_IGNORES: [&str; 2] = ["WALG_DISK_RATE_LIMIT", "WALG_NETWORK_RATE_LIMIT"];

/// The credentials an instance profile replaces.
const INSTANCE_PROFILE_IGNORES: [&str; 4] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
];

impl WalEGlobals {
    /// The prefix options, by the variable each stands for.
    fn prefixes(&self) -> Vec<(&'static str, &'static str, &String)> {
        [
            ("--s3-prefix", "WALE_S3_PREFIX", &self.s3_prefix),
            ("--wabs-prefix", "WALE_WABS_PREFIX", &self.wabs_prefix),
            ("--gs-prefix", "WALE_GS_PREFIX", &self.gs_prefix),
            ("--file-prefix", "WALE_FILE_PREFIX", &self.file_prefix),
        ]
        .into_iter()
        .filter_map(|(opt, var, v)| v.as_ref().map(|v| (opt, var, v)))
        .collect()
    }

    /// The variables these options set (`Some`) or unset (`None`), over every other source.
    pub fn vars(&self) -> crate::Result<Vec<(String, Option<String>)>> {
        let mut out = Vec::new();
        let prefixes = self.prefixes();
        if let Some((opt, var, value)) = prefixes.first() {
            if let Some((other, _, _)) = prefixes.iter().find(|(_, _, v)| v != value) {
                return Err(crate::Error::Config(format!(
                    "{opt} and {other} name different archive prefixes; give only one"
                )));
            }
            // The command line's prefix wins over the environment's, as in WAL-E.
            for v in crate::config::PREFIX_VARS {
                out.push((v.to_string(), None));
            }
            out.push((var.to_string(), Some(value.to_string())));
        }
        if let Some(id) = &self.gpg_key_id {
            out.push(("WALE_GPG_KEY_ID".into(), Some(id.clone())));
        }
        if let Some(id) = &self.aws_access_key_id {
            out.push(("AWS_ACCESS_KEY_ID".into(), Some(id.clone())));
        }
        if self.aws_instance_profile {
            for v in INSTANCE_PROFILE_IGNORES {
                out.push((v.into(), None));
            }
        }
        if self.turbo {
            for v in TURBO_IGNORES {
                out.push((v.into(), None));
            }
        }
        Ok(out)
    }

    /// The options again, for child processes.
    fn args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        if self.terse {
            v.push("--terse".into());
        }
        for (opt, _, value) in self.prefixes() {
            v.push(opt.into());
            v.push(value.into());
        }
        if let Some(id) = &self.aws_access_key_id {
            v.push("--aws-access-key-id".into());
            v.push(id.into());
        }
        if self.aws_instance_profile {
            v.push("--aws-instance-profile".into());
        }
        if self.turbo {
            v.push("--turbo".into());
        }
        v
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// archive_command: archive one WAL file (`walkeeper wal-push %p`).
    WalPush(wal_push::Args),
    /// Upload other `.ready` segments in the background (started by wal-push's look-ahead).
    #[command(hide = true)]
    WalPushAhead(wal_push_ahead::Args),
    /// restore_command: fetch one WAL file (`walkeeper wal-fetch %f %p`).
    WalFetch(wal_fetch::Args),
    /// WAL-E's `wal-prefetch BASE_DIRECTORY SEGMENT`: download a segment ahead of its
    /// wal-fetch (wal-fetch also starts it by itself in the background).
    WalPrefetch(wal_prefetch::Args),
    /// Check the archive for WAL gaps from the oldest backup to the newest segment.
    WalVerify(wal_verify::Args),
    /// WAL-G's wal-show: the archive's timelines, their segment ranges and gaps.
    WalShow(wal_show::Args),
    /// Take a base backup of the running server.
    BackupPush(backup_push::Args),
    /// Restore a base backup into an empty directory.
    BackupFetch(backup_fetch::Args),
    /// List complete backups, oldest first.
    BackupList(backup_list::Args),
    /// Retention: delete old backups and the WAL no kept backup needs.
    Delete(delete::Args),
    /// WAL-G's backup-mark: make a backup permanent (`-i`: ordinary again).
    BackupMark(backup_mark::Args),
    /// Point-in-time restore: fetch the right backup and configure recovery.
    Restore(restore::Args),
    /// recovery_end_command of `restore`: removes its recovery settings again.
    #[command(hide = true)]
    RecoveryDone(recovery_done::Args),
    /// The cluster agent: leader-only backups and retention, backup list in etcd, HTTP API.
    Agent(agent::Args),
    /// Patroni create_replica_methods entry: restore a replica from the archive if cheap enough.
    CreateReplica(create_replica::Args),
    /// WAL-G's storage tools: `st ls|cat|get|put|rm` on paths relative to the prefix.
    St(st::Args),
    /// Print walkeeper's version (WAL-E's `version`).
    Version(version::Args),
}

/// Maps a command's result to its exit code, logging the error on one line.
fn exit<T>(command: &str, result: crate::Result<T>) -> i32 {
    match result {
        Ok(_) => 0,
        Err(e) => {
            tracing::error!("{command} failed: {e}");
            e.exit_code()
        }
    }
}

impl Cli {
    /// This binary with the global options, for child processes and restore_command lines.
    pub fn self_exec(&self) -> crate::selfexec::SelfExec {
        crate::selfexec::SelfExec::new(self.global_args())
    }

    /// The global options, to pass on to child processes.
    fn global_args(&self) -> Vec<OsString> {
        let mut v = Vec::new();
        if let Some(c) = &self.config {
            v.push("--config".into());
            v.push(c.clone().into_os_string());
        }
        if let Some(e) = &self.envdir {
            v.push("--envdir".into());
            v.push(e.clone().into_os_string());
        }
        v.extend(self.wal_e.args());
        v
    }

    pub fn settings(&self) -> crate::Result<Settings> {
        let mut s = Settings::load_with(
            self.config.as_deref(),
            self.envdir.as_deref(),
            &self.wal_e.vars()?,
        )?;
        // WAL-E's `AWS_INSTANCE_PROFILE=1` is `--aws-instance-profile`, unless -k names a key.
        let profile = s
            .vars
            .get("AWS_INSTANCE_PROFILE")
            .is_some_and(|v| matches!(v.trim(), "1" | "true"));
        if profile && self.wal_e.aws_access_key_id.is_none() {
            for v in INSTANCE_PROFILE_IGNORES {
                s.vars.remove(v);
            }
        }
        Ok(s)
    }
}

fn init_logging(terse: bool) {
    let default = if terse { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WALKEEPER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Global options that take a value (a word to skip when looking for the command).
const GLOBAL_VALUE_OPTIONS: &[&str] = &[
    "--config",
    "--envdir",
    "--gpg-key-id",
    "--s3-prefix",
    "--wabs-prefix",
    "--gs-prefix",
    "--file-prefix",
    "-k",
    "--aws-access-key-id",
];

/// Global options without a value.
const GLOBAL_FLAGS: &[&str] = &["--terse", "--aws-instance-profile", "--turbo"];

/// The exit code for a command line clap refused. For wal-fetch it is
/// [`crate::error::EXIT_FETCH_FATAL`]: PostgreSQL reads 1 to 125 as "not available", so a typo
/// in restore_command would end recovery early or leave a standby silently without archive.
fn parse_error_code(e: &clap::Error, args: impl Iterator<Item = OsString>) -> i32 {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        return e.exit_code();
    }
    // The first word that is neither a global option nor its value names the command.
    let (command, _) = refused::command_words(&args.collect::<Vec<_>>());
    match command.as_deref() {
        Some("wal-fetch") => crate::error::EXIT_FETCH_FATAL,
        _ => e.exit_code(),
    }
}

/// Tells WAL-E's `backup-push -p N` (pool size) from WAL-G's `backup-push -p` (permanent): a
/// `-p` followed by a number is the first, any other the second.
pub fn rewrite_argv(args: Vec<OsString>) -> Vec<OsString> {
    let Some(at) = args.iter().position(|a| a == "backup-push") else {
        return args;
    };
    let mut out: Vec<OsString> = args[..=at].to_vec();
    let mut rest = args[at + 1..].iter().peekable();
    while let Some(a) = rest.next() {
        if a == "-p" {
            let numeric = rest
                .peek()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            out.push(
                if numeric {
                    "--pool-size"
                } else {
                    "--permanent"
                }
                .into(),
            );
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse_from(rewrite_argv(std::env::args_os().collect())) {
        Ok(c) => c,
        Err(e) => {
            let code = parse_error_code(&e, std::env::args_os().skip(1));
            let args: Vec<OsString> = std::env::args_os().skip(1).collect();
            match refused::refusal(&args) {
                Some(msg) if code != 0 => eprintln!("walkeeper: {msg}"),
                _ => {
                    let _ = e.print();
                }
            }
            return code;
        }
    };
    init_logging(cli.wal_e.terse);
    let is_wal_fetch = matches!(cli.command, Command::WalFetch(_));
    // For restore_command, even a bug must not read as "not available" (a panic exits 101).
    let fatal = if is_wal_fetch {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            std::process::exit(crate::error::EXIT_FETCH_FATAL);
        }));
        crate::error::EXIT_FETCH_FATAL
    } else {
        1
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return fatal;
        }
    };
    rt.block_on(async {
        match &cli.command {
            Command::WalPush(a) => wal_push::run(&cli, a).await,
            Command::WalFetch(a) => wal_fetch::run(&cli, a).await,
            Command::WalPushAhead(a) => wal_push_ahead::run(&cli, a).await,
            Command::WalPrefetch(a) => wal_prefetch::run(&cli, a).await,
            Command::WalVerify(a) => wal_verify::run(&cli, a).await,
            Command::WalShow(a) => wal_show::run(&cli, a).await,
            Command::BackupPush(a) => backup_push::run(&cli, a).await,
            Command::BackupFetch(a) => backup_fetch::run(&cli, a).await,
            Command::BackupList(a) => backup_list::run(&cli, a).await,
            Command::Delete(a) => delete::run(&cli, a).await,
            Command::BackupMark(a) => backup_mark::run(&cli, a).await,
            Command::Restore(a) => restore::run(&cli, a).await,
            Command::Agent(a) => agent::run(&cli, a).await,
            Command::RecoveryDone(a) => recovery_done::run(&cli, a).await,
            Command::CreateReplica(a) => create_replica::run(&cli, a).await,
            Command::Version(a) => version::run(&cli, a).await,
            Command::St(a) => st::run(&cli, a).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(args: &[&str]) -> i32 {
        let e = Cli::try_parse_from(std::iter::once("walkeeper").chain(args.iter().copied()))
            .expect_err("refused");
        parse_error_code(&e, args.iter().map(OsString::from))
    }

    #[test]
    fn backup_push_p_is_wal_e_pool_size_with_a_number_and_wal_g_permanent_without() {
        let argv = |args: &[&str]| -> Vec<String> {
            rewrite_argv(args.iter().map(OsString::from).collect())
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            argv(&["wk", "backup-push", "-p", "4", "/d"]),
            ["wk", "backup-push", "--pool-size", "4", "/d"]
        );
        assert_eq!(
            argv(&["wk", "backup-push", "-p", "/d"]),
            ["wk", "backup-push", "--permanent", "/d"]
        );
        assert_eq!(
            argv(&["wk", "backup-push", "/d", "-p"]),
            ["wk", "backup-push", "/d", "--permanent"]
        );
        assert_eq!(
            argv(&["wk", "wal-fetch", "-p", "4"]),
            ["wk", "wal-fetch", "-p", "4"]
        );
    }

    #[test]
    fn a_wal_fetch_command_line_clap_refuses_exits_128() {
        assert_eq!(code(&["wal-fetch", "--bogus", "a", "b"]), 128);
        assert_eq!(code(&["wal-fetch", "only-one"]), 128);
        assert_eq!(code(&["--envdir", "/x", "wal-fetch", "-z", "a", "b"]), 128);
        assert_eq!(code(&["--config=/x", "wal-fetch"]), 128);
        assert_eq!(code(&["wal-push", "--bogus", "a"]), 2);
        assert_eq!(code(&["wal-fetc", "a", "b"]), 2);
    }
}
