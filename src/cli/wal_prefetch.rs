//! `walkeeper wal-prefetch <segment>`: started in the background by wal-fetch.

use std::path::PathBuf;
use std::sync::Arc;

use crate::wal::{fetch, WalContext};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The segment just restored; the ones after it are prefetched.
    pub after: String,
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        let settings = cli.settings()?;
        settings.refuse_unimplemented_encryption()?;
        let ctx = Arc::new(WalContext::new(settings, args.pgdata.as_deref())?);
        fetch::prefetch(ctx, &args.after).await
    }
    .await;
    match result {
        Ok(n) => {
            tracing::debug!(after = %args.after, fetched = n, "prefetch done");
            0
        }
        Err(e) => {
            tracing::warn!(after = %args.after, "prefetch failed: {e}");
            e.exit_code()
        }
    }
}
