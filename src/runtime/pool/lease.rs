//! The lease keepers of a pool: the heartbeat task, which extends the lease of every job
//! the pool holds, and the start marker task, which records when long-running jobs
//! started (so a rescue after this daemon dies charges their attempt).
//!
//! Must never let the lease of a job whose worker lives expire, and never mark a job
//! that has not started (jobs still in the buffer are released uncharged).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Shared;
use crate::queue;

/// A job that has run this long gets its start recorded (jobs that end sooner carry
/// their start time in their outcome).
const START_MARK_AFTER: Duration = Duration::from_millis(10);

/// Extends the leases of every held job every `lease / 3`, so a long job is never
/// rescued while its worker lives; after a failure, tries again within a second, so a
/// database that comes back finds the leases renewed before other daemons rescue them.
pub(super) async fn heartbeat(shared: Arc<Shared>) {
    let every = shared.settings.lease / 3;
    let mut wait = every;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.stop_background.cancelled() => return,
        }
        let ids = shared.held_ids();
        if ids.is_empty() {
            wait = every;
            continue;
        }
        match queue::extend_leases(
            &shared.conns.lease,
            &shared.worker,
            &ids,
            shared.settings.lease,
        )
        .await
        {
            Ok(n) => {
                wait = every;
                tracing::trace!(queue = %shared.queue, extended = n, "leases extended");
            }
            Err(e) => {
                if e.is_transient() {
                    shared.health.failed();
                }
                wait = every.min(Duration::from_secs(1));
                tracing::warn!(queue = %shared.queue, error = %e, "could not extend leases");
            }
        }
    }
}

/// Records the start of every job that has been running for [`START_MARK_AFTER`], so a
/// rescue after this daemon dies charges its attempt; jobs still in the buffer stay
/// unmarked and are not charged.
pub(super) async fn start_marker(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(START_MARK_AFTER) => {}
            () = shared.stop_background.cancelled() => return,
        }
        let (ids, ats): (Vec<i64>, Vec<DateTime<Utc>>) = {
            let mut starts = shared.starts.lock().expect("starts lock");
            starts
                .iter_mut()
                .filter(|(_, s)| !s.marked && s.since.elapsed() >= START_MARK_AFTER)
                .map(|(id, s)| {
                    s.marked = true;
                    (*id, s.at)
                })
                .unzip()
        };
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = queue::mark_started(&shared.conns.lease, &shared.worker, &ids, &ats).await {
            if e.is_transient() {
                shared.health.failed();
            }
            tracing::debug!(queue = %shared.queue, error = %e, "could not record job starts; retrying");
            let mut starts = shared.starts.lock().expect("starts lock");
            for id in ids {
                if let Some(s) = starts.get_mut(&id) {
                    s.marked = false;
                }
            }
        }
    }
}
