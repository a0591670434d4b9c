//! When a pool writes its idle mark (the `penguin.idle_workers` row that makes inserts
//! into its queue NOTIFY) and when it clears it.
//!
//! Every write of the mark leaves a row version behind, and while a long transaction
//! elsewhere holds the xmin horizon none of them can be removed: every insert into the
//! queue (its trigger reads the table) and every later mark (an upsert on the same key)
//! walks them all. Writing the mark at each idle/busy flip, as a queue at 500 jobs/s does
//! a thousand times a second, measured 0.4 s per insert of 100 jobs after 30,000 flips
//! under a held horizon. So the mark is written when the queue is found empty and the mark
//! is absent, refreshed every [`REFRESH`] (so maintenance can tell a live idle pool from a
//! dead one, and so it comes back after a crash empties the unlogged table), and cleared
//! only once the pool has been busy for [`BUSY_GRACE`] without a pause: a queue busy for
//! less than that still sends a NOTIFY per insert statement, which an idle pool is about
//! to need anyway.
//!
//! Must never leave the mark unrefreshed long enough for maintenance to take it for a
//! dead pool's (`[daemon] poll_interval` x 3, at least 60 s).

use std::time::{Duration, Instant};

/// How often a present mark is written again.
pub const REFRESH: Duration = Duration::from_secs(20);
/// How long a pool must be busy without a pause before it clears its mark.
pub const BUSY_GRACE: Duration = Duration::from_secs(1);

/// What to do with the mark now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkAction {
    Nothing,
    /// Write it; `fresh` when it was absent (then claim once more: a job inserted between
    /// the empty claim and the mark sent no NOTIFY).
    Write {
        fresh: bool,
    },
    Clear,
}

/// The pool's idle mark as the pool last wrote it.
#[derive(Debug, Default)]
pub struct IdleMark {
    written_at: Option<Instant>,
    busy_since: Option<Instant>,
}

impl IdleMark {
    /// Whether the mark is (as far as this pool knows) in the table.
    pub fn is_set(&self) -> bool {
        self.written_at.is_some()
    }

    /// The queue was found empty at `now`.
    pub fn on_empty(&mut self, now: Instant) -> MarkAction {
        self.busy_since = None;
        match self.written_at {
            None => MarkAction::Write { fresh: true },
            Some(at) if now >= at + REFRESH => MarkAction::Write { fresh: false },
            Some(_) => MarkAction::Nothing,
        }
    }

    /// The write asked for at `now` worked (`true`) or failed.
    pub fn written(&mut self, ok: bool, now: Instant) {
        if ok {
            self.written_at = Some(now);
        }
    }

    /// A claim found jobs at `now`.
    pub fn on_jobs(&mut self, now: Instant) -> MarkAction {
        if !self.is_set() {
            return MarkAction::Nothing;
        }
        let since = *self.busy_since.get_or_insert(now);
        if now < since + BUSY_GRACE {
            return MarkAction::Nothing;
        }
        self.written_at = None;
        self.busy_since = None;
        MarkAction::Clear
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_pool_flipping_between_busy_and_idle_writes_its_mark_once() {
        let t0 = Instant::now();
        let mut mark = IdleMark::default();
        assert_eq!(mark.on_empty(t0), MarkAction::Write { fresh: true });
        mark.written(true, t0);
        // 500 jobs/s: a job, then the queue empty again, 2 ms apart, for 10 s
        let mut writes = 0;
        for i in 1..5000u32 {
            let now = t0 + 2 * i * MS;
            if mark.on_jobs(now) != MarkAction::Nothing {
                writes += 1;
            }
            if let MarkAction::Write { .. } = mark.on_empty(now + MS) {
                mark.written(true, now + MS);
                writes += 1;
            }
        }
        // no clear, and one refresh every 20 s at most
        assert_eq!(writes, 0);
        assert_eq!(
            mark.on_empty(t0 + REFRESH),
            MarkAction::Write { fresh: false }
        );
    }

    #[test]
    fn a_pool_busy_for_the_grace_clears_its_mark_and_writes_it_afresh_when_idle() {
        let t0 = Instant::now();
        let mut mark = IdleMark::default();
        mark.written(true, t0);
        assert_eq!(mark.on_jobs(t0 + MS), MarkAction::Nothing);
        assert_eq!(mark.on_jobs(t0 + 500 * MS), MarkAction::Nothing);
        assert_eq!(mark.on_jobs(t0 + MS + BUSY_GRACE), MarkAction::Clear);
        assert!(!mark.is_set());
        assert_eq!(mark.on_jobs(t0 + 2 * BUSY_GRACE), MarkAction::Nothing);
        assert_eq!(
            mark.on_empty(t0 + 3 * BUSY_GRACE),
            MarkAction::Write { fresh: true }
        );
    }

    #[test]
    fn a_failed_write_is_tried_again_at_the_next_empty_claim() {
        let t0 = Instant::now();
        let mut mark = IdleMark::default();
        assert_eq!(mark.on_empty(t0), MarkAction::Write { fresh: true });
        mark.written(false, t0);
        assert!(!mark.is_set());
        assert_eq!(mark.on_empty(t0 + MS), MarkAction::Write { fresh: true });
    }
}
