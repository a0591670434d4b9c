//! Retry policy math: from a handler's answer and the kind's policy to the [`Outcome`]
//! the storage writes. Pure functions of their arguments (time included), so they are
//! unit-tested without a clock or a database.
//!
//! Must never sleep: a retry is a row with `run_at` moved, not a timer in memory.

use std::time::Duration;

use backon::{BackoffBuilder, ConstantBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};

use crate::config::{BackoffConfig, BackoffStrategy};
use crate::jobs::{Attempt, JobError, KindPolicy};
use crate::queue::{ClaimedJob, DeadReason, ErrorEntry, Outcome};

/// The furthest ahead a retry or snooze is ever scheduled (the largest backoff the config
/// accepts). Delays are capped here even if a value bypassed validation, so that no
/// arithmetic on them can overflow `Duration`, chrono or PostgreSQL's `timestamptz`.
pub const MAX_DELAY: Duration = crate::config::BACKOFF_RANGE.max;

/// Exponential delays reach any cap within this many doublings (`MAX_DELAY` over 1ns is
/// below 2^55), so later attempts need not be iterated.
const MAX_STEPS: usize = 128;

/// Delay before the attempt after failed attempt number `attempt` (1-based), jitter
/// included, never above `cfg.max` nor [`MAX_DELAY`].
pub fn backoff_delay(cfg: &BackoffConfig, attempt: u32) -> Duration {
    let n = attempt.max(1) as usize;
    let max = cfg.max.min(MAX_DELAY);
    let base = cfg.base.min(max);
    let delay = match cfg.strategy {
        BackoffStrategy::Exponential => {
            let mut b = ExponentialBuilder::new()
                .with_min_delay(base)
                .with_max_delay(max)
                .with_factor(2.0)
                .without_max_times();
            if cfg.jitter {
                b = b.with_jitter();
            }
            b.build().nth(n.min(MAX_STEPS) - 1)
        }
        BackoffStrategy::Fixed => {
            let mut b = ConstantBuilder::new().with_delay(base).without_max_times();
            if cfg.jitter {
                b = b.with_jitter();
            }
            b.build().next()
        }
        BackoffStrategy::Linear => {
            let step = base.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
            Some(if cfg.jitter {
                step.saturating_add(step.mul_f64(rand::random::<f64>()))
            } else {
                step
            })
        }
    };
    delay.unwrap_or(max).min(max)
}

