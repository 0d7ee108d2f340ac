//! walkeeper: keeps a Patroni PostgreSQL cluster's WAL and base backups safe in object storage.
//!
//! Layers: [`storage`] (object_store for file://, s3://, gs://, az://) · [`codec`] (streaming
//! compression and age encryption) · [`wal`] (archive_command / restore_command) · [`cluster`]
//! (etcd, Patroni, the agent) · [`api`] (the agent's HTTP API) · [`cli`] (one file per command).

pub mod api;
pub mod archive;
pub mod backup;
pub mod cli;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod error;
pub mod security;
pub mod selfexec;
pub mod storage;
pub mod wal;

pub use error::{Error, Result};
