//! The duty loop: what the agent does, and when, as the leader key comes and goes (healing,
//! scheduled backups, the backup list).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{Agent, HEAL_INTERVAL};
use crate::backup::list_backups;

impl Agent {
    /// Duties: on the leader, gap healing on gaining the key (and a backup when a gap stays
    /// open), scheduled backups, retention and the backup list; on every member, healing from
    /// what it holds.
    pub(super) async fn duties(self: Arc<Self>) {
        let mut view = self.view.clone();
        let mut was_leader = false;
        // The schedule counts from the newest backup's finish, not from this start.
        let mut newest_known = false;
        // After a failed scheduled backup: no new try before this.
        let mut retry_after: Option<DateTime<Utc>> = None;
        let mut next_refresh = Instant::now();
        // Healing from every member (a former primary may hold what the leader lacks), and,
        // on the leader, since when a gap has stayed open.
        let mut next_heal = Instant::now() + HEAL_INTERVAL;
        let mut gap_since: Option<Instant> = None;
        loop {
            view.borrow_and_update();
            let leader = self.view_says_leader();
            self.metrics.leader.set(leader as i64);
            if leader && !was_leader && !self.pitr_running() {
                tracing::info!(member = self.me(), "this member holds the leader key");
                gap_since = self.on_gained_leadership().await.then(Instant::now);
                next_refresh = Instant::now() + self.cfg.backup_list_refresh;
                next_heal = Instant::now() + HEAL_INTERVAL;
            } else if !leader && was_leader {
                tracing::info!(
                    member = self.me(),
                    "this member no longer holds the leader key"
                );
            }
            was_leader = leader;
            if Instant::now() >= next_heal && !self.pitr_running() {
                next_heal = Instant::now() + HEAL_INTERVAL;
                if leader {
                    if let Some(since) = gap_since {
                        gap_since = self.recheck_gap(since).await;
                    }
                } else {
                    self.heal_as_replica().await;
                }
            }
            if !newest_known {
                match list_backups(&self.archive.store).await {
                    Ok(list) => {
                        if let Ok(mut b) = self.backups.lock() {
                            *b = Some(list);
                        }
                        newest_known = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot list backups for the schedule"),
                }
            }
            let next_backup = if newest_known {
                let newest = self
                    .backups
                    .lock()
                    .ok()
                    .and_then(|b| b.as_ref().and_then(|l| l.last().map(|b| b.end_time())));
                self.cfg
                    .schedule
                    .due(newest, Utc::now())
                    .map(|at| retry_after.map_or(at, |r| at.max(r)))
            } else {
                // Unknown until the archive can be listed: look again within a minute.
                None
            };
            let mut blocked = false;
            if let Some(at) = next_backup {
                if Utc::now() >= at {
                    if leader && !self.pitr_running() {
                        match self.backup("scheduled").await {
                            // Even if the listing after it failed, not again before the
                            // next tick.
                            Ok(_) => retry_after = self.cfg.schedule.next(Utc::now()),
                            Err(_) => {
                                // Retry at the next tick, but within 15 minutes.
                                let now = Utc::now();
                                let cap = now + chrono::Duration::minutes(15);
                                retry_after =
                                    Some(self.cfg.schedule.next(now).unwrap_or(cap).min(cap));
                            }
                        }
                        // The listing after the backup moved the schedule on.
                        continue;
                    }
                    // Due, but not ours to take now: wait for a change, not for the clock.
                    blocked = true;
                }
            }
            if leader && Instant::now() >= next_refresh && !self.pitr_running() {
                self.publish_backup_list().await;
                next_refresh = Instant::now() + self.cfg.backup_list_refresh;
            }
            let until_backup = if blocked || !newest_known {
                Duration::from_secs(30)
            } else {
                next_backup
                    .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                    .unwrap_or(Duration::from_secs(3600))
            };
            let until_refresh = if leader {
                next_refresh.saturating_duration_since(Instant::now())
            } else {
                Duration::from_secs(1)
            }
            .min(next_heal.saturating_duration_since(Instant::now()));
            let nap = until_backup
                .min(until_refresh)
                .max(Duration::from_millis(100));
            tokio::select! {
                r = view.changed() => { if r.is_err() { return; } }
                _ = tokio::time::sleep(nap) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}
