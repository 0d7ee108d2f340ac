//! `walkeeper backup-push <PGDATA>`: a base backup of the running server.

use std::path::PathBuf;
use std::sync::Arc;

use crate::archive::Archive;
use crate::backup::push::{backup_push, PushOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's data directory.
    pub pgdata: PathBuf,
    /// libpq connection string (key=value or URL); PG* variables and PGPASSFILE fill the rest.
    #[arg(long)]
    pub connstring: Option<String>,
    /// Read the data directory at most this many bytes per second.
    #[arg(long, value_name = "BYTES_PER_SECOND")]
    pub cluster_read_rate_limit: Option<u64>,
    /// Mark the backup permanent (kept by `delete retain`).
    #[arg(long)]
    pub permanent: bool,
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        let settings = cli.settings()?;
        settings.refuse_unimplemented_encryption()?;
        let archive = Arc::new(Archive::open(settings)?);
        let vars = &archive.settings.vars;
        let part_size = vars
            .get("WALG_TAR_SIZE_THRESHOLD")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1u64 << 30);
        let concurrency = vars
            .get("WALG_UPLOAD_CONCURRENCY")
            .and_then(|v| v.parse().ok())
            .unwrap_or(2usize)
            .clamp(1, 8);
        let opts = PushOptions {
            pgdata: args.pgdata.clone(),
            connstring: args.connstring.clone(),
            read_rate_limit: args.cluster_read_rate_limit,
            part_size,
            concurrency,
            permanent: args.permanent,
        };
        backup_push(archive, opts).await
    }
    .await;
    super::exit("backup-push", result)
}
