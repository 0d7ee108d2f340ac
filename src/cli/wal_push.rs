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
    /// WAL-E's `--pool-size N`: upload up to N segments per call, this one included (the
    /// others from archive_status' `.ready` files, in the background); sets the look-ahead
    /// to N-1 over WALKEEPER_PUSH_LOOKAHEAD.
    #[arg(short = 'p', long, value_name = "N")]
    pub pool_size: Option<usize>,
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        let mut settings = cli.settings()?;
        settings.refuse_unimplemented_encryption()?;
        if let Some(n) = args.pool_size {
            settings.push_lookahead = n.saturating_sub(1);
        }
        let pgdata = args
            .pgdata
            .clone()
            .or_else(|| WalContext::pgdata_of(&args.path));
        let ctx = Arc::new(WalContext::new(settings, pgdata.as_deref())?);
        let leadership = Arc::new(Leadership::from_settings(
            &ctx.archive.settings,
            &ctx.state_dir,
        )?);
        push::wal_push(ctx, leadership, &args.path, Some(&cli.self_exec())).await
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
