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

/// Delay before the attempt after failed attempt number `attempt` (1-based), jitter
/// included, never above `cfg.max`.
pub fn backoff_delay(cfg: &BackoffConfig, attempt: u32) -> Duration {
    let n = attempt.max(1) as usize;
    let delay = match cfg.strategy {
        BackoffStrategy::Exponential => {
            let mut b = ExponentialBuilder::new()
                .with_min_delay(cfg.base)
                .with_max_delay(cfg.max)
                .with_factor(2.0)
                .without_max_times();
            if cfg.jitter {
                b = b.with_jitter();
            }
            b.build().nth(n - 1)
        }
        BackoffStrategy::Fixed => {
            let mut b = ConstantBuilder::new()
                .with_delay(cfg.base)
                .without_max_times();
            if cfg.jitter {
                b = b.with_jitter();
            }
            b.build().nth(n - 1)
        }
        BackoffStrategy::Linear => {
            let step = cfg
                .base
                .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
            Some(if cfg.jitter {
                step.saturating_add(step.mul_f64(rand::random::<f64>()))
            } else {
                step
            })
        }
    };
    delay.unwrap_or(cfg.max).min(cfg.max)
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
            let mut run_at =
                now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            if let Some(nb) = not_before {
                run_at = run_at.max(nb);
            }
            Outcome::Retry { run_at, error }
        }
        Err(JobError::Snooze { delay }) => Outcome::Snooze {
            run_at: now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX),
        },
        Err(JobError::Cancel { message }) => Outcome::Cancel {
            error: Some(entry("cancelled", message, None)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ErrorClass;

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
