//! `walkeeper wal-push <path>`: PostgreSQL's archive_command.
//!
//! Exit codes: 0 archived (or already archived, identical); 1 storage or other failure;
//! 2 bad input; 3 the archive holds different content under this name; 4 not the leader.

use std::path::PathBuf;
use std::sync::Arc;

use crate::cluster::Leadership;
use crate::wal::{push, WalContext};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The WAL file (`%p`), relative to the data directory or absolute.
    pub path: PathBuf,
    /// The data directory (default: the one an absolute `<PGDATA>/pg_wal/<file>` path names,
    /// else the current directory, as PostgreSQL runs archive_command there).
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        let settings = cli.settings()?;
        settings.refuse_unimplemented_encryption()?;
        let pgdata = args
            .pgdata
            .clone()
            .or_else(|| WalContext::pgdata_of(&args.path));
        let ctx = Arc::new(WalContext::new(settings, pgdata.as_deref())?);
        let leadership = Arc::new(Leadership::from_settings(
            &ctx.archive.settings,
            &ctx.state_dir,
        )?);
        push::wal_push(ctx, leadership, &args.path, Some(&cli.global_args())).await
    }
    .await;
    match result {
        Ok(_) => 0,
        Err(e) => {
            tracing::error!(path = %args.path.display(), "wal-push failed: {e}");
            e.exit_code()
        }
    }
}
