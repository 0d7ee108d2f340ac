//! `walkeeper wal-fetch <name> <dest>`: PostgreSQL's restore_command.
//!
//! Exit codes: 0 restored; 74 not in the archive (PostgreSQL treats it as "not available");
//! 128 for every other failure: storage failed after the retry bound, the object is corrupt or
//! holds another segment, the configuration, an option, the name, the destination or the data
//! directory is unusable. 128 is above 125, so PostgreSQL aborts recovery instead of mistaking
//! an outage or a typo for the end of the archive.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, EXIT_FETCH_FATAL, EXIT_MISSING};
use crate::wal::fetch::{self, FetchOutcome};
use crate::wal::names::WalName;
use crate::wal::WalContext;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The WAL file name (`%f`).
    pub name: String,
    /// Where to write it (`%p`), relative to the data directory or absolute.
    pub dest: PathBuf,
    /// The data directory (default: the one an absolute `<PGDATA>/pg_wal/<file>` destination
    /// names, else the current directory, as PostgreSQL runs restore_command there).
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
    /// WAL-E's `-p N` / `--prefetch N`: download up to N following segments in the
    /// background after a hit (0: none), over WALKEEPER_PREFETCH.
    #[arg(short = 'p', long, value_name = "N")]
    pub prefetch: Option<usize>,
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        let pgdata = args
            .pgdata
            .clone()
            .or_else(|| WalContext::pgdata_of(&args.dest));
        let mut settings = cli.settings()?;
        if let Some(n) = args.prefetch {
            settings.prefetch = n;
        }
        // A user who set WAL-G's or WAL-E's encryption expects decryption: never fetch without.
        settings.refuse_unimplemented_encryption()?;
        let ctx = Arc::new(WalContext::new(settings, pgdata.as_deref())?);
        let res = fetch::wal_fetch(ctx.clone(), &args.name, &args.dest).await?;
        Ok::<_, Error>((ctx, res))
    }
    .await;
    match result {
        Ok((ctx, (wal, outcome))) => {
            let (from, bytes) = match outcome {
                FetchOutcome::Downloaded { bytes } => ("archive", bytes),
                FetchOutcome::FromPrefetch { bytes } => ("prefetch", bytes),
            };
            tracing::info!(file = %wal, from, bytes, "restored");
            if let (WalName::Segment(seg), true) = (&wal, ctx.settings.prefetch > 0) {
                fetch::spawn_prefetch(&ctx, seg, &cli.self_exec());
            }
            0
        }
        Err(Error::NotFound { key }) => {
            tracing::info!(file = %args.name, "not in the archive ({key})");
            EXIT_MISSING
        }
        Err(e) => {
            tracing::error!(file = %args.name, "wal-fetch failed: {e}");
            EXIT_FETCH_FATAL
        }
    }
}
