//! `walkeeper delete retain N | before NAME | everything [--confirm]`.

use crate::archive::Archive;
use crate::backup::delete::{execute, plan, Retention};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
    /// Delete for real; without it, print what would be deleted.
    #[arg(long, global = true)]
    pub confirm: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Keep the newest N backups and the WAL they need.
    Retain { n: usize },
    /// Delete the backups older than NAME and the WAL no kept backup needs.
    Before { name: String },
    /// Delete every backup and all WAL.
    Everything,
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let retention = match &args.what {
        What::Retain { n } => Retention::Retain(*n),
        What::Before { name } => Retention::Before(name.clone()),
        What::Everything => Retention::Everything,
    };
    let result = async {
        let archive = Archive::open(cli.settings()?)?;
        let p = plan(&archive.store, &retention).await?;
        let verb = if args.confirm {
            "delete"
        } else {
            "would delete"
        };
        for key in &p.keys {
            println!("{verb} {key}");
        }
        if args.confirm {
            let n = execute(&archive.store, &p).await?;
            tracing::info!(
                objects = n,
                backups = p.deleted_backups.len(),
                kept = p.kept.len(),
                "deleted"
            );
        } else {
            tracing::info!(objects = p.keys.len(), "dry run; add --confirm to delete");
        }
        Ok(())
    }
    .await;
    super::exit("delete", result)
}
