//! `walkeeper create-replica --scope=… --datadir=… --connstring=… [--threshold_megabytes=N]
//! [--threshold_backup_size_percentage=P] [--retries=N] [--no_leader=1]`: a Patroni
//! `create_replica_methods` entry (see [`crate::cluster::replica`]).
//!
//! Exit 0: the data directory holds a restored backup set up to recover from the archive and
//! follow the leader. Exit 1: declined (over a threshold, no suitable backup) or failed; Patroni
//! then empties the directory and tries its next method. Exit 2: unusable arguments.

use std::sync::Arc;

use crate::archive::Archive;
use crate::cluster::replica::{plan, restore, ReplicaArgs, Thresholds};
use crate::error::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Patroni's `--key=value` arguments; unknown keys are ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<String>,
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        let a = ReplicaArgs::parse(&args.args)?;
        let datadir = a
            .datadir
            .clone()
            .ok_or_else(|| Error::BadInput("--datadir is required".into()))?;
        let settings = cli.settings()?;
        let thresholds = Thresholds::resolve(&a, &settings.vars)?;
        let cluster = settings.cluster.clone();
        let archive = Arc::new(Archive::open(settings)?);
        let p = plan(&archive, cluster.as_ref(), &a, &thresholds).await?;
        tracing::info!(backup = p.backup.name, "create-replica: {}", p.reason);
        if !p.restore {
            return Ok(false);
        }
        let command = cli.self_exec().shell_line(&["wal-fetch", "%f", "%p"])?;
        restore(archive, &p, &a, &datadir, &command).await?;
        tracing::info!(
            backup = p.backup.name,
            datadir = %datadir.display(),
            "create-replica: restored; the replica recovers from the archive and follows the leader"
        );
        Ok(true)
    }
    .await;
    match result {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            tracing::error!("create-replica failed: {e}");
            match e {
                Error::BadInput(_) | Error::Config(_) => 2,
                _ => 1,
            }
        }
    }
}