/// `now + delay`, the delay capped at [`MAX_DELAY`]: never overflows.
pub fn delayed(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay.min(MAX_DELAY))
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Turns one attempt's result into the outcome to store.
pub fn outcome_of(
    job: &ClaimedJob,
    policy: &KindPolicy,
    attempt: Attempt,
    now: DateTime<Utc>,
    delete_completed: bool,
) -> Outcome {
    let entry = |class: &str, message: String, status: Option<u16>| ErrorEntry {
        at: now,
        attempt: job.attempt,
        class: class.to_string(),
        message,
        status,
    };
    match attempt {
        Ok(result) => Outcome::Completed {
            result,
            delete: delete_completed,
        },
        Err(JobError::Fatal {
            class,
            message,
            status,
        }) => Outcome::Dead {
            reason: DeadReason::PermanentError,
            error: Some(entry(class.as_str(), message, status)),
        },
        Err(JobError::Retryable {
            class,
            message,
            status,
            not_before,
        }) => {
            let error = entry(class.as_str(), message, status);
            if job.attempt >= job.max_attempts {
                return Outcome::Dead {
                    reason: DeadReason::AttemptsExhausted,
                    error: Some(error),
                };
            }
            let delay = backoff_delay(&policy.backoff, job.attempt.max(1) as u32);
            let mut run_at = delayed(now, delay);
            if let Some(nb) = not_before {
                // a provider's "not before" is honoured up to the same cap
                run_at = run_at.max(nb.min(delayed(now, MAX_DELAY)));
            }
            Outcome::Retry { run_at, error }
        }
        Err(JobError::Snooze { delay }) => Outcome::Snooze {
            run_at: delayed(now, delay),
        },
        Err(JobError::Cancel { message }) => Outcome::Cancel {
            error: Some(entry("cancelled", message, None)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_class::ErrorClass;

    fn cfg(strategy: BackoffStrategy, jitter: bool) -> BackoffConfig {
        BackoffConfig {
            strategy,
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter,
        }
    }

    #[test]
    fn exponential_doubles_and_is_capped() {
        let c = cfg(BackoffStrategy::Exponential, false);
        let got: Vec<u64> = (1..=8).map(|a| backoff_delay(&c, a).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn linear_and_fixed_grow_as_named() {
        let l = cfg(BackoffStrategy::Linear, false);
        assert_eq!(backoff_delay(&l, 3), Duration::from_secs(3));
        assert_eq!(backoff_delay(&l, 100), Duration::from_secs(60));
        let f = cfg(BackoffStrategy::Fixed, false);
        assert_eq!(backoff_delay(&f, 7), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_between_the_delay_and_the_cap() {
        for strategy in [
            BackoffStrategy::Exponential,
            BackoffStrategy::Linear,
            BackoffStrategy::Fixed,
        ] {
            let c = cfg(strategy, true);
            let plain = cfg(strategy, false);
            for attempt in 1..=30 {
                let d = backoff_delay(&c, attempt);
                assert!(
                    d >= backoff_delay(&plain, attempt),
                    "{strategy:?} {attempt}"
                );
                assert!(d <= c.max, "{strategy:?} {attempt}");
            }
        }
    }

    #[test]
    fn backoff_is_monotonic_without_jitter() {
        for strategy in [BackoffStrategy::Exponential, BackoffStrategy::Linear] {
            let c = cfg(strategy, false);
            let mut last = Duration::ZERO;
            for attempt in 1..=40 {
                let d = backoff_delay(&c, attempt);
                assert!(d >= last);
                last = d;
            }
        }
    }

    #[test]
    fn absurd_backoff_values_saturate_at_the_cap_instead_of_panicking() {
        // the values of issue 13 (1000000y panicked in DateTime + TimeDelta), and worse
        let now = Utc::now();
        let cap = delayed(now, MAX_DELAY);
        for value in [Duration::from_secs(31_557_600 * 1_000_000), Duration::MAX] {
            for strategy in [
                BackoffStrategy::Exponential,
                BackoffStrategy::Linear,
                BackoffStrategy::Fixed,
            ] {
                for jitter in [false, true] {
                    let c = BackoffConfig {
                        strategy,
                        base: value,
                        max: value,
                        jitter,
                    };
                    for attempt in [1, 2, 25, 1000, u32::MAX] {
                        let d = backoff_delay(&c, attempt);
                        assert_eq!(d, MAX_DELAY, "{strategy:?} jitter={jitter} {attempt}");
                    }
                    let policy = KindPolicy {
                        backoff: c,
                        ..KindPolicy::default()
                    };
                    match outcome_of(&job(24, 25), &policy, retryable(None), now, false) {
                        Outcome::Retry { run_at, .. } => assert_eq!(run_at, cap),
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
        assert_eq!(cap - now, chrono::Duration::days(365));
    }

    #[test]
    fn snoozes_and_provider_not_before_are_capped_too() {
        let now = Utc::now();
        let cap = now + chrono::Duration::days(365);
        let snooze = Err(JobError::Snooze {
            delay: Duration::MAX,
        });
        match outcome_of(&job(1, 5), &KindPolicy::default(), snooze, now, false) {
            Outcome::Snooze { run_at } => assert_eq!(run_at, cap),
            other => panic!("{other:?}"),
        }
        let far = Some(DateTime::<Utc>::MAX_UTC);
        match outcome_of(
            &job(1, 5),
            &KindPolicy::default(),
            retryable(far),
            now,
            false,
        ) {
            Outcome::Retry { run_at, .. } => assert_eq!(run_at, cap),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_delay_past_the_end_of_time_saturates() {
        let end = DateTime::<Utc>::MAX_UTC;
        assert_eq!(delayed(end, Duration::from_secs(3600)), end);
        assert_eq!(
            delayed(end - chrono::Duration::seconds(10), Duration::MAX),
            end
        );
    }

    #[test]
    fn a_small_max_still_caps_a_larger_base() {
        // validation refuses max < base; the math still never exceeds max
        let c = BackoffConfig {
            strategy: BackoffStrategy::Exponential,
            base: Duration::from_secs(60),
            max: Duration::from_secs(5),
            jitter: true,
        };
        for attempt in 1..=10 {
            assert_eq!(backoff_delay(&c, attempt), Duration::from_secs(5));
        }
    }

    fn job(attempt: i32, max_attempts: i32) -> ClaimedJob {
        ClaimedJob {
            id: 1,
            kind: "noop".into(),
            payload: serde_json::json!({}),
            attempt,
            max_attempts,
            priority: 0,
            run_at: Utc::now(),
            tenant_id: None,
            created_at: Utc::now(),
        }
    }

    fn retryable(not_before: Option<DateTime<Utc>>) -> Attempt {
        Err(JobError::Retryable {
            class: ErrorClass::RateLimit,
            message: "HTTP 429".into(),
            status: Some(429),
            not_before,
        })
    }

    #[test]
    fn retryable_errors_retry_until_the_last_attempt_then_die() {
        let policy = KindPolicy {
            backoff: cfg(BackoffStrategy::Exponential, false),
            ..KindPolicy::default()
        };
        let now = Utc::now();
        match outcome_of(&job(2, 3), &policy, retryable(None), now, false) {
            Outcome::Retry { run_at, error } => {
                assert_eq!(run_at, now + chrono::Duration::seconds(2));
                assert_eq!(error.class, "rate_limit");
                assert_eq!(error.status, Some(429));
                assert_eq!(error.attempt, 2);
            }
            other => panic!("expected retry, got {other:?}"),
        }
        assert!(matches!(
            outcome_of(&job(3, 3), &policy, retryable(None), now, false),
            Outcome::Dead {
                reason: DeadReason::AttemptsExhausted,
                ..
            }
        ));
    }

    #[test]
    fn retry_after_pushes_the_next_run_later_never_earlier() {
        let policy = KindPolicy {
            backoff: cfg(BackoffStrategy::Exponential, false),
            ..KindPolicy::default()
        };
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(120);
        match outcome_of(&job(1, 5), &policy, retryable(Some(later)), now, false) {
            Outcome::Retry { run_at, .. } => assert_eq!(run_at, later),
            other => panic!("{other:?}"),
        }
        let sooner = now + chrono::Duration::milliseconds(10);
        match outcome_of(&job(1, 5), &policy, retryable(Some(sooner)), now, false) {
            Outcome::Retry { run_at, .. } => assert_eq!(run_at, now + chrono::Duration::seconds(1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fatal_errors_go_straight_to_the_dead_letters() {
        let out = outcome_of(
            &job(1, 25),
            &KindPolicy::default(),
            Err(JobError::bad_payload("missing url")),
            Utc::now(),
            false,
        );
        match out {
            Outcome::Dead {
                reason: DeadReason::PermanentError,
                error: Some(e),
            } => assert_eq!(e.class, "data"),
            other => panic!("{other:?}"),
        }
    }
}
