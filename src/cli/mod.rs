//! Command line: global options, logging, and one module per command.

mod agent;
mod backup_fetch;
mod backup_list;
mod backup_push;
mod create_replica;
mod delete;
mod recovery_done;
mod restore;
mod wal_fetch;
mod wal_prefetch;
mod wal_push;
mod wal_push_ahead;
mod wal_verify;

pub use backup_list::render as render_backup_list;

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
    #[command(subcommand)]
    pub command: Command,
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
    /// Download the segments after one into the prefetch directory (started by wal-fetch).
    #[command(hide = true)]
    WalPrefetch(wal_prefetch::Args),
    /// Check the archive for WAL gaps from the oldest backup to the newest segment.
    WalVerify(wal_verify::Args),
    /// Take a base backup of the running server.
    BackupPush(backup_push::Args),
    /// Restore a base backup into an empty directory.
    BackupFetch(backup_fetch::Args),
    /// List complete backups, oldest first.
    BackupList(backup_list::Args),
    /// Retention: delete old backups and the WAL no kept backup needs.
    Delete(delete::Args),
    /// Point-in-time restore: fetch the right backup and configure recovery.
    Restore(restore::Args),
    /// recovery_end_command of `restore`: removes its recovery settings again.
    #[command(hide = true)]
    RecoveryDone(recovery_done::Args),
    /// The cluster agent: leader-only backups and retention, backup list in etcd, HTTP API.
    Agent(agent::Args),
    /// Patroni create_replica_methods entry: restore a replica from the archive if cheap enough.
    CreateReplica(create_replica::Args),
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
    /// The global options, to pass on to child processes.
    pub fn global_args(&self) -> Vec<OsString> {
        let mut v = Vec::new();
        if let Some(c) = &self.config {
            v.push("--config".into());
            v.push(c.clone().into_os_string());
        }
        if let Some(e) = &self.envdir {
            v.push("--envdir".into());
            v.push(e.clone().into_os_string());
        }
        v
    }

    pub fn settings(&self) -> crate::Result<Settings> {
        Settings::load(self.config.as_deref(), self.envdir.as_deref())
    }
}

/// This binary with `global` options and `args`, as a command line for PostgreSQL settings
/// (restore_command, which PostgreSQL runs through `sh`). Arguments with characters the shell
/// would interpret are single-quoted.
pub fn self_command(global: &[OsString], args: &[&str]) -> crate::Result<String> {
    let exe = std::env::current_exe().map_err(|e| crate::Error::io("current_exe", e))?;
    let quote = |s: &str| {
        if !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-=%:,+@".contains(&b))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', "'\\''"))
        }
    };
    let mut parts = vec![quote(&exe.to_string_lossy())];
    parts.extend(global.iter().map(|a| quote(&a.to_string_lossy())));
    parts.extend(args.iter().map(|a| quote(a)));
    Ok(parts.join(" "))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WALKEEPER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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

/// The exit code for a command line clap refused. For wal-fetch it is
/// [`crate::error::EXIT_FETCH_FATAL`]: PostgreSQL reads 1 to 125 as "not available", so a typo
/// in restore_command would end recovery early or leave a standby silently without archive.
fn parse_error_code(e: &clap::Error, args: impl Iterator<Item = OsString>) -> i32 {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        return e.exit_code();
    }
    // The first word that is neither a global option nor its value names the command.
    let mut args = args;
    let mut command = None;
    while let Some(a) = args.next() {
        let Some(s) = a.to_str() else { break };
        match s {
            "--config" | "--envdir" => {
                args.next();
            }
            s if s.starts_with("--config=") || s.starts_with("--envdir=") => {}
            s => {
                command = Some(s.to_string());
                break;
            }
        }
    }
    match command.as_deref() {
        Some("wal-fetch") => crate::error::EXIT_FETCH_FATAL,
        _ => e.exit_code(),
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = parse_error_code(&e, std::env::args_os().skip(1));
            let _ = e.print();
            return code;
        }
    };
    init_logging();
    // For restore_command, even a bug must not read as "not available" (a panic exits 101).
    let fatal = if matches!(cli.command, Command::WalFetch(_)) {
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
            Command::BackupPush(a) => backup_push::run(&cli, a).await,
            Command::BackupFetch(a) => backup_fetch::run(&cli, a).await,
            Command::BackupList(a) => backup_list::run(&cli, a).await,
            Command::Delete(a) => delete::run(&cli, a).await,
            Command::Restore(a) => restore::run(&cli, a).await,
            Command::Agent(a) => agent::run(&cli, a).await,
            Command::RecoveryDone(a) => recovery_done::run(&cli, a).await,
            Command::CreateReplica(a) => create_replica::run(&cli, a).await,
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
    fn a_wal_fetch_command_line_clap_refuses_exits_128() {
        assert_eq!(code(&["wal-fetch", "--bogus", "a", "b"]), 128);
        assert_eq!(code(&["wal-fetch", "only-one"]), 128);
        assert_eq!(code(&["--envdir", "/x", "wal-fetch", "-z", "a", "b"]), 128);
        assert_eq!(code(&["--config=/x", "wal-fetch"]), 128);
        assert_eq!(code(&["wal-push", "--bogus", "a"]), 2);
        assert_eq!(code(&["wal-fetc", "a", "b"]), 2);
    }
}
