//! `walkeeper wal-verify`: exit 0 when the archive has no gap and no WAL name stored under two
//! codecs with different content, 1 otherwise. Identical copies are reported and accepted.

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
            for d in &r.duplicates {
                let verdict = if d.differs() { "conflict" } else { "duplicate" };
                let list: Vec<String> =
                    d.copies.iter().map(|(k, x)| format!("{k} ({x})")).collect();
                println!("{verdict} {}: {}", d.name, list.join(", "));
            }
            i32::from(!r.is_clean())
        }
        Err(e) => {
            tracing::error!("wal-verify failed: {e}");
            e.exit_code()
        }
    }
}
