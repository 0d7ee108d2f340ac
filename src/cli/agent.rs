//! `walkeeper agent`: the daemon beside Patroni (see [`crate::cluster::agent`]).

use crate::cluster::agent::Agent;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(cli: &super::Cli, _args: &Args) -> i32 {
    let result = async {
        let settings = cli.settings()?;
        // The agent archives, heals and backs up: an encryption it cannot apply must stop it
        // before it uploads anything in plaintext.
        settings.refuse_unimplemented_encryption()?;
        // An OpenPGP key it cannot read stops it too, before any other check.
        crate::codec::pgp::PgpKeys::from_vars(&settings.vars)?;
        let agent = Agent::new(settings, cli.global_args()).await?;
        agent.run().await
    }
    .await;
    super::exit("agent", result)
}
