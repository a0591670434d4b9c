//! Duration settings: the range each accepts, the check that names the key at fault, and
//! the compact format error messages use.

use super::*;

/// A year as humantime reads `"1y"` (365.25 days).
pub const YEAR: Duration = Duration::from_secs(31_557_600);
/// A day.
pub const DAY: Duration = Duration::from_secs(86_400);
pub(super) const HOUR: Duration = Duration::from_secs(3600);
pub(super) const MS: Duration = Duration::from_millis(1);

/// The inclusive range a duration key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

const fn range(min: Duration, max: Duration) -> DurationRange {
    DurationRange { min, max }
}

// The range of every duration key. Upper bounds keep every value far inside what
// `Instant`, chrono, PostgreSQL's `interval`/`timestamptz` and sqlx can hold, so that no
// arithmetic on a configured value can overflow at run time.
/// `daemon.poll_interval`.
pub const POLL_INTERVAL_RANGE: DurationRange = range(MS, HOUR);
/// `daemon.lease`: at least 3s (a heartbeat every lease/3 must fit a few round trips).
pub const LEASE_RANGE: DurationRange = range(Duration::from_secs(3), HOUR);
/// `daemon.rescue_interval`.
pub const RESCUE_INTERVAL_RANGE: DurationRange = range(Duration::from_millis(10), HOUR);
/// `daemon.shutdown_grace` (`"0s"`: release running jobs at once).
pub const SHUTDOWN_GRACE_RANGE: DurationRange = range(Duration::ZERO, DAY);
/// `daemon.unknown_kind_grace` (`"0s"`: dead-letter at once).
pub const UNKNOWN_KIND_GRACE_RANGE: DurationRange = range(Duration::ZERO, DAY.saturating_mul(365));
/// `daemon.horizon_warn`.
pub const HORIZON_WARN_RANGE: DurationRange = range(Duration::from_secs(1), DAY.saturating_mul(7));
/// `kinds.X.timeout`.
pub const TIMEOUT_RANGE: DurationRange = range(MS, DAY);
/// `http.header_timeout`, `http.body_timeout` and `http.idle_timeout`.
pub const HTTP_TIMEOUT_RANGE: DurationRange = range(Duration::from_millis(100), HOUR);
/// `kinds.X.backoff.base` and `.max`.
pub const BACKOFF_RANGE: DurationRange = range(MS, DAY.saturating_mul(365));
/// `retention.*` (`"0s"` has each key's own meaning).
pub const RETENTION_RANGE: DurationRange = range(Duration::ZERO, YEAR.saturating_mul(100));
/// `providers.X.circuit_breaker.recovery_timeout` and `.monitoring_period`.
pub const BREAKER_RANGE: DurationRange = range(MS, DAY.saturating_mul(7));
/// `oauth.refresh_ahead`.
pub const REFRESH_AHEAD_RANGE: DurationRange =
    range(Duration::from_secs(1), DAY.saturating_mul(30));
/// `api_keys.overlap`.
pub const OVERLAP_RANGE: DurationRange = range(Duration::from_secs(1), DAY.saturating_mul(365));
/// Delays and ages given on the command line (`enqueue --in`, `dlq purge --older-than`).
pub const CLI_DELAY_RANGE: DurationRange = range(Duration::ZERO, YEAR.saturating_mul(100));

/// `Ok` if `value` lies in `range`, else the message
/// `KEY must be between MIN and MAX, got VALUE`.
pub fn check_duration_range(
    key: &str,
    value: Duration,
    range: DurationRange,
) -> Result<(), String> {
    if (range.min..=range.max).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{key} must be between {} and {}, got {}",
            format_duration(range.min),
            format_duration(range.max),
            format_duration(value)
        ))
    }
}

pub(super) fn check_duration(
    key: &str,
    value: Duration,
    range: DurationRange,
) -> Result<(), ConfigError> {
    check_duration_range(key, value, range).map_err(ConfigError::Invalid)
}

/// A duration in the largest humantime unit that holds it exactly (`"365d"`, `"1000000y"`,
/// `"90s"`), so that an error quotes a value as it was written.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    const UNITS: [(&str, u128); 8] = [
        ("y", 31_557_600 * 1_000_000_000),
        ("d", 86_400 * 1_000_000_000),
        ("h", 3_600 * 1_000_000_000),
        ("m", 60 * 1_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    let (unit, size) = UNITS
        .into_iter()
        .find(|(_, size)| nanos % size == 0)
        .unwrap_or(("ns", 1));
    format!("{}{unit}", nanos / size)
}
