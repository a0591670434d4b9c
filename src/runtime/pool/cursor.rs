//! Where a pool's next claim starts (docs/storage.md, section 3.1): after the last job it
//! claimed (a keyset claim, which never reads the index entries of earlier claims), or
//! from the start of the queue (a full pass, which also finds what landed behind the
//! position: a more urgent priority, a retry or a rescue due earlier, a transaction that
//! committed late).
//!
//! A full pass costs what the claim index holds in front of the position. With nothing
//! holding the xmin horizon that is next to nothing: a full pass costs what a keyset claim
//! does, and every claim is one, as before keyset claims existed. While a long transaction
//! elsewhere holds the horizon, it is every entry claimed since; full passes are then
//! spaced by [`FULL_PASS_SPACING`] times what they cost beyond a keyset claim (less
//! [`NOISE`]: up to twice a keyset claim's cost and a millisecond count as nothing; the
//! lesser of the last two passes' costs, so one slowed by something else does not count), so that
//! walking the dead takes at most about 1/20 of the claimer's time, but never more than
//! [`MAX_FULL_PASS_GAP`] apart.
//!
//! Once the pool has a position, a full pass runs beside the keyset claims (the claimer
//! spawns it on its own connection, [`ClaimCursor::full_pass_started`]): under a held
//! horizon a pass walking millions of dead entries takes a second, and in line it held up
//! every job enqueued meanwhile (the steady run's p99 grew to that second).
//!
//! While the pool keeps up (its last claim came back short of what it asked), a keyset
//! claim starts [`LATE_COMMITS`] earlier in `run_at` than the position. Jobs that two
//! producers enqueue at the same moment commit in either order: one whose transaction
//! began first but committed last lands just behind the position, and used to wait for the
//! next full pass (up to its spacing: tens of milliseconds after a drain left the claim
//! index full of dead entries, up to 30 s under a held horizon). Re-reading the
//! last [`LATE_COMMITS`] of the claim order costs a keyset claim a few entries; while a
//! backlog drains (claims come back full) it is not read, and latency is the backlog's.
//! Jobs later than that (an enqueue inside a long transaction) still wait for a full pass.
//!
//! Must never let a full pass wait longer than its spacing, never start a second while one
//! runs, and never move the position backwards (that would walk the same dead entries
//! twice).

use std::time::{Duration, Instant};

use crate::queue::{ClaimPosition, ClaimedJob};

/// Full passes start no sooner than this many times their last extra cost (their duration
/// beyond a keyset claim's) after the last one ended.
pub const FULL_PASS_SPACING: u32 = 20;
/// A full pass's extra cost below this (beyond twice a keyset claim's) is noise.
pub const NOISE: Duration = Duration::from_millis(1);
/// The weight of the newest keyset claim in the running mean of their durations.
const KEYSET_COST_WEIGHT: f64 = 0.2;
/// The longest the spacing gets, however slow a full pass is: what a job landing behind the
/// position waits at most, on top of the pass itself.
pub const MAX_FULL_PASS_GAP: Duration = Duration::from_secs(30);

/// How much earlier than the position a keyset claim starts while the pool keeps up: the
/// lateness of a commit (its job's `run_at` is its transaction's start) that is caught
/// without a full pass.
pub const LATE_COMMITS: Duration = Duration::from_millis(50);

/// Which claim to run next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// From the start of the queue's claim order.
    Full,
    /// Strictly after this position.
    After(ClaimPosition),
}

/// A pool's claim position and the bookkeeping of its full passes.
#[derive(Debug)]
pub struct ClaimCursor {
    position: Option<ClaimPosition>,
    /// A keyset claim came back short since the last full pass: something may wait
    /// behind the position, and the next full pass should run as soon as it may.
    owed: bool,
    /// When the last full pass ended, and the spacing its cost earned.
    last_full: Option<(Instant, Duration)>,
    /// The extra cost of the last full pass: the spacing follows the lesser of the last
    /// two, so one pass slowed by something else (a checkpoint, a cold cache, a busy
    /// machine) does not hold the next one back for seconds. Dead entries slow them all.
    last_extra: Duration,
    /// The running mean of keyset claims' durations: what a full pass costs beyond it is
    /// what the dead entries in front of the position cost.
    keyset_cost: Duration,
    /// A full pass runs beside the keyset claims.
    in_flight: bool,
    /// The last claim came back short: the pool keeps up, and its keyset claims look
    /// [`LATE_COMMITS`] behind the position.
    keeping_up: bool,
}

/// How long after a failed full pass the next one may start (on top of its spacing).
pub const FAILED_FULL_PASS_PAUSE: Duration = Duration::from_secs(1);

