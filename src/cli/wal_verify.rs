//! `walkeeper wal-verify`: exit 0 when the archive has no gap, 1 when it has.

use crate::archive::Archive;
use crate::backup::verify::verify;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(cli: &super::Cli, _args: &Args) -> i32 {
    let result = async {
        let archive = Archive::open(cli.settings()?)?;
        verify(&archive).await
    }
    .await;
    match result {
        Ok(r) => {
            println!(
                "timeline {} segments {}..{}: {} checked, {} missing",
                r.timeline,
                r.first.as_deref().unwrap_or("-"),
                r.last.as_deref().unwrap_or("-"),
                r.checked,
                r.missing.len()
            );
            for m in &r.missing {
                println!("missing {m}");
            }
            i32::from(!r.missing.is_empty())
        }
        Err(e) => {
            tracing::error!("wal-verify failed: {e}");
            e.exit_code()
        }
    }
}
