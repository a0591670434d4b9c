//! Provider health shared by every daemon: `penguin.integrations` (credentials refused,
//! circuit breaker), `penguin.rate_limits` (token buckets) and
//! `penguin.integration_metrics` (calls per minute).
//!
//! Stores and reads rows; the decisions (when a failure counts, how many tokens to ask
//! for) are the caller's. Must never see a request, a response body or a secret.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Error;

/// One provider's row of `penguin.integrations`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Integration {
    pub provider: String,
    /// `ok` or `error` (credentials refused).
    pub status: String,
    /// `closed`, `open` or `half_open`.
    pub breaker: String,
    pub failures: i32,
    pub window_started_at: Option<DateTime<Utc>>,
    pub opened_at: Option<DateTime<Utc>>,
    pub probe_started_at: Option<DateTime<Utc>>,
    pub last_error_class: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "provider, status, breaker, failures, window_started_at, opened_at,
    probe_started_at, last_error_class, last_error, last_error_at, last_success_at, updated_at";

/// The row of `provider`, if it was ever called.
pub async fn get_integration(pool: &PgPool, provider: &str) -> Result<Option<Integration>, Error> {
    Ok(sqlx::query_as(&format!(
        "select {COLUMNS} from penguin.integrations where provider = $1"
    ))
    .bind(provider)
    .fetch_optional(pool)
    .await?)
}

/// Every provider's row, by name.
pub async fn list_integrations(pool: &PgPool) -> Result<Vec<Integration>, Error> {
    Ok(sqlx::query_as(&format!(
        "select {COLUMNS} from penguin.integrations order by provider"
    ))
    .fetch_all(pool)
    .await?)
}

/// Counts a failure that says the provider is unwell (5xx, timeout, network). The count
/// restarts when the monitoring period since the first counted failure is over; reaching
/// `threshold` opens the breaker, and a failed probe (half open) opens it again.
pub async fn record_breaker_failure(
    pool: &PgPool,
    provider: &str,
    class: &str,
    message: &str,
    threshold: u32,
    period: Duration,
) -> Result<Integration, Error> {
    Ok(sqlx::query_as(&format!(
        "insert into penguin.integrations as i
             (provider, failures, window_started_at, last_error_class, last_error, last_error_at,
              breaker, opened_at)
         values ($1, 1, now(), $2, $3, now(),
                 case when $4 <= 1 then 'open' else 'closed' end,
                 case when $4 <= 1 then now() end)
         on conflict (provider) do update set
             failures = case when i.window_started_at is null
                              or i.window_started_at < now() - make_interval(secs => $5) then 1
                             else i.failures + 1 end,
             window_started_at = case when i.window_started_at is null
                                       or i.window_started_at < now() - make_interval(secs => $5) then now()
                                      else i.window_started_at end,
             breaker = case
                 when i.breaker = 'half_open' then 'open'
                 when i.breaker = 'open' then 'open'
                 when (case when i.window_started_at is null
                             or i.window_started_at < now() - make_interval(secs => $5) then 1
                            else i.failures + 1 end) >= $4 then 'open'
                 else 'closed' end,
             opened_at = case
                 when i.breaker = 'half_open' then now()
                 when i.breaker = 'open' then i.opened_at
                 when (case when i.window_started_at is null
                             or i.window_started_at < now() - make_interval(secs => $5) then 1
                            else i.failures + 1 end) >= $4 then now()
                 else null end,
             probe_started_at = null,
             last_error_class = $2, last_error = $3, last_error_at = now(), updated_at = now()
         returning {COLUMNS}"
    ))
    .bind(provider)
    .bind(class)
    .bind(message)
    .bind(threshold as i32)
    .bind(period.as_secs_f64())
    .fetch_one(pool)
    .await?)
}

