//! Supervision of the agent's long-running duties.
//!
//! Each duty runs as its own tokio task. When it returns (an error, or it should never end) or
//! panics, the supervisor logs it, counts it in `walkeeper_duty_failures_total{duty=...}`, marks
//! the duty down (so `/health` answers 503 naming it) and starts it again after a backoff that
//! doubles up to 30 s (and starts over once a run lasted a minute).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::task::JoinHandle;

use crate::error::Result;

#[derive(Debug)]
pub struct Supervisor {
    down: Mutex<BTreeSet<String>>,
    failures: Family<Vec<(String, String)>, Counter>,
    first_backoff: Duration,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const HEALTHY_RUN: Duration = Duration::from_secs(60);

impl Supervisor {
    pub fn new(failures: Family<Vec<(String, String)>, Counter>) -> Self {
        Supervisor {
            down: Mutex::new(BTreeSet::new()),
            failures,
            first_backoff: Duration::from_millis(500),
        }
    }

    /// The same, with another first backoff (for tests).
    pub fn with_backoff(
        failures: Family<Vec<(String, String)>, Counter>,
        first_backoff: Duration,
    ) -> Self {
        Supervisor {
            first_backoff,
            ..Self::new(failures)
        }
    }

    /// The duties that are down now (failed and not yet restarted).
    pub fn down(&self) -> Vec<String> {
        self.down
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How often `duty` failed.
    pub fn failures(&self, duty: &str) -> u64 {
        self.failures
            .get_or_create(&vec![("duty".to_string(), duty.to_string())])
            .get()
    }

    fn set_down(&self, duty: &str, down: bool) {
        if let Ok(mut d) = self.down.lock() {
            if down {
                d.insert(duty.to_string());
            } else {
                d.remove(duty);
            }
        }
    }

    /// Runs `make()` as a task, again and again, until the returned handle is aborted.
    pub fn spawn<F, Fut>(self: &Arc<Self>, duty: &'static str, make: F) -> JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let me = self.clone();
        tokio::spawn(async move {
            let mut backoff = me.first_backoff;
            loop {
                let started = tokio::time::Instant::now();
                let mut task = tokio::spawn(make());
                // Aborting the supervisor aborts the duty too.
                let guard = AbortOnDrop(task.abort_handle());
                let why = match (&mut task).await {
                    Ok(Ok(())) => {
                        "it returned, but it should run until the agent stops".to_string()
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(j) if j.is_panic() => {
                        let p = j.into_panic();
                        let msg = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic".into());
                        format!("panicked: {msg}")
                    }
                    Err(_) => return, // cancelled: the agent is stopping
                };
                drop(guard);
                me.set_down(duty, true);
                me.failures
                    .get_or_create(&vec![("duty".to_string(), duty.to_string())])
                    .inc();
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = me.first_backoff;
                }
                tracing::error!(
                    duty,
                    error = %why,
                    restart_in = ?backoff,
                    "agent duty failed; restarting it"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                me.set_down(duty, false);
                tracing::info!(duty, "agent duty restarted");
            }
        })
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_duty_is_counted_marked_down_and_restarted() {
        let sup = Arc::new(Supervisor::with_backoff(
            Family::default(),
            Duration::from_secs(2),
        ));
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let r = runs.clone();
        let handle = sup.spawn("test-duty", move || {
            let n = r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let tx = tx.clone();
            async move {
                if n == 0 {
                    panic!("boom");
                }
                let _ = tx.send(n);
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        // The duty is marked down before it is counted, and stays down for the backoff.
        while sup.failures("test-duty") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(sup.down(), vec!["test-duty".to_string()]);
        assert_eq!(rx.recv().await, Some(1));
        assert!(sup.down().is_empty(), "{:?}", sup.down());
        assert_eq!(sup.failures("test-duty"), 1);
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
        handle.abort();
    }

    #[tokio::test]
    async fn a_duty_returning_an_error_is_restarted_with_growing_backoff() {
        let sup = Arc::new(Supervisor::with_backoff(
            Family::default(),
            Duration::from_millis(20),
        ));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let handle = sup.spawn("failing", move || {
            let tx = tx.clone();
            async move {
                let _ = tx.send(tokio::time::Instant::now());
                Err(crate::Error::Cluster("no".into()))
            }
        });
        let t0 = rx.recv().await.unwrap();
        let t1 = rx.recv().await.unwrap();
        let t2 = rx.recv().await.unwrap();
        assert!(t1 - t0 >= Duration::from_millis(20), "{:?}", t1 - t0);
        assert!(t2 - t1 >= Duration::from_millis(40), "{:?}", t2 - t1);
        assert!(sup.failures("failing") >= 2);
        handle.abort();
    }
}
