//! Gap healing as the agent runs it: on gaining the leader key, while a gap stays open, and
//! from members that are not the leader.

use std::time::{Duration, Instant};

use super::{Agent, GAP_GRACE};
use crate::backup::{list_backups, pg};
use crate::cluster::heal;
use crate::error::{Error, Result};

impl Agent {
    /// Waits until the local server runs as a primary: Patroni takes the leader key first and
    /// promotes after, and the new timeline's history (what healing follows) exists only then.
    async fn wait_until_primary(&self, timeout: Duration) -> Result<()> {
        let cfg = self.local.pg_config()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(client) = pg::connect(&cfg).await {
                if matches!(pg::in_recovery(&client).await, Ok(false)) {
                    return Ok(());
                }
            }
            if !self.view_says_leader() {
                return Err(Error::NotLeader(
                    "this member lost the leader key before its server was promoted".into(),
                ));
            }
            if Instant::now() > deadline {
                return Err(Error::Cluster(format!(
                    "the local server is not a primary {timeout:?} after this member took the leader key"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The new leader's first duties. Returns whether a gap stayed open.
    pub(super) async fn on_gained_leadership(&self) -> bool {
        if let Err(e) = self.wait_until_primary(Duration::from_secs(300)).await {
            tracing::error!(error = %e, "leader duties postponed");
            return false;
        }
        let heal = self.heal_gaps().await;
        let gap = matches!(&heal, Ok(r) if !r.unhealable.is_empty());
        match heal {
            Ok(r) if r.healed.is_empty() && r.unhealable.is_empty() => {
                tracing::info!(
                    timeline = r.timeline,
                    checked = r.checked,
                    "gap healing: the archive holds every segment of earlier timelines"
                )
            }
            Ok(r) => tracing::warn!(
                timeline = r.timeline,
                checked = r.checked,
                healed = r.healed.len(),
                unhealable = r.unhealable.len(),
                healed_segments = r.healed.join(","),
                unhealable_segments = r.unhealable.join(","),
                "gap healing done"
            ),
            Err(e) => tracing::error!(error = %e, "gap healing failed"),
        }
        if let Err(e) = self.upload_sysid().await {
            tracing::warn!(error = %e, "could not record the system identifier in the archive");
        }
        match list_backups(&self.archive.store).await {
            Ok(b) if b.is_empty() => {
                tracing::info!("the archive holds no backup: taking one now");
                let _ = self.backup("first backup").await;
            }
            Ok(_) => self.publish_backup_list().await,
            Err(e) => tracing::warn!(error = %e, "cannot list backups"),
        }
        gap
    }

    /// On the leader, while a gap is open: heal again (another member may have uploaded the
    /// segments meanwhile); once it has stayed open for [`GAP_GRACE`], take a base backup, so
    /// the archive restores again from after the gap. Returns since when a gap is still open.
    pub(super) async fn recheck_gap(&self, since: Instant) -> Option<Instant> {
        let open = match self.heal_gaps().await {
            Ok(r) if r.unhealable.is_empty() => {
                tracing::info!(timeline = r.timeline, "gap healing: the gap is closed");
                return None;
            }
            Ok(r) => r.unhealable,
            Err(e) => {
                tracing::warn!(error = %e, "gap healing failed");
                return Some(since);
            }
        };
        if since.elapsed() < GAP_GRACE {
            return Some(since);
        }
        tracing::error!(
            unhealable_segments = open.join(","),
            "no member holds these segments: taking a base backup so the archive restores again from after the gap"
        );
        if self.backup("unhealable gap").await.is_err() {
            return Some(since);
        }
        match self.heal_gaps().await {
            Ok(r) if r.unhealable.is_empty() => None,
            _ => Some(since),
        }
    }

    /// On a non-leader: upload segments of earlier timelines that this member holds as
    /// `.ready` (a former primary that rejoined without a rewind keeps what it never archived)
    /// and the archive lacks. The history rule admits only segments that end at or before
    /// their timeline's switch point.
    pub(super) async fn heal_as_replica(&self) {
        let pg_wal = self.cfg.pgdata.join("pg_wal");
        if !heal::holds_unarchived_older_segments(&pg_wal) {
            return;
        }
        let ctx = match self.wal_context() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "gap healing from this member: no WAL context");
                return;
            }
        };
        match heal::heal(ctx, &self.leadership()).await {
            Ok(r) if !r.healed.is_empty() => {
                self.metrics.healed_segments.inc_by(r.healed.len() as u64);
                tracing::warn!(
                    timeline = r.timeline,
                    healed = r.healed.len(),
                    healed_segments = r.healed.join(","),
                    "gap healing from a non-leader: uploaded segments of earlier timelines the archive lacked"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "gap healing from this member failed"),
        }
    }

    async fn heal_gaps(&self) -> Result<heal::HealReport> {
        let r = heal::heal(self.wal_context()?, &self.leadership()).await?;
        self.metrics.healed_segments.inc_by(r.healed.len() as u64);
        self.metrics
            .unhealable_segments
            .set(r.unhealable.len() as i64);
        Ok(r)
    }
}
