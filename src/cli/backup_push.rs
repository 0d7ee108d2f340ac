//! `walkeeper backup-push <PGDATA>`: a base backup of the running server (or, with
//! `--while-offline`, of a stopped one). Takes WAL-E's options (`--pool-size N`,
//! `--cluster-read-rate-limit`, `--while-offline`) and WAL-G's (`--full`, `--permanent`,
//! `--add-user-data`, `--delta-from-name`, `--delta-from-user-data`, WALG_DELTA_MAX_STEPS); WAL-G's `-p` is told from WAL-E's `-p N` by its value (see
//! [`super::rewrite_argv`]). WAL-G options walkeeper does not implement are refused by name.

use std::path::PathBuf;
use std::sync::Arc;

use crate::archive::Archive;
use crate::backup::delta::DeltaRequest;
use crate::backup::push::{backup_push, PushOptions};
use crate::error::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's data directory.
    pub pgdata: PathBuf,
    /// libpq connection string (key=value or URL); PG* variables and PGPASSFILE fill the rest.
    #[arg(long)]
    pub connstring: Option<String>,
    /// Read the data directory at most this many bytes per second (also WALG_DISK_RATE_LIMIT
    /// and WALG_NETWORK_RATE_LIMIT: the lowest applies).
    #[arg(long, value_name = "BYTES_PER_SECOND")]
    pub cluster_read_rate_limit: Option<u64>,
    /// Mark the backup permanent (kept by `delete retain`); WAL-G's `-p` too.
    #[arg(long)]
    pub permanent: bool,
    /// WAL-E's `--pool-size N` (`-p N`): partitions compressed and uploaded at once (1 to 8;
    /// default WALG_UPLOAD_CONCURRENCY, else 2).
    #[arg(long, value_name = "N")]
    pub pool_size: Option<usize>,
    /// WAL-E's `--while-offline`: back up a cleanly stopped cluster, read from its pg_control
    /// (no connection, no backup mode). Refused unless pg_control says "shut down".
    #[arg(long)]
    pub while_offline: bool,
    /// WAL-G's `--full` (`-f`): a full backup even when WALG_DELTA_MAX_STEPS asks for deltas.
    #[arg(short = 'f', long)]
    pub full: bool,
    /// WAL-G's `--delta-from-name NAME`: a delta backup of this backup.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["full", "delta_from_user_data"])]
    pub delta_from_name: Option<String>,
    /// WAL-G's `--delta-from-user-data DATA`: a delta backup of the backup whose user data
    /// (`--add-user-data`) is DATA.
    #[arg(long, value_name = "DATA", conflicts_with = "full")]
    pub delta_from_user_data: Option<String>,
    /// WAL-G's `--add-user-data JSON`: stored in the sentinel and metadata.json (a value that
    /// is not JSON is stored as a string, as WAL-G does).
    #[arg(long, value_name = "JSON")]
    pub add_user_data: Option<String>,
    /// WAL-G's `--verify` (`-v`): verify page checksums while reading (WALG_VERIFY_PAGE_CHECKSUMS;
    /// by default on when the cluster has data checksums). Corrupt pages are reported in the
    /// log, the sentinel (`PageChecksums`) and files_metadata.json (`CorruptBlocks`); the
    /// backup still completes.
    #[arg(short = 'v', long)]
    pub verify: bool,
    /// WAL-G's `--store-all-corrupt`: list every corrupt block of a file, not only the first ten
    /// (WALG_STORE_ALL_CORRUPT_BLOCKS).
    #[arg(long)]
    pub store_all_corrupt: bool,
    /// WAL-G options walkeeper does not implement: refused by name.
    #[command(flatten)]
    pub refused: RefusedWalG,
}

/// WAL-G's backup-push options that walkeeper refuses, with what it does instead.
#[derive(Debug, clap::Args)]
pub struct RefusedWalG {
    #[arg(long, hide = true)]
    pub rating_composer: bool,
    #[arg(long, hide = true)]
    pub copy_composer: bool,
    #[arg(long, hide = true)]
    pub database_composer: bool,
    #[arg(long, hide = true)]
    pub without_files_metadata: bool,
    #[arg(long, hide = true, value_name = "NAME")]
    pub target_storage: Option<String>,
}

impl RefusedWalG {
    fn refusal(&self) -> Option<String> {
        let (opt, instead) = if self.rating_composer || self.copy_composer || self.database_composer
        {
            (
                "--rating-composer/--copy-composer/--database-composer",
                "walkeeper cuts partitions by size (WALG_TAR_SIZE_THRESHOLD)",
            )
        } else if self.without_files_metadata {
            (
                "--without-files-metadata",
                "walkeeper's backup layout is fixed",
            )
        } else if self.target_storage.is_some() {
            (
                "--target-storage",
                "walkeeper writes to the one archive prefix it is given",
            )
        } else {
            return None;
        };
        Some(format!(
            "{opt} is not implemented: {instead}; drop the option"
        ))
    }
}

/// WAL-G's user data: JSON when it parses, else the text itself.
fn user_data(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_string()))
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        if let Some(msg) = args.refused.refusal() {
            return Err(Error::BadInput(msg));
        }
        let settings = cli.settings()?;
        settings.refuse_unimplemented_encryption()?;
        let archive = Arc::new(Archive::open(settings)?);
        let backup = &archive.settings.backup;
        let concurrency = args
            .pool_size
            .or(backup.upload_concurrency)
            .unwrap_or(2usize)
            .clamp(1, 8);
        let read_rate_limit = [args.cluster_read_rate_limit, backup.read_rate_limit]
            .into_iter()
            .flatten()
            .filter(|n| *n > 0)
            .min();
        let opts = PushOptions {
            pgdata: args.pgdata.clone(),
            connstring: args.connstring.clone(),
            read_rate_limit,
            part_size: backup.tar_size_threshold,
            concurrency,
            permanent: args.permanent,
            user_data: args.add_user_data.as_deref().map(user_data),
            verify_pages: args.verify.then_some(true).or(backup.verify_page_checksums),
            store_all_corrupt: args.store_all_corrupt || backup.store_all_corrupt_blocks,
            delta: DeltaRequest {
                max_steps: backup.delta_max_steps,
                origin: backup.delta_origin,
                full: args.full,
                from_name: args.delta_from_name.clone(),
                from_user_data: args.delta_from_user_data.as_deref().map(user_data),
            },
        };
        if args.while_offline {
            crate::backup::offline::backup_push_offline(archive, opts).await
        } else {
            backup_push(archive, opts).await
        }
    }
    .await;
    super::exit("backup-push", result)
}
