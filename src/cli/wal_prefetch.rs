//! `walkeeper wal-prefetch`, in two forms:
//! - WAL-E's `wal-prefetch BASE_DIRECTORY SEGMENT`: download SEGMENT now, so that the next
//!   wal-fetch of it is served locally. BASE_DIRECTORY is WAL-E's: the directory restore_command
//!   writes into (`<PGDATA>/pg_wal`), or the data directory itself.
//! - `wal-prefetch SEGMENT --pgdata DIR --count N`: started in the background by wal-fetch; the
//!   N segments after SEGMENT.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::wal::{fetch, WalContext};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// WAL-E's BASE_DIRECTORY then SEGMENT; or only the segment just restored (the ones after
    /// it are prefetched).
    #[arg(num_args = 1..=2, required = true, value_name = "[BASE_DIRECTORY] SEGMENT")]
    pub words: Vec<String>,
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
    /// How many segments after SEGMENT (default: the configured prefetch).
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
}

/// The data directory WAL-E's BASE_DIRECTORY stands for.
fn pgdata_of_base(base: &Path) -> PathBuf {
    match base.file_name().and_then(|n| n.to_str()) {
        Some("pg_wal" | "pg_xlog") => base.parent().map(Path::to_path_buf).unwrap_or_default(),
        _ => base.to_path_buf(),
    }
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let (pgdata, segment, wal_e) = match args.words.as_slice() {
        [base, seg] => (Some(pgdata_of_base(Path::new(base))), seg.clone(), true),
        [seg] => (args.pgdata.clone(), seg.clone(), false),
        _ => return 2,
    };
    let result = async {
        let mut settings = cli.settings()?;
        settings.refuse_unimplemented_encryption()?;
        if let Some(n) = args.count {
            settings.prefetch = n;
        }
        let ctx = Arc::new(WalContext::new(settings, pgdata.as_deref())?);
        if wal_e {
            fetch::prefetch_one(ctx, &segment).await.map(usize::from)
        } else {
            fetch::prefetch(ctx, &segment).await
        }
    }
    .await;
    match result {
        Ok(n) => {
            if wal_e {
                tracing::info!(segment, fetched = n, "prefetch done");
            } else {
                tracing::debug!(after = %segment, fetched = n, "prefetch done");
            }
            0
        }
        Err(e) => {
            if wal_e {
                tracing::error!(segment, "wal-prefetch failed: {e}");
            } else {
                tracing::warn!(after = %segment, "prefetch failed: {e}");
            }
            e.exit_code()
        }
    }
}
