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
    /// Keep the newest N backups, every permanent backup, and the WAL they need.
    Retain { n: usize },
    /// Delete the non-permanent backups older than NAME and the WAL no kept backup needs.
    Before { name: String },
    /// Delete every backup, all WAL and the `.history` files. Refuses while a permanent backup
    /// exists, unless forced (`--force`, or WAL-G's `FORCE`).
    Everything {
        /// `FORCE` (WAL-G's spelling): delete permanent backups too.
        force_word: Option<String>,
        /// Delete permanent backups too.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let retention = match &args.what {
        What::Retain { n } => Retention::Retain(*n),
        What::Before { name } => Retention::Before(name.clone()),
        What::Everything { force_word, force } => match force_word.as_deref() {
            None => Retention::Everything { force: *force },
            Some("FORCE") => Retention::Everything { force: true },
            Some(other) => {
                eprintln!("delete everything: unexpected {other:?} (only FORCE is accepted)");
                return 2;
            }
        },
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
