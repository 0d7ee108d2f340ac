//! `walkeeper recovery-done`: the recovery_end_command `restore` writes. It removes the recovery
//! settings `restore` put into postgresql.auto.conf, so that no later base backup carries the
//! target along.

use std::path::PathBuf;

use crate::backup::restore::remove_recovery_block;
use crate::error::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The data directory (default: the current directory, as PostgreSQL runs the command).
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
}

pub async fn run(_cli: &super::Cli, args: &Args) -> i32 {
    let result = match &args.pgdata {
        Some(p) => Ok(p.clone()),
        None => std::env::current_dir().map_err(|e| Error::io(".", e)),
    }
    .and_then(|dir| remove_recovery_block(&dir).map(|found| (dir, found)));
    match result {
        Ok((dir, found)) => {
            if found {
                tracing::info!(pgdata = %dir.display(), "recovery ended: removed walkeeper's recovery settings from postgresql.auto.conf");
            }
            0
        }
        Err(e) => {
            tracing::error!("recovery-done failed: {e}");
            e.exit_code()
        }
    }
}
