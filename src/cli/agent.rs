//! `walkeeper agent`: the daemon beside Patroni, or, without cluster settings, beside a single
//! PostgreSQL server. Wires the duties ([`crate::cluster::agent`], [`crate::cluster::standalone`])
//! and the HTTP API ([`crate::api`], [`crate::api::sidecar`]) together.

use crate::cluster::agent::Agent;
use crate::cluster::standalone::Standalone;
use crate::config::Settings;
use crate::error::Error;

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
        if settings.cluster.is_none() {
            return run_standalone(settings).await;
        }
        let agent = Agent::new(settings, cli.self_exec()).await?;
        let listen = agent.listen();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Error::Config(format!("API listen {listen}: {e}")))?;
        let api = tokio::spawn(crate::api::serve(agent.api(), listener));
        let result = agent.run().await;
        api.abort();
        result
    }
    .await;
    super::exit("agent", result)
}

/// No cluster settings: a single server, always the leader, served until SIGTERM or SIGINT.
async fn run_standalone(settings: Settings) -> crate::Result<()> {
    let s = Standalone::new(settings)?;
    let listener = tokio::net::TcpListener::bind(s.config().listen)
        .await
        .map_err(|e| Error::Config(format!("API listen {}: {e}", s.config().listen)))?;
    tracing::info!(
        api = %s.config().listen,
        pgdata = %s.config().pgdata.display(),
        archive = s.archive_description(),
        tokenless_networks = ?s.config().tokenless_networks,
        "standalone agent starting (no cluster settings: this server is always the leader)"
    );
    let api = tokio::spawn(crate::api::sidecar::serve(s, listener));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Config(format!("SIGTERM handler: {e}")))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("standalone agent stopping");
    api.abort();
    Ok(())
}
