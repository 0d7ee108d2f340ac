//! `walkeeper backup-fetch [--delta | --seed-from OLD] <PGDATA> LATEST|<name>`: a full or delta
//! backup (walking its chain), into a new directory, over an existing data directory
//! (`--delta`), or into a new directory seeded from an old one (`--seed-from`).

use std::path::PathBuf;
use std::sync::Arc;

use crate::archive::Archive;
use crate::backup::fetch::{backup_fetch, FetchOptions};
use crate::backup::seed;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to restore: a new or empty directory.
    pub pgdata: PathBuf,
    /// LATEST or a backup name from backup-list.
    pub backup: String,
    /// WAL-E restore spec (JSON): where each tablespace goes.
    #[arg(long, value_name = "FILE")]
    pub restore_spec: Option<PathBuf>,
    /// Restore tablespaces into pg_tblspc/<oid> inside the data directory, without links.
    #[arg(long)]
    pub blind_restore: bool,
    /// WAL-E's `--pool-size N`: partitions downloaded at once (1 to 8; default
    /// WALG_DOWNLOAD_CONCURRENCY, else 2).
    #[arg(short = 'p', long, value_name = "N")]
    pub pool_size: Option<usize>,
    /// WAL-G options walkeeper does not implement: refused by name.
    #[command(flatten)]
    pub refused: RefusedWalG,
    /// Do not make the restored files durable before exiting (by default one syncfs per file
    /// system restored to).
    #[arg(long)]
    pub no_sync: bool,
    /// pgBackRest's `--delta`: restore into an existing data directory (PostgreSQL stopped),
    /// keeping the files that already match the backup (size and modification time as the
    /// backup recorded them), rewriting the rest and removing what the backup does not have;
    /// the member's configuration files stay. An interrupted run leaves a directory that does
    /// not start (no pg_control) and that the next run completes.
    #[arg(long)]
    pub delta: bool,
    /// Restore into a new or empty directory seeded from an old data directory of the same
    /// cluster (PostgreSQL stopped on it): the old files the backup recorded unchanged (size
    /// and modification time) are cloned (reflink) where the file system can, else copied;
    /// then a delta restore completes the new directory. The old directory is only read.
    #[arg(long, value_name = "OLD_PGDATA", conflicts_with = "delta")]
    pub seed_from: Option<PathBuf>,
}

/// WAL-G's backup-fetch options that walkeeper refuses, with what it does instead.
#[derive(Debug, clap::Args)]
pub struct RefusedWalG {
    #[arg(long, hide = true, value_name = "DATA")]
    pub target_user_data: Option<String>,
    #[arg(long, hide = true)]
    pub reverse_delta_unpack: bool,
    #[arg(long, hide = true)]
    pub skip_redundant_tars: bool,
    #[arg(long, hide = true, value_name = "MASK")]
    pub mask: Option<String>,
    #[arg(long, hide = true, value_name = "DATABASES")]
    pub restore_only: Option<String>,
}

impl RefusedWalG {
    fn refusal(&self) -> Option<String> {
        let (opt, instead) = if self.target_user_data.is_some() {
            (
                "--target-user-data",
                "name the backup (backup-list --detail --json shows each one's user_data)",
            )
        } else if self.reverse_delta_unpack || self.skip_redundant_tars {
            (
                "--reverse-delta-unpack/--skip-redundant-tars",
                "walkeeper restores full backups, which need neither",
            )
        } else if self.mask.is_some() || self.restore_only.is_some() {
            (
                "--mask/--restore-only",
                "walkeeper restores the whole data directory",
            )
        } else {
            return None;
        };
        Some(format!(
            "{opt} is not implemented: {instead}; drop the option"
        ))
    }
}

impl Args {
    pub fn options(&self, archive: &Archive) -> FetchOptions {
        FetchOptions {
            restore_spec: self.restore_spec.clone(),
            blind_restore: self.blind_restore,
            no_sync: self.no_sync,
            delta: self.delta,
            concurrency: self
                .pool_size
                .or_else(|| {
                    archive
                        .settings
                        .vars
                        .get("WALG_DOWNLOAD_CONCURRENCY")
                        .and_then(|v| v.parse().ok())
                })
                .unwrap_or(2usize)
                .clamp(1, 8),
        }
    }
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        if let Some(msg) = args.refused.refusal() {
            return Err(crate::Error::BadInput(msg));
        }
        let archive = Arc::new(Archive::open(cli.settings()?)?);
        let mut opts = args.options(&archive);
        if let Some(old) = &args.seed_from {
            seed_from(&archive, old, &args.pgdata, &args.backup).await?;
            opts.delta = true;
        }
        backup_fetch(archive, &args.pgdata, &args.backup, opts).await
    }
    .await;
    super::exit("backup-fetch", result)
}

/// `--seed-from`: seeds the new (missing or empty) `pgdata` from `old`.
async fn seed_from(
    archive: &Archive,
    old: &std::path::Path,
    pgdata: &std::path::Path,
    which: &str,
) -> crate::Result<()> {
    use crate::Error;
    if std::fs::read_dir(pgdata).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::BadInput(format!(
            "{} is not empty; --seed-from restores into a new or empty directory",
            pgdata.display()
        )));
    }
    if !old.join("PG_VERSION").is_file() {
        return Err(Error::BadInput(format!(
            "--seed-from {}: not a PostgreSQL data directory (no PG_VERSION)",
            old.display()
        )));
    }
    if old.join("postmaster.pid").exists() {
        return Err(Error::BadInput(format!(
            "--seed-from {}: it has a postmaster.pid; stop PostgreSQL on it first",
            old.display()
        )));
    }
    let est = seed::estimate(archive, which, old, pgdata).await?;
    let (old2, new2, est2) = (old.to_path_buf(), pgdata.to_path_buf(), est.clone());
    let done = tokio::task::spawn_blocking(move || seed::seed(&est2, &old2, &new2))
        .await
        .map_err(|e| Error::io(pgdata, std::io::Error::other(e.to_string())))??;
    tracing::info!(
        backup = est.backup,
        from = %old.display(),
        files = done.files,
        bytes = done.bytes,
        backup_bytes = est.backup_bytes,
        how = if done.cloned { "reflink" } else { "copy" },
        "seeded from the old data directory"
    );
    Ok(())
}
