//! The alert evaluator: every `[alerts] check_interval`, each daemon with workers judges
//! the conditions operators must hear about, opens an alert for each new one (at most one
//! unresolved alert per condition across every daemon: `penguin.alerts`' unique index),
//! resolves those that cleared (and those jobs raised whose cause is gone: a connection
//! authorised again, a key activated), and enqueues the notifications of alerts opened or
//! cleared (its own and those jobs raised: reauthorisation, key tests) as ordinary jobs,
//! one per `[alerts.notify.NAME]` target: `http.request` for a webhook, `mailgun.send` /
//! `sendgrid.send` for an email. A target that is down retries as any job; detection
//! never waits for it.
//!
//! Conditions: `error_rate`, `response_time`, `connectivity` (circuit open),
//! `credentials_refused` (401/403) and `quota_exceeded` per integration (over `[health]
//! window`); `dead_letters_growing`; `queue_stalled` per queue (its oldest due job, of any
//! priority, due for longer than `queue_stalled_after`, or jobs no live daemon serves).
//! Paused queues are not stalled.
//!
//! Each pass also samples every queue's depth into `penguin.queue_minutes`, once a minute
//! across daemons (the dashboard's history).
//!
//! Must never fail the daemon: an evaluation that cannot read or write is logged and
//! tried again at the next interval.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::{AlertsConfig, Config, HealthConfig, NotifyTarget};
use crate::credentials::{self, ConditionAlert, Unnotified};
use crate::health;
use crate::queue::{self, NewJob};
use crate::readiness::Readiness;

/// Notifications enqueued per transaction.
const NOTIFY_BATCH: i64 = 100;

/// What the evaluator needs from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub alerts: AlertsConfig,
    pub health: HealthConfig,
    /// How recently a daemon must have been seen to count as serving its queues.
    pub liveness: Duration,
}

impl Settings {
    /// From the config; `liveness` as the runtime's.
    pub fn from_config(config: &Config) -> Self {
        Self {
            alerts: config.alerts.clone(),
            health: config.health.clone(),
            liveness: queue::daemons::liveness_window(config.daemon.rescue_interval),
        }
    }
}

