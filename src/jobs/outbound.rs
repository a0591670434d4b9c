//! Every outbound provider call of a job goes through [`Outbound::call`]: the provider's
//! circuit breaker and rate limit (both shared by all daemons through Postgres), then the
//! call, then its health and its metrics.
//!
//! - Rate limit: tokens are taken from `penguin.rate_limits` a few at a time (one
//!   statement per lease of up to a tenth of a second's worth) and spent within a second;
//!   an empty bucket snoozes the job to when a token will be free: no attempt is spent and
//!   nothing waits in a loop. The breaker's probe call does not wait for a token.
//! - Breaker: each daemon reads the provider's row at most once a second. Open: the job is
//!   snoozed without calling. After the recovery timeout one daemon wins the probe; the
//!   others keep waiting until it reports. Only 5xx, timeouts and network errors count as
//!   failures: any other answer proves the provider is up.
//! - 401/403 mark the integration `error` for operators (the job itself is dead-lettered by
//!   its error class).
//! - Metrics: latency and status class per minute, provider and kind, flushed to
//!   `penguin.integration_metrics` every two seconds.
//! - Key: the provider's active key in `penguin.api_keys` (environment `production`, read
//!   at most every 30 s, so a rotation takes effect within that), else the key of its
//!   `[providers.NAME]` table. Stored keys need the master key (`[secrets]`).
//!
//! Must never log a request, a response body or a secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, Utc};
use secrecy::SecretString;
use sqlx::PgPool;

use super::JobError;
use crate::config::{CircuitBreakerConfig, Config, RateLimitConfig};
use crate::error_class::ErrorClass;
use crate::providers::SecretSource;
use crate::providers::http::CallError;
use crate::queue::integrations::{self, MetricRow};
use crate::secrets::Keyring;

/// How often each daemon re-reads a provider's breaker row.
const BREAKER_REFRESH: Duration = Duration::from_secs(1);
/// How long leased tokens may be held before they are thrown away.
const LEASE_TTL: Duration = Duration::from_secs(1);
/// How often metrics are written.
const METRICS_FLUSH: Duration = Duration::from_secs(2);
/// How long a stored key (or its absence) is trusted before `penguin.api_keys` is read again.
const STORED_KEY_CACHE: Duration = Duration::from_secs(30);

/// Limits of one provider, from its `[providers.NAME]` table.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderLimits {
    pub rate_limit: Option<RateLimitConfig>,
    pub breaker: CircuitBreakerConfig,
}