impl ClaimCursor {
    pub fn new() -> Self {
        Self {
            position: None,
            owed: false,
            last_full: None,
            last_extra: Duration::ZERO,
            keyset_cost: Duration::ZERO,
            in_flight: false,
            keeping_up: false,
        }
    }

    /// The claim to run at `now`: a keyset claim while a full pass runs beside.
    pub fn next_pass(&self, now: Instant) -> Pass {
        match self.position {
            Some(position) if self.in_flight || !self.full_pass_due(now) => {
                Pass::After(if self.keeping_up {
                    position.earlier_by(LATE_COMMITS)
                } else {
                    position
                })
            }
            _ => Pass::Full,
        }
    }

    /// Whether a full pass due now may run beside the keyset claims rather than in line:
    /// once there is a position to claim after meanwhile.
    pub fn may_run_beside(&self) -> bool {
        self.position.is_some() && !self.in_flight
    }

    /// A full pass was started beside the keyset claims: until it is recorded
    /// ([`record`](Self::record) or [`full_pass_failed`](Self::full_pass_failed)), the
    /// next claims are keyset claims.
    pub fn full_pass_started(&mut self) {
        self.in_flight = true;
    }

    /// The full pass running beside failed at `now`: the next one waits its spacing and
    /// [`FAILED_FULL_PASS_PAUSE`] more; whatever it owed stays owed.
    pub fn full_pass_failed(&mut self, now: Instant) {
        self.in_flight = false;
        let gap = self.last_full.map_or(Duration::ZERO, |(_, gap)| gap);
        self.last_full = Some((now, gap + FAILED_FULL_PASS_PAUSE));
    }

    /// Records a claim that asked for `asked` jobs, got `claimed` (in claim order) and
    /// took `took`, ending at `now`.
    pub fn record(
        &mut self,
        pass: Pass,
        asked: usize,
        claimed: &[ClaimedJob],
        took: Duration,
        now: Instant,
    ) {
        if let Some(last) = claimed.last().map(ClaimPosition::of) {
            self.position = Some(self.position.map_or(last, |p| p.max(last)));
        }
        let short = claimed.len() < asked;
        self.keeping_up = short;
        match pass {
            Pass::Full => {
                self.in_flight = false;
                let extra = self.extra_cost(took);
                self.last_full = Some((now, spacing(extra.min(self.last_extra))));
                self.last_extra = extra;
                // a full batch may have left more behind the position
                self.owed = !short;
            }
            Pass::After(_) => {
                self.owed |= short;
                let mean = self.keyset_cost.as_secs_f64();
                self.keyset_cost = Duration::from_secs_f64(
                    mean + (took.as_secs_f64() - mean) * KEYSET_COST_WEIGHT,
                );
            }
        }
    }

    /// When the owed full pass may run (`None` when none is owed): what an idle claimer
    /// waits for besides notifications and the poll.
    pub fn owed_full_pass_at(&self) -> Option<Instant> {
        if !self.owed || self.position.is_none() || self.in_flight {
            return None;
        }
        Some(
            self.last_full
                .map_or_else(Instant::now, |(at, gap)| at + gap),
        )
    }

    /// What a full pass that took `took` cost beyond a keyset claim, less the noise of a
    /// busy machine: up to twice the keyset claims' mean plus a millisecond counts as
    /// nothing (a held horizon's walk costs tens of milliseconds and more).
    fn extra_cost(&self, took: Duration) -> Duration {
        took.saturating_sub(self.keyset_cost * 2 + NOISE)
    }

    fn full_pass_due(&self, now: Instant) -> bool {
        self.last_full.is_none_or(|(at, gap)| now >= at + gap)
    }
}

impl Default for ClaimCursor {
    fn default() -> Self {
        Self::new()
    }
}

