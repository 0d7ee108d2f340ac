//! The local PostgreSQL server as the agent's duties and restarts reach it: its data
//! directory, its binaries and how to connect.

use std::path::PathBuf;

use crate::backup::pg;
use crate::config::Vars;
use crate::error::Result;

/// How the agent reaches the local PostgreSQL server.
#[derive(Clone)]
pub struct LocalServer {
    pub pgdata: PathBuf,
    pub pg_bin_dir: PathBuf,
    connstring: Option<String>,
    /// The PG* variables libpq would read (and PGPASSFILE), for [`pg::config`].
    vars: Vars,
}

/// Shows no secret: no connection string, no variables.
impl std::fmt::Debug for LocalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalServer")
            .field("pgdata", &self.pgdata)
            .field("pg_bin_dir", &self.pg_bin_dir)
            .finish_non_exhaustive()
    }
}

impl LocalServer {
    pub fn new(
        pgdata: PathBuf,
        pg_bin_dir: PathBuf,
        connstring: Option<String>,
        vars: Vars,
    ) -> LocalServer {
        LocalServer {
            pgdata,
            pg_bin_dir,
            connstring,
            vars,
        }
    }

    /// How to connect: the connection string and the PG* variables, read anew each time (a
    /// password file may change while the agent runs).
    pub fn pg_config(&self) -> Result<pg::ConnConfig> {
        pg::config(self.connstring.as_deref(), &self.vars)
    }
}
