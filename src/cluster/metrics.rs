//! The agent's Prometheus metrics (served as text on `GET /metrics`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub leader: Gauge,
    pub etcd_connected: Gauge,
    pub backups_ok: Counter,
    pub backups_failed: Counter,
    pub last_backup_finish: Gauge<f64, AtomicU64>,
    pub backups_in_archive: Gauge,
    /// Pages whose checksum failed in the newest backup.
    pub backup_corrupt_pages: Gauge,
    pub healed_segments: Counter,
    pub unhealable_segments: Gauge,
    pub backup_list_published: Counter,
    pub backup_list_failures: Counter,
    pub retention_deleted_objects: Counter,
    pub archive_lag_bytes: Gauge,
    pub wal_push_requests: Counter,
    pub wal_fetch_requests: Counter,
    pub restarts: Counter,
    pub restarts_succeeded: Counter,
    pub restarts_degraded: Counter,
    pub restarts_failed: Counter,
    /// Agent duties that failed or panicked, by `duty` (each is restarted).
    pub duty_failures: Family<Vec<(String, String)>, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("walkeeper");
        let m = Metrics {
            leader: Gauge::default(),
            etcd_connected: Gauge::default(),
            backups_ok: Counter::default(),
            backups_failed: Counter::default(),
            last_backup_finish: Gauge::default(),
            backups_in_archive: Gauge::default(),
            backup_corrupt_pages: Gauge::default(),
            healed_segments: Counter::default(),
            unhealable_segments: Gauge::default(),
            backup_list_published: Counter::default(),
            backup_list_failures: Counter::default(),
            retention_deleted_objects: Counter::default(),
            archive_lag_bytes: Gauge::default(),
            wal_push_requests: Counter::default(),
            wal_fetch_requests: Counter::default(),
            restarts: Counter::default(),
            restarts_succeeded: Counter::default(),
            restarts_degraded: Counter::default(),
            restarts_failed: Counter::default(),
            duty_failures: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "leader",
            "1 while this member holds the leader key",
            m.leader.clone(),
        );
        registry.register(
            "etcd_connected",
            "1 while the watch on etcd is connected",
            m.etcd_connected.clone(),
        );
        registry.register(
            "backups_succeeded",
            "Base backups taken",
            m.backups_ok.clone(),
        );
        registry.register(
            "backups_failed",
            "Base backups that failed",
            m.backups_failed.clone(),
        );
        registry.register(
            "last_backup_finish_timestamp_seconds",
            "When the newest backup in the archive finished (Unix time)",
            m.last_backup_finish.clone(),
        );
        registry.register(
            "backups_in_archive",
            "Complete backups in the archive at the last listing",
            m.backups_in_archive.clone(),
        );
        registry.register(
            "backup_corrupt_pages",
            "Pages whose checksum failed while the newest backup read them (see its sentinel's PageChecksums)",
            m.backup_corrupt_pages.clone(),
        );
        registry.register(
            "healed_segments",
            "Segments missing from the archive that this member uploaded after becoming leader",
            m.healed_segments.clone(),
        );
        registry.register(
            "unhealable_segments",
            "Segments missing from the archive that this member does not hold (last check)",
            m.unhealable_segments.clone(),
        );
        registry.register(
            "backup_list_published",
            "Backup list writes to etcd",
            m.backup_list_published.clone(),
        );
        registry.register(
            "backup_list_failures",
            "Backup list refreshes that failed (the old list was kept)",
            m.backup_list_failures.clone(),
        );
        registry.register(
            "retention_deleted_objects",
            "Objects deleted by retention",
            m.retention_deleted_objects.clone(),
        );
        registry.register(
            "archive_lag_bytes",
            "WAL bytes written but not yet archived (leader, last /status)",
            m.archive_lag_bytes.clone(),
        );
        registry.register(
            "api_wal_push_requests",
            "/wal-push requests",
            m.wal_push_requests.clone(),
        );
        registry.register(
            "api_wal_fetch_requests",
            "/wal-fetch requests",
            m.wal_fetch_requests.clone(),
        );
        registry.register(
            "restarts",
            "Point-in-time restarts started",
            m.restarts.clone(),
        );
        registry.register(
            "restarts_succeeded",
            "Point-in-time restarts after which every member streams on the new timeline",
            m.restarts_succeeded.clone(),
        );
        registry.register(
            "restarts_degraded",
            "Point-in-time restarts that restored the leader but left some member not following it",
            m.restarts_degraded.clone(),
        );
        registry.register(
            "restarts_failed",
            "Point-in-time restarts that failed and were rolled back",
            m.restarts_failed.clone(),
        );
        registry.register(
            "duty_failures",
            "Agent duties that failed or panicked (each is logged and restarted)",
            m.duty_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duty_failures_are_exported_by_duty() {
        let m = Metrics::new();
        let sup = crate::cluster::supervise::Supervisor::new(m.duty_failures.clone());
        assert_eq!(sup.failures("leader-duties"), 0);
        m.duty_failures
            .get_or_create(&vec![("duty".to_string(), "leader-duties".to_string())])
            .inc();
        assert_eq!(sup.failures("leader-duties"), 1);
        let text = m.render();
        assert!(
            text.contains("walkeeper_duty_failures_total{duty=\"leader-duties\"} 1"),
            "{text}"
        );
    }
}
