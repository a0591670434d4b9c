//! The daemon's Prometheus metrics: what its own parts count as they work (attempts and
//! their durations by kind, jobs enqueued through it, outbound calls by provider and
//! status class, webhooks by provider and result, pool saturation). One [`Metrics`] per
//! daemon, passed to each part (no global registry); the admin listener renders it, with
//! the gauges it reads from the database at scrape time (queue depth, circuits), at
//! `GET /metrics` in Prometheus' text format.
//!
//! Counting must cost the hot path nothing it would notice: a pool resolves its kinds'
//! counters once ([`KindMetrics`]), and counting is then an atomic add. Must never put a
//! payload, a tenant, a URL or a job id in a label (unbounded series).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::queue::Outcome;

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Buckets of attempt durations (seconds): 1 ms to 5 min.
const ATTEMPT_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Buckets of outbound call latencies (seconds): 5 ms to 1 min.
const OUTBOUND_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    kind: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnqueueLabels {
    kind: String,
    via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboundLabels {
    provider: String,
    status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    provider: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// One daemon's metrics.
pub struct Metrics {
    registry: Registry,
    attempts: Family<AttemptLabels, Counter>,
    attempt_seconds: HistogramFamily<KindLabel>,
    enqueued: Family<EnqueueLabels, Counter>,
    outbound_seconds: HistogramFamily<OutboundLabels>,
    webhooks: Family<WebhookLabels, Counter>,
    pool_busy: Family<QueueLabel, Gauge>,
    pool_capacity: Family<QueueLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("penguin_jobs");
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "attempts",
            "Attempts finished by this daemon, by kind and outcome (completed, retried, \
             dead_lettered, snoozed, cancelled)",
            attempts.clone(),
        );
        let attempt_seconds: HistogramFamily<KindLabel> =
            Family::new_with_constructor(|| Histogram::new(ATTEMPT_BUCKETS));
        registry.register(
            "attempt_duration_seconds",
            "How long attempts ran in this daemon, by kind (handler start to outcome)",
            attempt_seconds.clone(),
        );
        let enqueued = Family::<EnqueueLabels, Counter>::default();
        registry.register(
            "enqueued",
            "Jobs this daemon's HTTP shim enqueued (via=\"http\"), by kind; jobs inserted \
             with SQL by other clients show in penguin_jobs_queue_jobs only",
            enqueued.clone(),
        );
        let outbound_seconds: HistogramFamily<OutboundLabels> =
            Family::new_with_constructor(|| Histogram::new(OUTBOUND_BUCKETS));
        registry.register(
            "outbound_request_duration_seconds",
            "Latency of calls to providers from this daemon, by provider and status class \
             (2xx, 4xx, 5xx, timeout, network)",
            outbound_seconds.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Webhook requests received by this daemon's shim, by provider and result \
             (stored, refused, unavailable)",
            webhooks.clone(),
        );
        let pool_busy = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "pool_busy",
            "Jobs running now in this daemon's pool of a queue",
            pool_busy.clone(),
        );
        let pool_capacity = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "pool_concurrency",
            "Jobs this daemon's pool of a queue runs at once ([queues.NAME] concurrency)",
            pool_capacity.clone(),
        );
        Self {
            registry,
            attempts,
            attempt_seconds,
            enqueued,
            outbound_seconds,
            webhooks,
            pool_busy,
            pool_capacity,
        }
    }
}

/// The counters of one kind, resolved once so that counting an attempt takes no lock but
/// the histogram's.
#[derive(Clone, Debug)]
pub struct KindMetrics {
    completed: Counter,
    retried: Counter,
    dead_lettered: Counter,
    snoozed: Counter,
    cancelled: Counter,
    seconds: Histogram,
}

impl KindMetrics {
    /// Counts an attempt that ran for `seconds` and ended in `outcome`.
    pub fn attempt(&self, outcome: &Outcome, seconds: f64) {
        match outcome {
            Outcome::Completed { .. } => self.completed.inc(),
            Outcome::Retry { .. } => self.retried.inc(),
            Outcome::Dead { .. } => self.dead_lettered.inc(),
            Outcome::Snooze { .. } => self.snoozed.inc(),
            Outcome::Cancel { .. } => self.cancelled.inc(),
        };
        self.seconds.observe(seconds);
    }
}

