//! `walkeeper version`: the version alone on stdout, as WAL-E's `version` prints it.

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_cli: &super::Cli, _args: &Args) -> i32 {
    println!("{}", env!("CARGO_PKG_VERSION"));
    0
}
