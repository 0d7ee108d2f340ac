//! `walkeeper agent`: the daemon beside Patroni (see [`crate::cluster::agent`]).

use crate::cluster::agent::Agent;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(cli: &super::Cli, _args: &Args) -> i32 {
    let result = async {
        let agent = Agent::new(cli.settings()?, cli.global_args()).await?;
        agent.run().await
    }
    .await;
    super::exit("agent", result)
}