impl Metrics {
    /// A fresh set, shared.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The counters of `kind`.
    pub fn kind(&self, kind: &str) -> KindMetrics {
        let counter = |outcome| {
            self.attempts.get_or_create_owned(&AttemptLabels {
                kind: kind.to_string(),
                outcome,
            })
        };
        KindMetrics {
            completed: counter("completed"),
            retried: counter("retried"),
            dead_lettered: counter("dead_lettered"),
            snoozed: counter("snoozed"),
            cancelled: counter("cancelled"),
            seconds: self.attempt_seconds.get_or_create_owned(&KindLabel {
                kind: kind.to_string(),
            }),
        }
    }

    /// Counts a job of `kind` enqueued through `via` (`http`, `webhook`).
    pub fn enqueued(&self, kind: &str, via: &'static str) {
        self.enqueued
            .get_or_create(&EnqueueLabels {
                kind: kind.to_string(),
                via,
            })
            .inc();
    }

    /// Counts a provider call that took `seconds` and ended in `status_class`.
    pub fn outbound(&self, provider: &str, status_class: &str, seconds: f64) {
        self.outbound_seconds
            .get_or_create(&OutboundLabels {
                provider: provider.to_string(),
                status_class: status_class.to_string(),
            })
            .observe(seconds);
    }

    /// Counts a webhook request of `provider` that ended in `result`.
    pub fn webhook(&self, provider: &'static str, result: &'static str) {
        self.webhooks
            .get_or_create(&WebhookLabels { provider, result })
            .inc();
    }

    /// The gauge of how many jobs the pool of `queue` holds, its concurrency recorded.
    pub fn pool(&self, queue: &str, concurrency: usize) -> Gauge {
        let label = QueueLabel {
            queue: queue.to_string(),
        };
        self.pool_capacity
            .get_or_create(&label)
            .set(i64::try_from(concurrency).unwrap_or(i64::MAX));
        self.pool_busy.get_or_create_owned(&label)
    }

    /// Appends every metric in Prometheus' text format to `out`.
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::prometheus_text::encode(out, &self.registry)
    }
}

/// Gauges read at scrape time (queue depth, circuits), rendered beside [`Metrics`].
pub struct Sampled {
    registry: Registry,
    queue_jobs: Family<QueueStateLabels, Gauge>,
    oldest_due: Family<QueueLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    dead_letters: Family<QueueLabel, Gauge>,
    paused: Family<QueueLabel, Gauge>,
    circuit: Family<CircuitLabels, Gauge>,
    credentials_refused: Family<ProviderLabel, Gauge>,
    sample_age: Gauge<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueStateLabels {
    queue: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CircuitLabels {
    provider: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

/// The circuit states, each a series (1 for the current one).
pub const CIRCUIT_STATES: [&str; 3] = ["closed", "open", "half_open"];

impl Default for Sampled {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("penguin_jobs");
        let queue_jobs = Family::<QueueStateLabels, Gauge>::default();
        registry.register(
            "queue_jobs",
            "Live jobs per queue and state (available, scheduled, running, retryable), \
             across every daemon",
            queue_jobs.clone(),
        );
        let oldest_due = Family::default();
        registry.register(
            "queue_oldest_due_age_seconds",
            "How long the oldest job due now has waited, per queue (0 when none is due)",
            oldest_due.clone(),
        );
        let dead_letters = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "dead_letters",
            "Dead letters not replayed yet, per queue",
            dead_letters.clone(),
        );
        let paused = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "queue_paused",
            "1 when the queue is paused (no daemon claims from it)",
            paused.clone(),
        );
        let circuit = Family::<CircuitLabels, Gauge>::default();
        registry.register(
            "circuit_state",
            "Each provider's circuit breaker: 1 on the series of its current state",
            circuit.clone(),
        );
        let credentials_refused = Family::<ProviderLabel, Gauge>::default();
        registry.register(
            "credentials_refused",
            "1 while the provider refuses our credentials (401/403 since the last success)",
            credentials_refused.clone(),
        );
        let sample_age = Gauge::default();
        registry.register(
            "stats_age_seconds",
            "How old the queue counts above are ([admin] stats_interval bounds it)",
            sample_age.clone(),
        );
        Self {
            registry,
            queue_jobs,
            oldest_due,
            dead_letters,
            paused,
            circuit,
            credentials_refused,
            sample_age,
        }
    }
}