impl ProviderLimits {
    /// The limits of every configured provider.
    pub fn from_config(config: &Config) -> HashMap<&'static str, ProviderLimits> {
        config
            .providers
            .limits()
            .into_iter()
            .map(|(provider, rate_limit, breaker)| {
                (
                    provider,
                    ProviderLimits {
                        rate_limit,
                        breaker,
                    },
                )
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
struct BreakerView {
    status: String,
    breaker: String,
    failures: i32,
    opened_at: Option<DateTime<Utc>>,
    fetched: Instant,
}

#[derive(Debug, Default)]
struct LocalTokens {
    tokens: u32,
    expires: Option<Instant>,
}

struct ProviderState {
    limits: ProviderLimits,
    /// Tokens per lease (at most a tenth of a second's worth, at least one).
    lease: u32,
    buckets_written: tokio::sync::OnceCell<()>,
    local: Mutex<LocalTokens>,
    /// One refill at a time per daemon.
    refill: tokio::sync::Mutex<()>,
    view: Mutex<Option<BreakerView>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Agg {
    calls: i64,
    total_ms: f64,
    max_ms: f64,
    buckets: [i64; integrations::LATENCY_SLOTS],
}

type MetricKey = (DateTime<Utc>, String, &'static str, &'static str);

/// The guard around provider calls (one per daemon, shared by its kinds).
pub struct Outbound {
    pool: Option<PgPool>,
    keyring: Option<Arc<Keyring>>,
    /// Provider → (read at, its active stored key if any).
    stored_keys: Mutex<HashMap<&'static str, (Instant, Option<SecretString>)>>,
    providers: HashMap<&'static str, ProviderState>,
    metrics: Arc<Mutex<HashMap<MetricKey, Agg>>>,
    /// The daemon's Prometheus metrics (latency by provider and status class).
    prometheus: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

/// Whether this call is the half-open probe.
struct Permit {
    probe: bool,
}

impl Outbound {
    /// The guard for `limits`. Without a database (the CLI checking payloads) it lets every
    /// call through and records nothing. With one, it starts the metrics writer, which
    /// ends when the guard is dropped.
    pub fn new(
        limits: HashMap<&'static str, ProviderLimits>,
        pool: Option<PgPool>,
        keyring: Option<Arc<Keyring>>,
        prometheus: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let providers = limits
            .into_iter()
            .map(|(name, limits)| {
                let lease = limits
                    .rate_limit
                    .map(|r| {
                        let windows = r.windows();
                        let capacity = windows.iter().map(|w| w.1).fold(f64::MAX, f64::min);
                        let rate = windows.iter().map(|w| w.2).fold(f64::MAX, f64::min);
                        (rate / 10.0).min(capacity).floor().max(1.0) as u32
                    })
                    .unwrap_or(1);
                (
                    name,
                    ProviderState {
                        limits,
                        lease,
                        buckets_written: tokio::sync::OnceCell::new(),
                        local: Mutex::new(LocalTokens::default()),
                        refill: tokio::sync::Mutex::new(()),
                        view: Mutex::new(None),
                    },
                )
            })
            .collect();
        let outbound = Arc::new(Self {
            pool,
            keyring,
            stored_keys: Mutex::new(HashMap::new()),
            providers,
            metrics: Arc::new(Mutex::new(HashMap::new())),
            prometheus,
        });
        if outbound.pool.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(flush_metrics(Arc::downgrade(&outbound)));
        }
        outbound
    }

    /// Runs `call` to `provider` for a job of `kind` under the breaker and the rate limit,
    /// with the provider's key (`configured`: the key of its config table, when no key is
    /// stored). A refused call (breaker open, bucket empty) is a snooze: the job runs
    /// again later without spending an attempt.
    pub async fn call<T>(
        &self,
        provider: &'static str,
        kind: &'static str,
        configured: &SecretSource,
        call: impl AsyncFnOnce(&SecretString) -> Result<T, CallError>,
    ) -> Result<T, JobError> {
        let key = self.key(provider, configured).await?;
        let permit = self.before(provider).await?;
        let started = Instant::now();
        let result = call(&key).await;
        let elapsed = started.elapsed();
        self.record_metric(provider, kind, &result, elapsed);
        self.after(provider, permit, result.as_ref().err()).await;
        result.map_err(JobError::from)
    }

    /// The stored active key of `provider`, else the configured one.
    async fn key(
        &self,
        provider: &'static str,
        configured: &SecretSource,
    ) -> Result<SecretString, CallError> {
        let (Some(pool), Some(keyring)) = (&self.pool, &self.keyring) else {
            return configured.get();
        };
        let cached = self
            .stored_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(provider)
            .filter(|(at, _)| at.elapsed() < STORED_KEY_CACHE)
            .map(|(_, key)| key.clone());
        let stored = match cached {
            Some(key) => key,
            None => {
                let key = match crate::credentials::keys::active_key(
                    pool,
                    keyring,
                    provider,
                    crate::credentials::keys::DEFAULT_ENVIRONMENT,
                )
                .await
                {
                    Ok(found) => found.map(|k| k.key),
                    Err(e) => {
                        tracing::warn!(provider, error = %e, "could not read the stored API key; using the configured one");
                        None
                    }
                };
                self.stored_keys
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(provider, (Instant::now(), key.clone()));
                key
            }
        };
        match stored {
            Some(key) => Ok(key),
            None => configured.get(),
        }
    }

    async fn before(&self, provider: &'static str) -> Result<Permit, JobError> {
        let (Some(pool), Some(state)) = (&self.pool, self.providers.get(provider)) else {
            return Ok(Permit { probe: false });
        };
        let probe = self.check_breaker(pool, provider, state).await?;
        // the probe (one call per recovery timeout) does not wait for a token: a refused
        // probe would hold every other daemon back for another recovery period
        if !probe
            && state.limits.rate_limit.is_some()
            && let Err(wait) = take_token(pool, provider, state).await
        {
            tracing::debug!(
                provider,
                wait_ms = wait.as_millis() as u64,
                "rate limit reached: job snoozed"
            );
            return Err(JobError::Snooze { delay: wait });
        }
        Ok(Permit { probe })
    }

    /// `Ok(true)`: this call is the probe of a half-open breaker.
    async fn check_breaker(
        &self,
        pool: &PgPool,
        provider: &'static str,
        state: &ProviderState,
    ) -> Result<bool, JobError> {
        let view = self.view(pool, provider, state).await;
        let Some(view) = view else { return Ok(false) };
        let cfg = state.limits.breaker;
        match view.breaker.as_str() {
            "closed" => Ok(false),
            "open" => {
                let reopen = view.opened_at.map(|at| {
                    at + chrono::Duration::from_std(cfg.recovery_timeout).unwrap_or_default()
                });
                let now = Utc::now();
                if let Some(reopen) = reopen
                    && reopen > now
                {
                    let delay =
                        (reopen - now).to_std().unwrap_or_default() + Duration::from_millis(50);
                    return Err(JobError::Snooze { delay });
                }
                let won = integrations::try_start_probe(
                    pool,
                    provider,
                    cfg.recovery_timeout,
                    probe_timeout(cfg),
                )
                .await
                .unwrap_or(false);
                self.forget_view(state);
                if won {
                    tracing::info!(provider, "circuit half open: this call is the probe");
                    Ok(true)
                } else {
                    Err(JobError::Snooze {
                        delay: waiting_delay(cfg),
                    })
                }
            }
            _ => {
                // half open: someone else is probing (or a stale probe may be taken over)
                if integrations::try_start_probe(
                    pool,
                    provider,
                    cfg.recovery_timeout,
                    probe_timeout(cfg),
                )
                .await
                .unwrap_or(false)
                {
                    self.forget_view(state);
                    return Ok(true);
                }
                Err(JobError::Snooze {
                    delay: waiting_delay(cfg),
                })
            }
        }
    }

    async fn after(&self, provider: &'static str, permit: Permit, error: Option<&CallError>) {
        let (Some(pool), Some(state)) = (&self.pool, self.providers.get(provider)) else {
            return;
        };
        let cfg = state.limits.breaker;
        let unwell = error.is_some_and(|e| {
            matches!(
                e.class,
                ErrorClass::Api | ErrorClass::Network | ErrorClass::Timeout
            )
        });
        let refused = error.filter(|e| {
            matches!(
                e.class,
                ErrorClass::Authentication | ErrorClass::Authorization
            )
        });
        let result = if unwell {
            let e = error.expect("unwell means an error");
            integrations::record_breaker_failure(pool, provider, e.class.as_str(), &e.message, cfg.failure_threshold, cfg.monitoring_period)
                .await
                .map(|row| {
                    if row.breaker == "open" && (permit.probe || row.failures as u32 == cfg.failure_threshold) {
                        tracing::warn!(provider, failures = row.failures, recovery = ?cfg.recovery_timeout, error = %e.message, "circuit opened: calls to this provider wait");
                    }
                    Some(row)
                })
        } else if let Some(e) = refused {
            tracing::error!(provider, class = %e.class, error = %e.message, "the provider refused our credentials: integration marked error");
            integrations::record_credentials_refused(pool, provider, e.class.as_str(), &e.message)
                .await
                .map(Some)
        } else {
            let clean = state
                .view
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|v| v.breaker == "closed" && v.failures == 0 && v.status == "ok");
            if clean && !permit.probe {
                Ok(None)
            } else {
                let row = integrations::record_healthy(pool, provider).await;
                if permit.probe && row.is_ok() {
                    tracing::info!(provider, "probe succeeded: circuit closed");
                }
                row.map(Some)
            }
        };
        match result {
            Ok(Some(row)) => self.set_view(state, &row),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(provider, error = %e, "could not record the provider's health")
            }
        }
    }

    async fn view(
        &self,
        pool: &PgPool,
        provider: &str,
        state: &ProviderState,
    ) -> Option<BreakerView> {
        {
            let view = state.view.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = view.as_ref()
                && v.fetched.elapsed() < BREAKER_REFRESH
            {
                return Some(v.clone());
            }
        }
        match integrations::get_integration(pool, provider).await {
            Ok(Some(row)) => {
                self.set_view(state, &row);
                state.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
            }
            Ok(None) => {
                let fresh = BreakerView {
                    status: "ok".into(),
                    breaker: "closed".into(),
                    failures: 0,
                    opened_at: None,
                    fetched: Instant::now(),
                };
                *state.view.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
                Some(fresh)
            }
            Err(e) => {
                tracing::warn!(provider, error = %e, "could not read the provider's breaker; calling anyway");
                None
            }
        }
    }

    fn set_view(&self, state: &ProviderState, row: &integrations::Integration) {
        *state.view.lock().unwrap_or_else(|e| e.into_inner()) = Some(BreakerView {
            status: row.status.clone(),
            breaker: row.breaker.clone(),
            failures: row.failures,
            opened_at: row.opened_at,
            fetched: Instant::now(),
        });
    }

    fn forget_view(&self, state: &ProviderState) {
        *state.view.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Counts a call made outside [`Outbound::call`] (no breaker, no rate limit: an
    /// `http.request` to a customer's endpoint, an OAuth token call) in the metrics.
    pub fn record_metric<T>(
        &self,
        provider: &str,
        kind: &'static str,
        result: &Result<T, CallError>,
        elapsed: Duration,
    ) {
        let answer = match result {
            Ok(_) => Ok(200),
            Err(e) => e.status.ok_or(e.class),
        };
        self.record_answer(provider, kind, answer, elapsed);
    }

    /// Counts a call that was answered with `answer`'s HTTP status, or failed before an
    /// answer with its error class.
    pub fn record_answer(
        &self,
        provider: &str,
        kind: &'static str,
        answer: Result<u16, ErrorClass>,
        elapsed: Duration,
    ) {
        if self.pool.is_none() {
            return;
        }
        let class: &'static str = match answer {
            Ok(s) if (200..300).contains(&s) => "2xx",
            Ok(s) if (400..500).contains(&s) => "4xx",
            Ok(s) if (500..600).contains(&s) => "5xx",
            Ok(_) => "other",
            Err(ErrorClass::Timeout) => "timeout",
            Err(ErrorClass::Network) => "network",
            Err(ErrorClass::Configuration) => "configuration",
            Err(_) => "invalid_answer",
        };
        self.prometheus
            .outbound(provider, class, elapsed.as_secs_f64());
        let minute = Utc::now()
            .duration_trunc(chrono::Duration::minutes(1))
            .unwrap_or_else(|_| Utc::now());
        let ms = elapsed.as_secs_f64() * 1000.0;
        let mut metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        let agg = metrics
            .entry((minute, provider.to_string(), kind, class))
            .or_default();
        agg.calls += 1;
        agg.total_ms += ms;
        agg.max_ms = agg.max_ms.max(ms);
        agg.buckets[integrations::latency_slot(ms)] += 1;
    }

    /// Writes the metrics gathered so far (also done every two seconds).
    pub async fn flush_metrics(&self) {
        let Some(pool) = &self.pool else { return };
        let rows: Vec<MetricRow> = {
            let mut metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
            metrics
                .drain()
                .map(|((minute, provider, kind, class), a)| MetricRow {
                    minute,
                    provider,
                    kind: kind.into(),
                    status_class: class.into(),
                    calls: a.calls,
                    total_ms: a.total_ms,
                    max_ms: a.max_ms,
                    buckets: a.buckets,
                })
                .collect()
        };
        if let Err(e) = integrations::add_metrics(pool, &rows).await {
            tracing::warn!(error = %e, rows = rows.len(), "could not write provider call metrics; they are dropped");
        }
    }
}

async fn flush_metrics(outbound: Weak<Outbound>) {
    loop {
        tokio::time::sleep(METRICS_FLUSH).await;
        let Some(outbound) = outbound.upgrade() else {
            return;
        };
        outbound.flush_metrics().await;
    }
}

/// A probe that never reported (its daemon died) may be taken over after this long.
fn probe_timeout(cfg: CircuitBreakerConfig) -> Duration {
    cfg.recovery_timeout.max(Duration::from_secs(60))
}

/// How long jobs wait while someone else probes.
fn waiting_delay(cfg: CircuitBreakerConfig) -> Duration {
    (cfg.recovery_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Takes one token for a call: from this daemon's lease if it has one, else a new lease
/// from the shared buckets. `Err(wait)`: every token is spent for `wait`.
async fn take_token(
    pool: &PgPool,
    provider: &'static str,
    state: &ProviderState,
) -> Result<(), Duration> {
    if take_local(state) {
        return Ok(());
    }
    let _refill = state.refill.lock().await;
    if take_local(state) {
        return Ok(());
    }
    let written = state
        .buckets_written
        .get_or_try_init(|| async {
            let windows = state
                .limits
                .rate_limit
                .map(|r| r.windows())
                .unwrap_or_default();
            integrations::configure_rate_limit(pool, provider, &windows).await
        })
        .await;
    if let Err(e) = written {
        tracing::warn!(provider, error = %e, "could not write the rate limit buckets");
        return Err(Duration::from_secs(1));
    }
    match integrations::take_tokens(pool, provider, state.lease).await {
        Ok(taken) => match taken.granted {
            None => Ok(()),
            Some(0) => Err(taken.wait.max(Duration::from_millis(10))),
            Some(n) => {
                let mut local = state.local.lock().unwrap_or_else(|e| e.into_inner());
                local.tokens = n - 1;
                local.expires = Some(Instant::now() + LEASE_TTL);
                Ok(())
            }
        },
        Err(e) => {
            tracing::warn!(provider, error = %e, "could not take a rate limit token; the job waits");
            Err(Duration::from_secs(1))
        }
    }
}

fn take_local(state: &ProviderState) -> bool {
    let mut local = state.local.lock().unwrap_or_else(|e| e.into_inner());
    if local.tokens > 0 && local.expires.is_some_and(|e| e > Instant::now()) {
        local.tokens -= 1;
        true
    } else {
        local.tokens = 0;
        false
    }
}
