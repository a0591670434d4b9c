//! The states a job row can be in (River's vocabulary), and the SQL fragments naming the
//! groups of them that statements filter on, each written once here.
//!
//! Only names live here: no statement, no I/O. The fragments are macros so that they can
//! be spliced into `concat!`-built statements and stay `&'static str`.

use std::fmt;
use std::str::FromStr;

/// Where a job is in its life. `completed` and `cancelled` are final; the other four are
/// "live" (a unique key is held only by a live job).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Due now, waiting for a worker.
    Available,
    /// Due at `run_at`, in the future.
    Scheduled,
    /// Claimed by a worker under a lease.
    Running,
    /// Failed an attempt; due again at `run_at`.
    Retryable,
    /// Done.
    Completed,
    /// Stopped for good, without dead-lettering.
    Cancelled,
}

impl JobState {
    /// Every state, in the order of a job's life.
    pub const ALL: [JobState; 6] = [
        JobState::Available,
        JobState::Scheduled,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Cancelled,
    ];

    /// The name stored in `penguin.jobs.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Completed => "completed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job may still run (and holds its unique key).
    pub fn is_live(self) -> bool {
        !matches!(self, JobState::Completed | JobState::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown state name; the message lists the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?}: expected one of {names}", names = JobState::ALL.map(JobState::as_str).join(", "))]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// `('available', 'scheduled', 'running', 'retryable')`: the live states, for
/// `state in ...` (unique keys, cancel, the scheduler's waiting fires). A query that reads
/// the unique-key index also says `finished_at is null` (the same rows, by a check
/// constraint since migration 0022): the index's predicate moves to it in a later release
/// (docs/storage.md, section 3.7).
macro_rules! live_states {
    () => {
        "('available', 'scheduled', 'running', 'retryable')"
    };
}
pub(crate) use live_states;

/// SQL true when tenant columns or values `$a` and `$b` are the same tenant (both none
/// included), written as the unique index's expression so that the index serves it.
macro_rules! same_tenant {
    ($a:literal, $b:literal) => {
        concat!(
            "coalesce(",
            $a,
            ", '00000000-0000-0000-0000-000000000000'::uuid) = coalesce(",
            $b,
            ", '00000000-0000-0000-0000-000000000000'::uuid)"
        )
    };
}
pub(crate) use same_tenant;

/// `('available', 'scheduled', 'retryable')`: the states a worker may claim once
/// `run_at` has passed (the claim index's predicate; `penguin.claim` spells it too). A
/// query that reads the claim index also says `finished_at is null`, as with
/// [`live_states`].
macro_rules! claimable_states {
    () => {
        "('available', 'scheduled', 'retryable')"
    };
}
pub(crate) use claimable_states;

/// `('completed', 'cancelled')`: the final states (what retention prunes).
macro_rules! finished_states {
    () => {
        "('completed', 'cancelled')"
    };
}
pub(crate) use finished_states;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_fragments_list_the_right_states() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        let live: Vec<String> = JobState::ALL
            .into_iter()
            .filter(|s| s.is_live())
            .map(|s| format!("'{s}'"))
            .collect();
        assert_eq!(live_states!(), format!("({})", live.join(", ")));
        let claimable: Vec<String> = JobState::ALL
            .into_iter()
            .filter(|s| s.is_live() && *s != JobState::Running)
            .map(|s| format!("'{s}'"))
            .collect();
        assert_eq!(claimable_states!(), format!("({})", claimable.join(", ")));
        let finished: Vec<String> = JobState::ALL
            .into_iter()
            .filter(|s| !s.is_live())
            .map(|s| format!("'{s}'"))
            .collect();
        assert_eq!(finished_states!(), format!("({})", finished.join(", ")));
        assert_eq!(
            "paused".parse::<JobState>().unwrap_err().to_string(),
            "unknown state \"paused\": expected one of available, scheduled, running, retryable, completed, cancelled"
        );
    }
}