/// The provider answered normally: the breaker closes, failures are forgotten, refused
/// credentials count as fixed.
pub async fn record_healthy(pool: &PgPool, provider: &str) -> Result<Integration, Error> {
    Ok(sqlx::query_as(&format!(
        "insert into penguin.integrations as i (provider, last_success_at)
         values ($1, now())
         on conflict (provider) do update set
             status = 'ok', breaker = 'closed', failures = 0, window_started_at = null,
             opened_at = null, probe_started_at = null, last_success_at = now(),
             updated_at = now()
         returning {COLUMNS}"
    ))
    .bind(provider)
    .fetch_one(pool)
    .await?)
}

/// The provider refused our credentials (401/403): status `error` until a call succeeds.
pub async fn record_credentials_refused(
    pool: &PgPool,
    provider: &str,
    class: &str,
    message: &str,
) -> Result<Integration, Error> {
    Ok(sqlx::query_as(&format!(
        "insert into penguin.integrations as i
             (provider, status, last_error_class, last_error, last_error_at)
         values ($1, 'error', $2, $3, now())
         on conflict (provider) do update set
             status = 'error', last_error_class = $2, last_error = $3, last_error_at = now(),
             updated_at = now()
         returning {COLUMNS}"
    ))
    .bind(provider)
    .bind(class)
    .bind(message)
    .fetch_one(pool)
    .await?)
}

/// Claims the probe call of an open breaker whose recovery time has passed (or whose
/// probe was started more than `probe_timeout` ago and never reported). `true`: this
/// caller makes the probe, everyone else keeps waiting.
pub async fn try_start_probe(
    pool: &PgPool,
    provider: &str,
    recovery: Duration,
    probe_timeout: Duration,
) -> Result<bool, Error> {
    Ok(sqlx::query(
        "update penguin.integrations
            set breaker = 'half_open', probe_started_at = now(), updated_at = now()
          where provider = $1
            and ((breaker = 'open' and opened_at <= now() - make_interval(secs => $2))
                 or (breaker = 'half_open' and probe_started_at <= now() - make_interval(secs => $3)))",
    )
    .bind(provider)
    .bind(recovery.as_secs_f64())
    .bind(probe_timeout.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Writes `provider`'s buckets: `(window, capacity, refill per second)`. A bucket keeps its
/// tokens (capped to the new capacity); windows no longer configured are removed.
pub async fn configure_rate_limit(
    pool: &PgPool,
    provider: &str,
    windows: &[(&str, f64, f64)],
) -> Result<(), Error> {
    let names: Vec<&str> = windows.iter().map(|w| w.0).collect();
    let capacities: Vec<f64> = windows.iter().map(|w| w.1).collect();
    let rates: Vec<f64> = windows.iter().map(|w| w.2).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "delete from penguin.rate_limits where provider = $1 and not (\"window\" = any($2))",
    )
    .bind(provider)
    .bind(&names)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "insert into penguin.rate_limits as r (provider, \"window\", capacity, refill_per_second, tokens)
         select $1, w, c, f, c from unnest($2::text[], $3::float8[], $4::float8[]) as t(w, c, f)
         on conflict (provider, \"window\") do update
            set capacity = excluded.capacity, refill_per_second = excluded.refill_per_second,
                tokens = least(r.tokens, excluded.capacity)",
    )
    .bind(provider)
    .bind(&names)
    .bind(&capacities)
    .bind(&rates)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Tokens taken from a provider's buckets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Taken {
    /// How many (0 when a bucket is empty); `None` when the provider has no buckets.
    pub granted: Option<u32>,
    /// With nothing granted: when one token will be free in every bucket.
    pub wait: Duration,
}

/// Takes up to `want` tokens from every bucket of `provider` at once (as many as the
/// emptiest bucket holds), refilling each for the time since it was last touched. One
/// statement; the buckets' row locks are held only for it.
pub async fn take_tokens(pool: &PgPool, provider: &str, want: u32) -> Result<Taken, Error> {
    let (granted, wait): (Option<i32>, f64) = sqlx::query_as(
        "with cur as (
             select \"window\", refill_per_second,
                    least(capacity, tokens + refill_per_second
                          * greatest(0, extract(epoch from clock_timestamp() - updated_at)::float8)) as avail
               from penguin.rate_limits
              where provider = $1
                for update
         ),
         grant_ as (
             select greatest(0, least($2::float8, floor(min(avail))))::int as n from cur
         ),
         spent as (
             update penguin.rate_limits r
                set tokens = cur.avail - g.n, updated_at = clock_timestamp()
               from cur, grant_ g
              where r.provider = $1 and r.\"window\" = cur.\"window\"
         )
         select (select n from grant_ where exists (select 1 from cur)),
                coalesce((select max(case when avail >= 1 then 0
                                          else (1 - avail) / refill_per_second end) from cur), 0)",
    )
    .bind(provider)
    .bind(want.max(1) as f64)
    .fetch_one(pool)
    .await?;
    Ok(Taken {
        granted: granted.map(|n| n.max(0) as u32),
        wait: Duration::from_secs_f64(wait.clamp(0.0, 86_400.0)),
    })
}

/// Upper bounds (milliseconds) of the latency histogram each minute keeps (`buckets`); the
/// array has one more slot, for slower calls.
pub const LATENCY_BUCKETS_MS: [f64; 12] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 60000.0,
];

