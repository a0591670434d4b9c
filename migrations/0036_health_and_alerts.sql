-- Integration health and alerts (issue 17).
--
-- integration_metrics keeps per-minute rollups; `buckets` adds each minute's latency
-- histogram (counts per bound of queue::integrations::LATENCY_BUCKETS_MS, the last one
-- unbounded), so a p95 over any window is the sum of its minutes' arrays. Rows written
-- before have none. Pruned by maintenance.prune after [retention] metrics (30 days).
alter table penguin.integration_metrics add column buckets bigint[];
create index integration_metrics_provider_minute_idx
    on penguin.integration_metrics (provider, minute);

-- Alerts: how bad, and when the condition cleared (set by the daemons' evaluator;
-- acknowledging is an operator's act, apart). `condition` names what an evaluated alert is
-- about (`error_rate:mailgun`, `queue_stalled:email`): at most one unresolved alert per
-- condition, however many daemons evaluate at once.
alter table penguin.alerts add column severity text not null default 'medium'
    check (severity in ('low', 'medium', 'high', 'critical'));
alter table penguin.alerts add column resolved_at timestamptz;
alter table penguin.alerts add column condition text;
create unique index alerts_unresolved_condition_idx on penguin.alerts (condition)
    where resolved_at is null and condition is not null;

-- Notifications ([alerts.notify]) are enqueued once per alert opening and once per
-- clearing, by whichever daemon gets to the row first (for update skip locked); alerts
-- raised before this migration count as notified.
alter table penguin.alerts add column notified_at timestamptz;
alter table penguin.alerts add column resolve_notified_at timestamptz;
update penguin.alerts set notified_at = at, resolve_notified_at = coalesce(resolved_at, at);
create index alerts_to_notify_idx on penguin.alerts (id)
    where notified_at is null or (resolved_at is not null and resolve_notified_at is null);
