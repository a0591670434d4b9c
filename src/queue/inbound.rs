//! Stores verified inbound webhook events and enqueues their processing jobs: one
//! multi-row statement for a whole group-commit batch, on the caller's transaction.
//!
//! An event id already stored (a redelivery) gets no second row and no second job. Must
//! never store an event without its job (unless the edge's filters dropped it): both are
//! written by the same statement.

use sqlx::PgConnection;

use super::Error;

/// One verified event to store.
#[derive(Debug, Clone)]
pub struct NewInboundEvent {
    pub provider: &'static str,
    pub event_id: String,
    pub event_type: Option<String>,
    /// The headers that matter (signature, timestamp), as a JSON object.
    pub headers: serde_json::Value,
    /// The event itself, when `raw` is not exactly it (an element of a batch); `None`
    /// when `raw` is the event (readers parse `raw`).
    pub payload: Option<serde_json::Value>,
    /// The request body exactly as received; for one element of a batch (SendGrid), that
    /// element's own bytes of the body.
    pub raw: Vec<u8>,
    /// The kind of its processing job; `None` when a filter dropped it.
    pub job_kind: Option<&'static str>,
}

/// A token a provider signs with each delivery and must never sign twice (Mailgun's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplayToken {
    pub provider: &'static str,
    pub token: String,
}

/// Records `tokens` in `penguin.webhook_replay_tokens`, on the caller's transaction (the
/// one that stores the deliveries' events, so a rolled-back delivery leaves no token
/// behind); returns those that were new. A token recorded by a transaction still open
/// elsewhere waits for it, so two shims cannot both take one token.
pub async fn remember_replay_tokens(
    conn: &mut PgConnection,
    tokens: &[&ReplayToken],
) -> Result<std::collections::HashSet<ReplayToken>, Error> {
    if tokens.is_empty() {
        return Ok(Default::default());
    }
    let providers: Vec<&str> = tokens.iter().map(|t| t.provider).collect();
    let values: Vec<&str> = tokens.iter().map(|t| t.token.as_str()).collect();
    let fresh: Vec<(String, String)> = sqlx::query_as(
        "insert into penguin.webhook_replay_tokens (provider, token)
         select * from unnest($1::text[], $2::text[])
         on conflict (provider, token) do nothing
         returning provider, token",
    )
    .bind(&providers)
    .bind(&values)
    .fetch_all(&mut *conn)
    .await?;
    Ok(tokens
        .iter()
        .filter(|t| fresh.iter().any(|(p, v)| p == t.provider && *v == t.token))
        .map(|t| (*t).clone())
        .collect())
}

/// Stores `events` and enqueues their jobs in one statement (filtered events, stored
/// without a job, are counted in `penguin.webhook_counters`). Returns, in input order,
/// the new row's id, or `None` for an event id that was already stored.
pub async fn store_inbound(
    conn: &mut PgConnection,
    events: &[NewInboundEvent],
) -> Result<Vec<Option<i64>>, Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let providers: Vec<&str> = events.iter().map(|e| e.provider).collect();
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let types: Vec<Option<&str>> = events.iter().map(|e| e.event_type.as_deref()).collect();
    let headers: Vec<&serde_json::Value> = events.iter().map(|e| &e.headers).collect();
    let payloads: Vec<Option<&serde_json::Value>> =
        events.iter().map(|e| e.payload.as_ref()).collect();
    let raws: Vec<&[u8]> = events.iter().map(|e| e.raw.as_slice()).collect();
    let kinds: Vec<Option<&str>> = events.iter().map(|e| e.job_kind).collect();
    let rows: Vec<(i64, Option<i64>)> = sqlx::query_as(
        "with input as materialized (
             select * from unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[],
                                  $6::bytea[], $7::text[])
                  with ordinality as t(provider, event_id, event_type, headers, payload, raw, job_kind, ord)
         ),
         first as materialized (
             select distinct on (provider, event_id) * from input order by provider, event_id, ord
         ),
         stored as (
             insert into penguin.inbound_events (provider, event_id, event_type, headers, payload, raw)
             select provider, event_id, event_type, headers, payload, raw from first order by ord
             on conflict (provider, event_id) do nothing
             returning id, provider, event_id
         ),
         jobs as (
             insert into penguin.jobs (queue, kind, payload, state, priority, max_attempts)
             select k.queue,
                    case when k.kind is null then penguin.unknown_kind(f.job_kind) else k.kind end,
                    jsonb_build_object('inbound_event_id', s.id), 'available', k.priority, k.max_attempts
               from stored s
               join first f on f.provider = s.provider and f.event_id = s.event_id
               left join penguin.kinds k on k.kind = f.job_kind
              where f.job_kind is not null
             returning id
         ),
         filtered as (
             insert into penguin.webhook_counters (provider, reason, count)
             select s.provider, 'filtered', count(*)
               from stored s
               join first f on f.provider = s.provider and f.event_id = s.event_id
              where f.job_kind is null
              group by s.provider
             on conflict (provider, reason)
                 do update set count = penguin.webhook_counters.count + excluded.count, updated_at = now()
         )
         select i.ord, s.id
           from input i left join stored s on s.provider = i.provider and s.event_id = i.event_id
          order by i.ord",
    )
    .bind(&providers)
    .bind(&ids)
    .bind(&types)
    .bind(&headers)
    .bind(&payloads)
    .bind(&raws)
    .bind(&kinds)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(_, id)| id).collect())
}
