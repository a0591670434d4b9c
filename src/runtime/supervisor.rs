//! Watches the tasks a pool cannot live without (claimer, flusher, heartbeat, start
//! marker, the apalis worker) and the database health the rescuer depends on.
//!
//! A task that panics, or ends before it was told to stop, fails the [`Supervisor`]: the
//! runtime then drains every pool (held jobs are released without spending an attempt) and
//! returns an error, so the daemon exits non-zero and systemd restarts it. A pool must never
//! go on half alive: jobs claimed and never worked, a shutdown that says "drained".

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The first failure of any supervised task, and the token that announces it.
#[derive(Debug, Default)]
pub struct Supervisor {
    failed: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl Supervisor {
    /// Records `reason` (the first one wins) and announces the failure.
    pub fn fail(&self, reason: String) {
        tracing::error!(reason = %reason, "a worker pool failed; stopping the daemon so it can be restarted");
        self.reason
            .lock()
            .expect("supervisor lock")
            .get_or_insert(reason);
        self.failed.cancel();
    }

    /// Cancelled at the first failure.
    pub fn failed(&self) -> &CancellationToken {
        &self.failed
    }

    /// Why the first failure happened, if one did.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().expect("supervisor lock").clone()
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".into())
}

/// Spawns `task` (named `name` in pool `queue`): a panic, or an end before `until` was
/// cancelled, fails `supervisor`.
pub fn spawn_supervised<F>(
    supervisor: std::sync::Arc<Supervisor>,
    queue: String,
    name: &'static str,
    until: CancellationToken,
    task: F,
) -> JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        match AssertUnwindSafe(task).catch_unwind().await {
            Ok(()) if until.is_cancelled() => {}
            Ok(()) => supervisor.fail(format!(
                "pool {queue}: its {name} task ended while the pool was running"
            )),
            Err(panic) => supervisor.fail(format!(
                "pool {queue}: its {name} task panicked: {}",
                panic_message(panic.as_ref())
            )),
        }
    })
}

/// What the rescuer must know before it takes jobs back: whether this daemon's own
/// statements failed recently (a database outage), and whether outcomes are still waiting
/// to be written. After an outage longer than a lease every lease has expired; rescuing at
/// once would take back jobs whose outcomes are one retry away from being written.
#[derive(Debug, Default)]
pub struct DbHealth {
    last_failure: Mutex<Option<Instant>>,
    unwritten: AtomicUsize,
}

impl DbHealth {
    /// A statement failed because the database could not be reached.
    pub fn failed(&self) {
        *self.last_failure.lock().expect("health lock") = Some(Instant::now());
    }

    /// `n` outcomes wait for a write that failed (they are being retried).
    pub fn add_unwritten(&self, n: usize) {
        self.unwritten.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` outcomes of those were written (or given up).
    pub fn sub_unwritten(&self, n: usize) {
        self.unwritten.fetch_sub(n, Ordering::Relaxed);
    }

    /// Whether rescuing now is safe for this daemon: no outcome waits for a retry, and the
    /// last database failure is at least `settle` old.
    pub fn settled(&self, settle: Duration) -> bool {
        self.unwritten.load(Ordering::Relaxed) == 0
            && self
                .last_failure
                .lock()
                .expect("health lock")
                .is_none_or(|at| at.elapsed() >= settle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_panicking_task_fails_the_supervisor_with_its_message() {
        let sup = Arc::new(Supervisor::default());
        let until = CancellationToken::new();
        spawn_supervised(sup.clone(), "q".into(), "flusher", until, async {
            panic!("boom at 42");
        })
        .await
        .unwrap();
        assert!(sup.failed().is_cancelled());
        let reason = sup.reason().unwrap();
        assert!(
            reason.contains("flusher") && reason.contains("boom at 42"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_task_ending_early_fails_the_supervisor_and_one_told_to_stop_does_not() {
        let sup = Arc::new(Supervisor::default());
        let until = CancellationToken::new();
        until.cancel();
        spawn_supervised(sup.clone(), "q".into(), "claimer", until, async {})
            .await
            .unwrap();
        assert!(!sup.failed().is_cancelled());
        spawn_supervised(
            sup.clone(),
            "q".into(),
            "heartbeat",
            CancellationToken::new(),
            async {},
        )
        .await
        .unwrap();
        assert!(sup.reason().unwrap().contains("heartbeat task ended"));
    }

    #[test]
    fn health_is_settled_only_when_nothing_is_unwritten_and_failures_are_old() {
        let h = DbHealth::default();
        assert!(h.settled(Duration::from_secs(5)));
        h.add_unwritten(3);
        assert!(!h.settled(Duration::ZERO));
        h.sub_unwritten(3);
        h.failed();
        assert!(!h.settled(Duration::from_secs(5)));
        assert!(h.settled(Duration::ZERO));
    }
}
