//! The backup list in etcd (WAL-E's text and JSON), written by the leader only.

use super::Agent;
use crate::backup::list_backups;
use crate::cluster::etcd::{BACKUP_LIST_JSON_KEY, BACKUP_LIST_KEY};

impl Agent {
    /// Lists the backups and writes them to etcd, guarded by the leader key. A failed listing
    /// keeps the list that is there.
    pub(super) async fn publish_backup_list(&self) {
        let list = match list_backups(&self.archive.store).await {
            Ok(l) => l,
            Err(e) => {
                self.metrics.backup_list_failures.inc();
                tracing::warn!(error = %e, "cannot list backups; the backup list in etcd stays as it was");
                return;
            }
        };
        self.metrics.backups_in_archive.set(list.len() as i64);
        if let Some(b) = list.last() {
            self.metrics
                .last_backup_finish
                .set(b.end_time().timestamp_millis() as f64 / 1000.0);
            self.metrics
                .backup_corrupt_pages
                .set(b.corrupt_pages.unwrap_or(0) as i64);
        }
        let text = crate::backup::list_text::render(&list, false);
        let json = match serde_json::to_string(&list) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the backup list");
                return;
            }
        };
        if let Ok(mut b) = self.backups.lock() {
            *b = Some(list);
        }
        match self
            .etcd
            .put_if_leader(&[(BACKUP_LIST_KEY, text), (BACKUP_LIST_JSON_KEY, json)])
            .await
        {
            Ok(true) => {
                self.metrics.backup_list_published.inc();
                tracing::debug!("backup list published to etcd");
            }
            Ok(false) => tracing::info!("not the leader: the backup list was not written"),
            Err(e) => {
                self.metrics.backup_list_failures.inc();
                tracing::warn!(error = %e, "cannot write the backup list to etcd");
            }
        }
    }
}
