//! Integration health as the product spec models it, judged from what every daemon
//! counted (`penguin.integration_metrics`, per-minute rollups) and each provider's shared
//! state (`penguin.integrations`: refused credentials, circuit breaker): status healthy |
//! degraded | unhealthy under the `[health]` thresholds, with the figures behind it.
//!
//! Pure: rows and thresholds in, a judgement out (no I/O, no clock but the one given);
//! the admin API and the alert evaluator read the rows and call [`assess`].

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::HealthConfig;
use crate::queue::integrations::{Integration, ProviderCalls, latency_quantile};

/// How an integration is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

/// Calls over a period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Requests {
    pub total: i64,
    /// Answered 2xx.
    pub successful: i64,
    /// Everything else (4xx included).
    pub failed: i64,
}

/// One integration's health.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct IntegrationHealth {
    pub provider: String,
    pub status: Status,
    /// Why it is not healthy (empty when healthy).
    pub reasons: Vec<String>,
    /// 0..100: the share of calls that did not fail on the provider's side over the window,
    /// lowered for latency (x0.75 degraded, x0.5 unhealthy); 0 while the circuit is open or
    /// credentials are refused.
    pub score: u8,
    /// Calls seen in the window.
    pub active: bool,
    /// The last minute with a call (a health check counts).
    pub last_check_at: Option<DateTime<Utc>>,
    /// Mean latency over the window (milliseconds).
    pub response_time_ms: Option<f64>,
    /// Provider-side failures (5xx, timeouts, network errors) per call over the window.
    pub error_rate: Option<f64>,
    /// The last 24 hours.
    pub requests_24h: Requests,
    pub avg_latency_ms_24h: Option<f64>,
    /// The upper bound of the latency bucket the 95th percentile falls in.
    pub p95_latency_ms_24h: Option<f64>,
    /// Minutes with calls in which not every call failed on the provider's side, of the
    /// minutes with calls, over 24 hours (100 without calls).
    pub uptime_24h_percent: f64,
    /// `closed`, `open` or `half_open`.
    pub circuit: String,
    /// The provider refused our credentials (401/403) since its last success.
    pub credentials_refused: bool,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub open_alerts: i64,
}

/// Every integration together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub total: usize,
    /// With calls in the window.
    pub active: usize,
    /// Unhealthy.
    pub failing: usize,
    pub average_score: f64,
}

/// The summary of `items`.
pub fn summarize(items: &[IntegrationHealth]) -> Summary {
    let total = items.len();
    let average_score = if total == 0 {
        100.0
    } else {
        items.iter().map(|i| f64::from(i.score)).sum::<f64>() / total as f64
    };
    Summary {
        total,
        active: items.iter().filter(|i| i.active).count(),
        failing: items
            .iter()
            .filter(|i| i.status == Status::Unhealthy)
            .count(),
        average_score: (average_score * 10.0).round() / 10.0,
    }
}

