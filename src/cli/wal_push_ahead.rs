//! `walkeeper wal-push-ahead --pgdata DIR <name>...`: the detached look-ahead uploader that
//! wal-push starts (see [`crate::wal::push::push_ahead`]). Always exits 0: PostgreSQL archives
//! whatever it did not.

use std::path::PathBuf;
use std::sync::Arc;

use crate::cluster::Leadership;
use crate::wal::names::WalName;
use crate::wal::{push, WalContext};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The data directory.
    #[arg(long, value_name = "DIR")]
    pub pgdata: PathBuf,
    /// WAL file names in pg_wal.
    pub names: Vec<String>,
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        let names = args
            .names
            .iter()
            .map(|n| WalName::parse(n))
            .collect::<crate::Result<Vec<_>>>()?;
        let settings = cli.settings()?;
        settings.refuse_unimplemented_encryption()?;
        let ctx = Arc::new(WalContext::new(settings, Some(&args.pgdata))?);
        let leadership = Arc::new(Leadership::from_settings(
            &ctx.archive.settings,
            &ctx.state_dir,
        )?);
        Ok::<_, crate::Error>(push::push_ahead(ctx, leadership, &names).await)
    }
    .await;
    match result {
        Ok(n) => {
            tracing::debug!(uploaded = n, "look-ahead done");
            0
        }
        Err(e) => {
            tracing::warn!("look-ahead failed: {e}");
            0
        }
    }
}
