//! Library error type. Every variant names what it concerns: a file, a key, a segment.

use std::path::PathBuf;

/// Exit code for a WAL file that is genuinely absent from the archive (WAL-G's value).
pub const EXIT_MISSING: i32 = 74;
/// Exit code for bad input: names, paths, configuration.
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code when the archive already holds different content under the same name.
pub const EXIT_CONFLICT: i32 = 3;
/// Exit code when this member may not upload (not the leader).
pub const EXIT_NOT_LEADER: i32 = 4;
/// Exit code for restore_command when storage keeps failing: above 125, so PostgreSQL aborts
/// recovery instead of treating the file as missing.
pub const EXIT_FETCH_FATAL: i32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadInput(String),

    #[error("configuration: {0}")]
    Config(String),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("storage {op} {key}: {source}")]
    Storage {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },

    #[error("{key}: not in the archive")]
    NotFound { key: String },

    #[error("{key}: {msg}")]
    Corrupt { key: String, msg: String },

    #[error(
        "{name}: the archive already holds different content under this name \
         (archived: {archived_size} bytes sha256 {archived_sha256}; local: {local_size} bytes sha256 {local_sha256}); refusing to overwrite"
    )]
    Conflict {
        name: String,
        archived_size: u64,
        archived_sha256: String,
        local_size: u64,
        local_sha256: String,
    },

    #[error("{0}")]
    NotLeader(String),

    /// An upload that could not finish before its cutoff (the leader key's lease) was
    /// abandoned before the object could appear.
    #[error(
        "{key}: abandoned: the upload could not finish before the leader key's lease might expire"
    )]
    Deadline { key: String },

    /// PostgreSQL could not be reached, or a query failed or answered something unusable.
    #[error("{0}")]
    Postgres(String),

    /// etcd, Patroni or the agent could not be asked, or answered something unusable.
    #[error("{0}")]
    Cluster(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The process exit code this error maps to for commands that follow the generic contract.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadInput(_) | Error::Config(_) => EXIT_BAD_INPUT,
            Error::Conflict { .. } => EXIT_CONFLICT,
            Error::NotLeader(_) | Error::Deadline { .. } => EXIT_NOT_LEADER,
            Error::NotFound { .. } => EXIT_MISSING,
            Error::Io { .. }
            | Error::Storage { .. }
            | Error::Corrupt { .. }
            | Error::Postgres(_)
            | Error::Cluster(_) => 1,
        }
    }
}
