//! `walkeeper restore <PGDATA> --target-time T | --target-lsn L [--backup NAME]`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::archive::Archive;
use crate::backup::restore::{parse_target_time, restore, Action, RestoreOptions, Target};
use crate::wal::Lsn;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to restore: a new or empty directory.
    pub pgdata: PathBuf,
    /// Recover to this time (RFC 3339 with a zone).
    #[arg(long, conflicts_with = "target_lsn")]
    pub target_time: Option<String>,
    /// Recover to this LSN (X/Y).
    #[arg(long)]
    pub target_lsn: Option<String>,
    /// Use this backup instead of the newest one that finished before the target.
    #[arg(long)]
    pub backup: Option<String>,
    /// Recover along this timeline's history (default: the newest timeline in the archive).
    /// A target on a branch the newest history abandoned needs it.
    #[arg(long)]
    pub timeline: Option<u32>,
    #[arg(long, value_enum, default_value = "promote")]
    pub target_action: ActionArg,
    #[command(flatten)]
    pub fetch: TablespaceArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ActionArg {
    Promote,
    Pause,
}

#[derive(Debug, clap::Args)]
pub struct TablespaceArgs {
    #[arg(long, value_name = "FILE")]
    pub restore_spec: Option<PathBuf>,
    #[arg(long)]
    pub blind_restore: bool,
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        let target = match (&args.target_time, &args.target_lsn) {
            (Some(t), _) => Target::Time(parse_target_time(t)?),
            (None, Some(l)) => Target::Lsn(Lsn::parse(l)?),
            (None, None) => Target::Latest,
        };
        let archive = Arc::new(Archive::open(cli.settings()?)?);
        let command = cli.self_exec().shell_line(&["wal-fetch", "%f", "%p"])?;
        let fetch = crate::backup::fetch::FetchOptions {
            restore_spec: args.fetch.restore_spec.clone(),
            blind_restore: args.fetch.blind_restore,
            no_sync: false,
            concurrency: 2,
            delta: false,
        };
        let opts = RestoreOptions {
            target,
            backup: args.backup.clone(),
            timeline: args.timeline,
            action: match args.target_action {
                ActionArg::Promote => Action::Promote,
                ActionArg::Pause => Action::Pause,
            },
            fetch,
            restore_command: command,
            recovery_end_command: Some(cli.self_exec().shell_line(&["recovery-done"])?),
        };
        let info = restore(archive, &args.pgdata, opts).await?;
        println!(
            "restored backup {} into {}; start PostgreSQL to recover to the target",
            info.name,
            args.pgdata.display()
        );
        Ok(())
    }
    .await;
    super::exit("restore", result)
}