/// Evaluates every `check_interval` until `stop`, from the moment this daemon's pools
/// have started (`ready`): before, its own queues would look unserved.
pub async fn run(pool: PgPool, settings: Settings, ready: Readiness, stop: CancellationToken) {
    tokio::select! {
        () = ready.wait_started() => {}
        () = stop.cancelled() => return,
    }
    let mut failures = 0u32;
    loop {
        match evaluate(&pool, &settings).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                // one line per outage, not one per interval
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "could not evaluate alerts; trying again");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(settings.alerts.check_interval) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One evaluation: open, resolve, notify.
pub async fn evaluate(pool: &PgPool, settings: &Settings) -> Result<(), queue::Error> {
    // the dashboard's depth history: once a minute across daemons
    queue::sample_depths(pool).await?;
    let active = conditions(pool, settings).await?;
    let opened = credentials::open_conditions(pool, &active).await?;
    let keys: Vec<String> = active.iter().map(|a| a.condition.clone()).collect();
    let mut resolved =
        credentials::resolve_conditions(pool, &keys, settings.alerts.clear_after).await?;
    resolved.extend(credentials::resolve_raised_alerts(pool).await?);
    if !opened.is_empty() || !resolved.is_empty() {
        tracing::info!(
            opened = opened.len(),
            resolved = resolved.len(),
            "alerts changed"
        );
    }
    notify(pool, &settings.alerts).await
}

/// The conditions that hold now.
pub async fn conditions(
    pool: &PgPool,
    settings: &Settings,
) -> Result<Vec<ConditionAlert>, queue::Error> {
    let a = &settings.alerts;
    let h = &settings.health;
    let mut out = Vec::new();
    let window = queue::integrations::provider_calls(pool, h.window).await?;
    let rows = queue::integrations::list_integrations(pool).await?;
    let mut providers: Vec<&str> = window.iter().map(|w| w.provider.as_str()).collect();
    providers.extend(rows.iter().map(|r| r.provider.as_str()));
    providers.sort_unstable();
    providers.dedup();
    let minutes = (h.window.as_secs() / 60).max(1);
    for provider in providers {
        let w = window.iter().find(|w| w.provider == provider);
        let row = rows.iter().find(|r| r.provider == provider);
        let judged = health::assess(provider, w, None, row, 0, h);
        let condition =
            |kind: &'static str, severity: &'static str, message: String| ConditionAlert {
                condition: format!("{kind}:{provider}"),
                kind,
                severity,
                subject_type: "integration",
                subject_id: Some(provider.to_string()),
                provider: Some(provider.to_string()),
                message,
            };
        if let Some(w) = w.filter(|w| w.calls >= h.min_calls) {
            let rate = w.provider_failures as f64 / w.calls as f64;
            if rate >= a.error_rate {
                out.push(condition(
                    "error_rate",
                    "high",
                    format!(
                        "{provider}: {:.0}% of {} calls failed on the provider's side in the last {minutes} min",
                        rate * 100.0,
                        w.calls
                    ),
                ));
            }
            if let Some(p95) = queue::integrations::latency_quantile(&w.buckets, 0.95)
                && p95 >= a.response_time.as_secs_f64() * 1000.0
            {
                out.push(condition(
                    "response_time",
                    "medium",
                    format!("{provider}: p95 latency {p95:.0} ms in the last {minutes} min"),
                ));
            }
        }
        if judged.circuit == "open" {
            out.push(condition(
                "connectivity",
                "high",
                format!("{provider}: circuit open, calls are held back until a probe succeeds"),
            ));
        }
        if judged.credentials_refused {
            out.push(condition(
                "credentials_refused",
                "critical",
                format!("{provider}: the provider refuses our credentials (401/403)"),
            ));
        }
        if let Some(r) = row
            && r.last_error_class.as_deref() == Some("quota")
            && r.last_error_at.is_some_and(|at| {
                Utc::now() - at < chrono::Duration::from_std(h.window).unwrap_or_default()
            })
        {
            out.push(condition(
                "quota_exceeded",
                "medium",
                format!("{provider}: the provider reports a quota exceeded"),
            ));
        }
    }
    let dead = queue::dead_lettered_since(pool, a.dead_letters_window).await?;
    if dead >= a.dead_letters {
        out.push(ConditionAlert {
            condition: "dead_letters_growing".into(),
            kind: "dead_letters_growing",
            severity: "high",
            subject_type: "dead_letters",
            subject_id: None,
            provider: None,
            message: format!(
                "{dead} jobs dead-lettered in the last {} min",
                a.dead_letters_window.as_secs() / 60
            ),
        });
    }
    let paused: Vec<String> = queue::paused_queues(pool)
        .await?
        .into_iter()
        .map(|p| p.queue)
        .collect();
    let unserved = queue::unserved_queues(pool, settings.liveness).await?;
    let stalled = |q: &str, message: String| ConditionAlert {
        condition: format!("queue_stalled:{q}"),
        kind: "queue_stalled",
        severity: "high",
        subject_type: "queue",
        subject_id: Some(q.to_string()),
        provider: None,
        message,
    };
    for u in unserved
        .iter()
        .filter(|u| u.has_jobs && !paused.contains(&u.queue))
    {
        out.push(stalled(
            &u.queue,
            format!(
                "queue {}: holds jobs, and no running daemon has a pool for it",
                u.queue
            ),
        ));
    }
    for head in queue::oldest_due_per_queue(pool).await? {
        let Some(due) = head.due_since else { continue };
        let waited = (Utc::now() - due).to_std().unwrap_or_default();
        if waited >= a.queue_stalled_after
            && !paused.contains(&head.queue)
            && !out
                .iter()
                .any(|c| c.condition == format!("queue_stalled:{}", head.queue))
        {
            out.push(stalled(
                &head.queue,
                format!(
                    "queue {}: its oldest due job has waited {} min",
                    head.queue,
                    waited.as_secs() / 60
                ),
            ));
        }
    }
    Ok(out)
}

/// Enqueues the notifications of alerts opened or cleared and not notified yet, in
/// batches: each batch's jobs and its marks commit together.
pub async fn notify(pool: &PgPool, alerts: &AlertsConfig) -> Result<(), queue::Error> {
    loop {
        let mut tx = pool.begin().await?;
        let pending = credentials::claim_unnotified(&mut tx, NOTIFY_BATCH).await?;
        for p in &pending {
            for (name, target) in &alerts.notify {
                queue::enqueue(&mut *tx, &notification(p, name, target)).await?;
            }
            credentials::mark_notified(&mut tx, p.alert.id).await?;
        }
        tx.commit().await?;
        if (pending.len() as i64) < NOTIFY_BATCH {
            return Ok(());
        }
    }
}

/// The job that tells `target` about `p`.
pub fn notification(p: &Unnotified, target_name: &str, target: &NotifyTarget) -> NewJob {
    let a = &p.alert;
    let event = if p.cleared {
        "cleared"
    } else if a.resolved_at.is_some() {
        "opened and cleared"
    } else {
        "opened"
    };
    let text = format!(
        "[penguin-jobs] {} {} {}: {}",
        a.severity.to_uppercase(),
        a.kind,
        event,
        a.message
    );
    let key = queue::reserved_key(format!(
        "alert:{}:{}:{target_name}",
        a.id,
        if p.cleared { "cleared" } else { "opened" }
    ));
    let job = match target {
        NotifyTarget::Webhook { url } => NewJob::new(
            "http.request",
            json!({
                "method": "POST",
                "url": url,
                "body": {
                    "text": text,
                    "alert": {
                        "id": a.id, "kind": a.kind, "severity": a.severity,
                        "event": event, "message": a.message, "provider": a.provider,
                        "subject_type": a.subject_type, "subject_id": a.subject_id,
                        "at": a.at, "resolved_at": a.resolved_at,
                    }
                }
            }),
        ),
        NotifyTarget::Email { provider, from, to } => NewJob::new(
            format!("{provider}.send"),
            json!({
                "from": from,
                "to": to,
                "subject": text,
                "text": format!("{text}\n\nalert {} at {}\n", a.id, a.at.to_rfc3339()),
            }),
        ),
    };
    NewJob {
        unique_key: Some(key),
        ..job
    }
}