/// Slots of a latency histogram: one per bound, plus the unbounded one.
pub const LATENCY_SLOTS: usize = LATENCY_BUCKETS_MS.len() + 1;

/// The slot of a call that took `ms`.
pub fn latency_slot(ms: f64) -> usize {
    LATENCY_BUCKETS_MS
        .iter()
        .position(|bound| ms <= *bound)
        .unwrap_or(LATENCY_BUCKETS_MS.len())
}

/// The `q` quantile (0..1) of a histogram, as the upper bound of the slot it falls in
/// (the last slot reports the largest bound): `None` without calls.
pub fn latency_quantile(buckets: &[i64], q: f64) -> Option<f64> {
    let total: i64 = buckets.iter().sum();
    if total <= 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as i64;
    let mut seen = 0;
    for (slot, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(
                LATENCY_BUCKETS_MS
                    .get(slot)
                    .copied()
                    .unwrap_or(LATENCY_BUCKETS_MS[LATENCY_BUCKETS_MS.len() - 1]),
            );
        }
    }
    LATENCY_BUCKETS_MS.last().copied()
}

/// Calls of one minute, provider, kind and status class.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub minute: DateTime<Utc>,
    pub provider: String,
    pub kind: String,
    pub status_class: String,
    pub calls: i64,
    pub total_ms: f64,
    pub max_ms: f64,
    /// [`LATENCY_SLOTS`] counts.
    pub buckets: [i64; LATENCY_SLOTS],
}

/// Adds `rows` to `penguin.integration_metrics` in one statement.
pub async fn add_metrics(pool: &PgPool, rows: &[MetricRow]) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let minutes: Vec<DateTime<Utc>> = rows.iter().map(|r| r.minute).collect();
    let providers: Vec<&str> = rows.iter().map(|r| r.provider.as_str()).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    let classes: Vec<&str> = rows.iter().map(|r| r.status_class.as_str()).collect();
    let calls: Vec<i64> = rows.iter().map(|r| r.calls).collect();
    let totals: Vec<f64> = rows.iter().map(|r| r.total_ms).collect();
    let maxes: Vec<f64> = rows.iter().map(|r| r.max_ms).collect();
    // row n's histogram is the slice [(n-1)*slots+1 : n*slots] of one flat array
    let buckets: Vec<i64> = rows.iter().flat_map(|r| r.buckets).collect();
    sqlx::query(
        "insert into penguin.integration_metrics as m
             (minute, provider, kind, status_class, calls, total_ms, max_ms, buckets)
         select r.minute, r.provider, r.kind, r.status_class, r.calls, r.total_ms, r.max_ms,
                ($8::bigint[])[((r.n - 1) * $9 + 1):(r.n * $9)]
           from unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[],
                       $5::bigint[], $6::float8[], $7::float8[])
                with ordinality as r(minute, provider, kind, status_class, calls, total_ms, max_ms, n)
         on conflict (minute, provider, kind, status_class) do update
            set calls = m.calls + excluded.calls, total_ms = m.total_ms + excluded.total_ms,
                max_ms = greatest(m.max_ms, excluded.max_ms),
                buckets = case
                    when m.buckets is null then excluded.buckets
                    else array(select coalesce(a, 0) + coalesce(b, 0)
                                 from unnest(m.buckets, excluded.buckets) as t(a, b))
                end",
    )
    .bind(&minutes)
    .bind(&providers)
    .bind(&kinds)
    .bind(&classes)
    .bind(&calls)
    .bind(&totals)
    .bind(&maxes)
    .bind(&buckets)
    .bind(LATENCY_SLOTS as i32)
    .execute(pool)
    .await?;
    Ok(())
}