/// One queue's sampled numbers.
#[derive(Debug, Clone, Default)]
pub struct QueueSample<'a> {
    pub queue: &'a str,
    pub available: i64,
    pub scheduled: i64,
    pub running: i64,
    pub retryable: i64,
    pub dead_letters: i64,
    pub oldest_due_age_seconds: f64,
    pub paused: bool,
}

impl Sampled {
    /// Records one queue.
    pub fn queue(&self, q: &QueueSample<'_>) {
        for (state, n) in [
            ("available", q.available),
            ("scheduled", q.scheduled),
            ("running", q.running),
            ("retryable", q.retryable),
        ] {
            self.queue_jobs
                .get_or_create(&QueueStateLabels {
                    queue: q.queue.to_string(),
                    state,
                })
                .set(n);
        }
        let label = QueueLabel {
            queue: q.queue.to_string(),
        };
        self.oldest_due
            .get_or_create(&label)
            .set(q.oldest_due_age_seconds);
        self.dead_letters.get_or_create(&label).set(q.dead_letters);
        self.paused.get_or_create(&label).set(i64::from(q.paused));
    }

    /// Records one provider's breaker and credentials.
    pub fn provider(&self, provider: &str, breaker: &str, credentials_refused: bool) {
        for state in CIRCUIT_STATES {
            self.circuit
                .get_or_create(&CircuitLabels {
                    provider: provider.to_string(),
                    state,
                })
                .set(i64::from(state == breaker));
        }
        self.credentials_refused
            .get_or_create(&ProviderLabel {
                provider: provider.to_string(),
            })
            .set(i64::from(credentials_refused));
    }

    /// Records how old the sample is.
    pub fn age(&self, seconds: f64) {
        self.sample_age.set(seconds);
    }

    /// Appends these gauges in Prometheus' text format to `out`.
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::prometheus_text::encode(out, &self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_is_counted_by_kind_and_outcome_with_its_duration() {
        let metrics = Metrics::new();
        let noop = metrics.kind("noop");
        noop.attempt(
            &Outcome::Completed {
                result: None,
                delete: false,
            },
            0.002,
        );
        noop.attempt(
            &Outcome::Snooze {
                run_at: chrono::Utc::now(),
            },
            0.2,
        );
        metrics.enqueued("noop", "http");
        metrics.outbound("mailgun", "5xx", 0.3);
        metrics.webhook("stripe", "stored");
        metrics.pool("default", 64).set(3);
        let mut text = String::new();
        metrics.encode(&mut text).unwrap();
        for line in [
            "penguin_jobs_attempts_total{kind=\"noop\",outcome=\"completed\"} 1",
            "penguin_jobs_attempts_total{kind=\"noop\",outcome=\"snoozed\"} 1",
            "penguin_jobs_attempts_total{kind=\"noop\",outcome=\"retried\"} 0",
            "penguin_jobs_attempt_duration_seconds_count{kind=\"noop\"} 2",
            "penguin_jobs_attempt_duration_seconds_bucket{kind=\"noop\",le=\"0.0025\"} 1",
            "penguin_jobs_enqueued_total{kind=\"noop\",via=\"http\"} 1",
            "penguin_jobs_outbound_request_duration_seconds_count{provider=\"mailgun\",status_class=\"5xx\"} 1",
            "penguin_jobs_webhooks_total{provider=\"stripe\",result=\"stored\"} 1",
            "penguin_jobs_pool_busy{queue=\"default\"} 3",
            "penguin_jobs_pool_concurrency{queue=\"default\"} 64",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }

    #[test]
    fn sampled_gauges_mark_the_current_circuit_state_only() {
        let sampled = Sampled::default();
        sampled.provider("stripe", "open", false);
        sampled.queue(&QueueSample {
            queue: "email",
            available: 5,
            oldest_due_age_seconds: 1.5,
            paused: true,
            ..QueueSample::default()
        });
        let mut text = String::new();
        sampled.encode(&mut text).unwrap();
        for line in [
            "penguin_jobs_circuit_state{provider=\"stripe\",state=\"open\"} 1",
            "penguin_jobs_circuit_state{provider=\"stripe\",state=\"closed\"} 0",
            "penguin_jobs_queue_jobs{queue=\"email\",state=\"available\"} 5",
            "penguin_jobs_queue_oldest_due_age_seconds{queue=\"email\"} 1.5",
            "penguin_jobs_queue_paused{queue=\"email\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }
}