/// Judges `provider` from its calls over the window and over 24 hours, its shared row and
/// its open alerts.
pub fn assess(
    provider: &str,
    window: Option<&ProviderCalls>,
    day: Option<&ProviderCalls>,
    row: Option<&Integration>,
    open_alerts: i64,
    t: &HealthConfig,
) -> IntegrationHealth {
    let mut reasons = Vec::new();
    let mut status = Status::Healthy;
    let mut worse = |s: Status, why: String, reasons: &mut Vec<String>| {
        reasons.push(why);
        if s == Status::Unhealthy || status == Status::Healthy {
            status = s;
        }
    };
    let circuit = row.map_or("closed", |r| r.breaker.as_str()).to_string();
    let credentials_refused = row.is_some_and(|r| r.status == "error");
    if circuit == "open" {
        worse(Status::Unhealthy, "circuit open".into(), &mut reasons);
    } else if circuit == "half_open" {
        worse(
            Status::Degraded,
            "circuit half open (probing)".into(),
            &mut reasons,
        );
    }
    if credentials_refused {
        worse(
            Status::Unhealthy,
            "credentials refused (401/403)".into(),
            &mut reasons,
        );
    }
    let judged = window.filter(|w| w.calls >= t.min_calls);
    let error_rate = window
        .filter(|w| w.calls > 0)
        .map(|w| w.provider_failures as f64 / w.calls as f64);
    let p95_window = window.and_then(|w| latency_quantile(&w.buckets, 0.95));
    let mut latency_factor = 1.0;
    if let Some(w) = judged {
        let rate = w.provider_failures as f64 / w.calls as f64;
        if rate >= t.unhealthy_error_rate {
            worse(
                Status::Unhealthy,
                format!("error rate {:.0}%", rate * 100.0),
                &mut reasons,
            );
        } else if rate >= t.degraded_error_rate {
            worse(
                Status::Degraded,
                format!("error rate {:.0}%", rate * 100.0),
                &mut reasons,
            );
        }
        if let Some(p95) = p95_window {
            let unhealthy = t.unhealthy_latency.as_secs_f64() * 1000.0;
            let degraded = t.degraded_latency.as_secs_f64() * 1000.0;
            if p95 >= unhealthy {
                latency_factor = 0.5;
                worse(
                    Status::Unhealthy,
                    format!("p95 latency {p95:.0} ms"),
                    &mut reasons,
                );
            } else if p95 >= degraded {
                latency_factor = 0.75;
                worse(
                    Status::Degraded,
                    format!("p95 latency {p95:.0} ms"),
                    &mut reasons,
                );
            }
        }
    }
    let score = if circuit == "open" || credentials_refused {
        0.0
    } else {
        100.0 * (1.0 - error_rate.unwrap_or(0.0)) * latency_factor
    };
    let requests_24h = day.map_or_else(Requests::default, |d| Requests {
        total: d.calls,
        successful: d.succeeded,
        failed: d.calls - d.succeeded,
    });
    let uptime = day.filter(|d| d.minutes > 0).map_or(100.0, |d| {
        100.0 * (d.minutes - d.down_minutes) as f64 / d.minutes as f64
    });
    IntegrationHealth {
        provider: provider.to_string(),
        status,
        reasons,
        score: score.clamp(0.0, 100.0).round() as u8,
        active: window.is_some_and(|w| w.calls > 0),
        last_check_at: day.and_then(|d| d.last_call),
        response_time_ms: window
            .filter(|w| w.calls > 0)
            .map(|w| w.total_ms / w.calls as f64),
        error_rate,
        requests_24h,
        avg_latency_ms_24h: day
            .filter(|d| d.calls > 0)
            .map(|d| d.total_ms / d.calls as f64),
        p95_latency_ms_24h: day.and_then(|d| latency_quantile(&d.buckets, 0.95)),
        uptime_24h_percent: (uptime * 100.0).round() / 100.0,
        circuit,
        credentials_refused,
        last_error: row.and_then(|r| r.last_error.clone()),
        last_error_at: row.and_then(|r| r.last_error_at),
        open_alerts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::integrations::{LATENCY_SLOTS, latency_slot};

    fn calls(calls: i64, failures: i64, ms: f64) -> ProviderCalls {
        let mut buckets = vec![0; LATENCY_SLOTS];
        buckets[latency_slot(ms)] = calls;
        ProviderCalls {
            provider: "mailgun".into(),
            calls,
            succeeded: calls - failures,
            provider_failures: failures,
            total_ms: ms * calls as f64,
            buckets,
            last_call: None,
            minutes: 10,
            down_minutes: 1,
        }
    }

    #[test]
    fn rates_and_latency_make_an_integration_degraded_or_unhealthy() {
        let t = HealthConfig::default();
        let healthy = assess("mailgun", Some(&calls(100, 1, 80.0)), None, None, 0, &t);
        assert_eq!(healthy.status, Status::Healthy);
        assert_eq!(healthy.score, 99);
        let degraded = assess("mailgun", Some(&calls(100, 10, 80.0)), None, None, 0, &t);
        assert_eq!(degraded.status, Status::Degraded);
        assert_eq!(degraded.reasons, vec!["error rate 10%"]);
        let unhealthy = assess("mailgun", Some(&calls(100, 30, 80.0)), None, None, 0, &t);
        assert_eq!(unhealthy.status, Status::Unhealthy);
        let slow = assess("mailgun", Some(&calls(100, 0, 3000.0)), None, None, 0, &t);
        assert_eq!(slow.status, Status::Degraded);
        assert_eq!(slow.score, 75);
        // too few calls to judge by rate
        let few = assess("mailgun", Some(&calls(2, 2, 80.0)), None, None, 0, &t);
        assert_eq!(few.status, Status::Healthy);
        assert_eq!(few.error_rate, Some(1.0));
    }

    #[test]
    fn an_open_circuit_or_refused_credentials_are_unhealthy_with_score_zero() {
        let t = HealthConfig::default();
        let row = Integration {
            provider: "stripe".into(),
            status: "error".into(),
            breaker: "open".into(),
            failures: 5,
            window_started_at: None,
            opened_at: None,
            probe_started_at: None,
            last_error_class: Some("authentication".into()),
            last_error: Some("HTTP 401".into()),
            last_error_at: None,
            last_success_at: None,
            updated_at: Utc::now(),
        };
        let h = assess("stripe", None, Some(&calls(50, 5, 80.0)), Some(&row), 2, &t);
        assert_eq!(h.status, Status::Unhealthy);
        assert_eq!(h.score, 0);
        assert!(h.credentials_refused);
        assert_eq!(h.requests_24h.failed, 5);
        assert_eq!(h.uptime_24h_percent, 90.0);
        assert_eq!(h.open_alerts, 2);
        let summary = summarize(&[h.clone(), assess("x", None, None, None, 0, &t)]);
        assert_eq!(
            (summary.total, summary.failing, summary.average_score),
            (2, 1, 50.0)
        );
    }
}
