//! `walkeeper agent`: the daemon beside Patroni. Wires the agent's duties
//! ([`crate::cluster::agent`]) and its HTTP API ([`crate::api`]) together.

use crate::cluster::agent::Agent;
use crate::Error;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(cli: &super::Cli, _args: &Args) -> i32 {
    let result = async {
        let settings = cli.settings()?;
        // The agent archives, heals and backs up: an encryption it cannot apply must stop it
        // before it uploads anything in plaintext.
        settings.refuse_unimplemented_encryption()?;
        let agent = Agent::new(settings, cli.self_exec()).await?;
        let listen = agent.listen();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Error::Config(format!("API listen {listen}: {e}")))?;
        let api = tokio::spawn(crate::api::serve(agent.clone(), listener));
        let result = agent.run().await;
        api.abort();
        result
    }
    .await;
    super::exit("agent", result)
}