/// The least time between the end of a full pass that cost `extra` beyond a keyset claim
/// and the next one.
fn spacing(extra: Duration) -> Duration {
    (extra * FULL_PASS_SPACING).min(MAX_FULL_PASS_GAP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn job(id: i64, priority: i16, second: u32) -> ClaimedJob {
        ClaimedJob {
            id,
            kind: "noop".into(),
            payload: serde_json::json!({}),
            attempt: 1,
            max_attempts: 25,
            priority,
            run_at: Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, second).unwrap(),
            tenant_id: None,
            created_at: Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap(),
        }
    }

    const MS: Duration = Duration::from_millis(1);

    /// The keyset claim of a pool that keeps up, after `job`.
    fn caught_up(job: &ClaimedJob) -> Pass {
        Pass::After(ClaimPosition::of(job).earlier_by(LATE_COMMITS))
    }

    #[test]
    fn the_first_claim_is_a_full_pass_and_the_next_ones_start_after_the_last_job() {
        let t0 = Instant::now();
        let mut cursor = ClaimCursor::new();
        assert_eq!(cursor.next_pass(t0), Pass::Full);
        let batch = [job(1, 0, 1), job(2, 0, 1), job(7, 0, 2)];
        cursor.record(Pass::Full, 3, &batch, 3 * MS, t0);
        // one slow pass is not enough to space the next
        assert_eq!(cursor.next_pass(t0), Pass::Full);
        cursor.record(Pass::Full, 3, &batch, 3 * MS, t0);
        // two are: 3 ms less the 1 ms of noise (no keyset claim measured yet), 40 ms
        assert_eq!(
            cursor.next_pass(t0 + 5 * MS),
            Pass::After(ClaimPosition::of(&batch[2]))
        );
        assert_eq!(cursor.next_pass(t0 + 40 * MS), Pass::Full);
    }

    #[test]
    fn while_the_pool_keeps_up_keyset_claims_start_before_the_position_by_the_late_commits() {
        let t0 = Instant::now();
        let mut cursor = ClaimCursor::new();
        let batch = [job(1, 0, 1), job(2, 0, 2)];
        // two slow full passes, each full: a backlog, and the next claims are keyset claims
        cursor.record(Pass::Full, 2, &batch, 3 * MS, t0);
        cursor.record(Pass::Full, 2, &batch, 3 * MS, t0);
        let at_position = Pass::After(ClaimPosition::of(&batch[1]));
        assert_eq!(cursor.next_pass(t0 + 5 * MS), at_position);
        // a keyset claim comes back short: caught up, so the next one looks back
        let newer = job(5, 0, 3);
        cursor.record(
            at_position,
            2,
            std::slice::from_ref(&newer),
            MS,
            t0 + 6 * MS,
        );
        let looking_back = ClaimPosition {
            priority: 0,
            run_at: newer.run_at - chrono::TimeDelta::milliseconds(50),
            id: i64::MIN,
        };
        assert_eq!(cursor.next_pass(t0 + 7 * MS), Pass::After(looking_back));
        // a late commit found there never moves the position back
        let late = ClaimedJob {
            run_at: newer.run_at - chrono::TimeDelta::milliseconds(10),
            ..job(4, 0, 0)
        };
        cursor.record(Pass::After(looking_back), 2, &[late], MS, t0 + 8 * MS);
        assert_eq!(cursor.next_pass(t0 + 9 * MS), Pass::After(looking_back));
        // a full claim again: a backlog, read from the position itself
        cursor.record(at_position, 1, &[job(6, 0, 4)], MS, t0 + 10 * MS);
        assert_eq!(
            cursor.next_pass(t0 + 11 * MS),
            Pass::After(ClaimPosition::of(&job(6, 0, 4)))
        );
    }

    #[test]
    fn a_full_pass_costing_what_a_keyset_claim_costs_runs_every_time() {
        let t0 = Instant::now();
        let mut cursor = ClaimCursor::new();
        cursor.record(Pass::Full, 3, &[job(1, 0, 1)], MS, t0);
        let keyset = Pass::After(ClaimPosition::of(&job(1, 0, 1)));
        for _ in 0..30 {
            cursor.record(keyset, 3, &[], 2 * MS, t0);
        }
        // a pass of 4.5 ms, within twice the keyset mean and a millisecond of noise: due at once
        cursor.record(Pass::Full, 3, &[job(2, 0, 2)], 9 * MS / 2, t0 + 10 * MS);
        assert_eq!(cursor.next_pass(t0 + 10 * MS), Pass::Full);
    }

    #[test]
    fn a_short_keyset_claim_owes_a_full_pass_which_runs_once_the_spacing_allows() {
        let t0 = Instant::now();
        let mut cursor = ClaimCursor::new();
        cursor.record(Pass::Full, 10, &[job(1, 0, 1)], 100 * MS, t0);
        cursor.record(Pass::Full, 10, &[job(1, 0, 1)], 100 * MS, t0);
        let after = Pass::After(ClaimPosition::of(&job(1, 0, 1)));
        assert_eq!(cursor.owed_full_pass_at(), None);
        cursor.record(after, 10, &[], Duration::ZERO, t0 + 1900 * MS);
        // owed now; a pass of 100 ms (99 beyond noise) is spaced 1.98 s apart
        assert_eq!(cursor.owed_full_pass_at(), Some(t0 + 1980 * MS));
        assert_eq!(cursor.next_pass(t0 + 1950 * MS), caught_up(&job(1, 0, 1)));
        assert_eq!(cursor.next_pass(t0 + 1980 * MS), Pass::Full);
        // a short full pass settles the debt
        cursor.record(Pass::Full, 10, &[], 100 * MS, t0 + 2100 * MS);
        assert_eq!(cursor.owed_full_pass_at(), None);
    }

    #[test]
    fn one_slow_full_pass_among_quick_ones_does_not_space_the_next() {
        let t0 = Instant::now();
        let mut cursor = ClaimCursor::new();
        cursor.record(Pass::Full, 500, &[job(1, 0, 1)], MS, t0);
        cursor.record(Pass::Full, 500, &[job(2, 0, 1)], 1200 * MS, t0 + 2 * SECOND);
        assert_eq!(cursor.next_pass(t0 + 2 * SECOND), Pass::Full);
    }

    #[test]
    fn the_position_never_moves_back_when_a_full_pass_claims_late_jobs() {
        let t0 = Instant::now();
        let mut cursor = ClaimCursor::new();
        cursor.record(Pass::Full, 1, &[job(9, 0, 9)], 50 * MS, t0);
        // a late, more urgent job found by the next full pass
        cursor.record(Pass::Full, 5, &[job(3, -5, 3)], 50 * MS, t0 + 2 * SECOND);
        assert_eq!(
            cursor.next_pass(t0 + 2 * SECOND + MS),
            caught_up(&job(9, 0, 9))
        );
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn slow_full_passes_are_spaced_but_never_more_than_the_cap_apart() {
        let t0 = Instant::now();
        let mut cursor = ClaimCursor::new();
        // a held horizon: the full passes walked a million dead entries for 3 s
        cursor.record(Pass::Full, 500, &[job(1, 0, 1)], 3 * SECOND, t0);
        cursor.record(Pass::Full, 500, &[job(1, 0, 1)], 3 * SECOND, t0);
        let keyset = Pass::After(ClaimPosition::of(&job(1, 0, 1)));
        cursor.record(keyset, 500, &[], MS, t0 + MS);
        assert_eq!(cursor.next_pass(t0 + 10 * SECOND), caught_up(&job(1, 0, 1)));
        assert_eq!(cursor.next_pass(t0 + MAX_FULL_PASS_GAP), Pass::Full);
    }

    #[test]
    fn while_a_full_pass_runs_beside_the_claims_are_keyset_claims_and_none_is_owed() {
        let t0 = Instant::now();
        let mut cursor = ClaimCursor::new();
        assert!(
            !cursor.may_run_beside(),
            "no position yet: the first pass runs in line"
        );
        cursor.record(Pass::Full, 1, &[job(1, 0, 1)], MS, t0);
        let keyset = Pass::After(ClaimPosition::of(&job(1, 0, 1)));
        cursor.record(keyset, 5, &[], MS, t0 + MS);
        assert_eq!(cursor.next_pass(t0 + MS), Pass::Full);
        assert!(cursor.may_run_beside());
        cursor.full_pass_started();
        assert!(!cursor.may_run_beside(), "never two at once");
        assert_eq!(cursor.next_pass(t0 + SECOND), caught_up(&job(1, 0, 1)));
        assert_eq!(cursor.owed_full_pass_at(), None);
        // a keyset claim recorded meanwhile moves the position on
        cursor.record(keyset, 5, &[job(5, 0, 5)], MS, t0 + 2 * MS);
        cursor.record(Pass::Full, 5, &[job(3, 0, 3)], MS, t0 + 3 * MS);
        assert_eq!(
            cursor.next_pass(t0 + 3 * MS),
            Pass::Full,
            "a cheap pass is due again at once"
        );
        assert!(cursor.may_run_beside());
        assert_eq!(cursor.position, Some(ClaimPosition::of(&job(5, 0, 5))));
    }

    #[test]
    fn a_failed_full_pass_beside_waits_its_spacing_and_a_pause_and_stays_owed() {
        let t0 = Instant::now();
        let mut cursor = ClaimCursor::new();
        cursor.record(Pass::Full, 1, &[job(1, 0, 1)], MS, t0);
        let keyset = Pass::After(ClaimPosition::of(&job(1, 0, 1)));
        cursor.record(keyset, 5, &[], MS, t0 + MS);
        cursor.full_pass_started();
        cursor.full_pass_failed(t0 + 10 * MS);
        assert_eq!(cursor.next_pass(t0 + 500 * MS), caught_up(&job(1, 0, 1)));
        assert_eq!(
            cursor.owed_full_pass_at(),
            Some(t0 + 10 * MS + FAILED_FULL_PASS_PAUSE)
        );
        assert_eq!(
            cursor.next_pass(t0 + 10 * MS + FAILED_FULL_PASS_PAUSE),
            Pass::Full
        );
    }
}