/// One provider's calls over a window, every daemon's together.
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct ProviderCalls {
    pub provider: String,
    pub calls: i64,
    /// Answered 2xx.
    pub succeeded: i64,
    /// Failed on the provider's side: 5xx, timeouts, network errors.
    pub provider_failures: i64,
    pub total_ms: f64,
    /// [`LATENCY_SLOTS`] counts (of the minutes that kept one).
    #[sqlx(skip)]
    pub buckets: Vec<i64>,
    /// The last minute with a call.
    pub last_call: Option<DateTime<Utc>>,
    /// Minutes with calls, and those in which every call failed on the provider's side.
    pub minutes: i64,
    pub down_minutes: i64,
}

/// Every provider's calls since `since` ago (read by its index on provider and minute).
pub async fn provider_calls(pool: &PgPool, since: Duration) -> Result<Vec<ProviderCalls>, Error> {
    let mut rows: Vec<ProviderCalls> = sqlx::query_as(
        "with per_minute as (
             select provider, minute, sum(calls) as calls,
                    coalesce(sum(calls) filter (where status_class = '2xx'), 0) as ok,
                    coalesce(sum(calls) filter (where status_class in ('5xx', 'timeout', 'network')), 0)
                        as bad,
                    sum(total_ms) as total_ms
               from penguin.integration_metrics
              where minute >= date_trunc('minute', now() - make_interval(secs => $1))
              group by provider, minute
         )
         select provider, sum(calls)::bigint as calls, sum(ok)::bigint as succeeded,
                sum(bad)::bigint as provider_failures, sum(total_ms)::float8 as total_ms,
                max(minute) as last_call, count(*) as minutes,
                count(*) filter (where ok = 0 and bad > 0) as down_minutes
           from per_minute group by provider order by provider",
    )
    .bind(since.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let slots: Vec<(String, i64, i64)> = sqlx::query_as(
        "select m.provider, u.slot, sum(u.n)::bigint
           from penguin.integration_metrics m, unnest(m.buckets) with ordinality as u(n, slot)
          where m.minute >= date_trunc('minute', now() - make_interval(secs => $1))
          group by m.provider, u.slot",
    )
    .bind(since.as_secs_f64())
    .fetch_all(pool)
    .await?;
    for row in &mut rows {
        row.buckets = vec![0; LATENCY_SLOTS];
        for (_, slot, n) in slots.iter().filter(|(p, _, _)| *p == row.provider) {
            if let Some(b) = usize::try_from(*slot - 1)
                .ok()
                .and_then(|i| row.buckets.get_mut(i))
            {
                *b += n;
            }
        }
    }
    Ok(rows)
}

/// Deletes the minutes older than `older_than`; how many rows went.
pub async fn prune_metrics(pool: &PgPool, older_than: Duration) -> Result<u64, Error> {
    Ok(sqlx::query(
        "delete from penguin.integration_metrics where minute < now() - make_interval(secs => $1)",
    )
    .bind(older_than.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected())
}
