//! What wal-push asks before it uploads a segment the archive does not hold yet: the upload gate.
//!
//! The WAL layer defines the question; the cluster layer answers it (Patroni's leader key, the
//! lease, the timeline history). Without a cluster every caller may upload ([`AlwaysUpload`]).

use std::fmt::Debug;
use std::time::Instant;

use futures::future::BoxFuture;

use super::names::WalName;
use crate::archive::Archive;
use crate::error::Result;

/// May this process upload a WAL file now?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushDecision {
    /// Upload it; when a deadline is given, the object must be durable before it.
    Upload { deadline: Option<Instant> },
    /// Do not upload; succeed only if the archive already holds an identical object.
    VerifyOnly { reason: String },
}

/// Answers [`PushDecision`] for one WAL file. `seg_size` is the local file's size.
pub trait UploadGate: Debug + Send + Sync {
    fn decide<'a>(
        &'a self,
        name: &'a WalName,
        seg_size: u64,
        archive: &'a Archive,
    ) -> BoxFuture<'a, Result<PushDecision>>;
}

/// Every caller may upload: a single server, or archiving without a cluster.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysUpload;

impl UploadGate for AlwaysUpload {
    fn decide<'a>(
        &'a self,
        _name: &'a WalName,
        _seg_size: u64,
        _archive: &'a Archive,
    ) -> BoxFuture<'a, Result<PushDecision>> {
        Box::pin(async { Ok(PushDecision::Upload { deadline: None }) })
    }
}
