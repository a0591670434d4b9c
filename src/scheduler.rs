//! Cron schedules: each fire becomes one ordinary job, enqueued once no matter how many
//! daemons run. A daemon fires a schedule by locking its `penguin.schedules` row,
//! enqueueing the fire's job (unique key `schedule:NAME:<fire time>`) and moving
//! `last_fire_at` in the same transaction; another daemon then finds nothing left to do.
//!
//! Fire times are computed by `croner` in the schedule's IANA time zone, so DST gaps and
//! overlaps follow Vixie cron (a fixed time in a gap runs right after it; in an overlap
//! it runs once). This module owns `penguin.schedules`; it must never run a job itself,
//! only enqueue through `queue/`.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, MissedFires, ScheduleConfig};
use crate::queue::{self, NewJob};

/// The name and kind of the built-in pruning schedule.
pub const PRUNE: &str = "maintenance.prune";

/// A fire this late (a daemon was down or stalled) counts as missed, and follows the
/// schedule's `missed` policy instead of running as the current fire.
pub const MISFIRE_GRACE: Duration = Duration::from_secs(5);

/// Most fires enumerated for one schedule in one pass (a per-second schedule after a long
/// downtime); past it, only the latest fires are looked up (backwards from now) and the
/// rest are counted as missed without being listed.
const MAX_FIRES_PER_PASS: usize = 100_000;

/// Scheduler errors; config errors name the schedule and key.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedules.{name}.cron: invalid cron expression {cron:?}: {message}")]
    BadCron {
        name: String,
        cron: String,
        message: String,
    },
    #[error("schedules.{name}.timezone: unknown IANA time zone {timezone:?}")]
    BadTimezone { name: String, timezone: String },
    #[error("schedule {0:?} not found")]
    NotFound(String),
    #[error(transparent)]
    Queue(#[from] queue::Error),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub cron_text: String,
    cron: Cron,
    pub timezone: Tz,
    /// The job each fire enqueues (its unique key is set per fire).
    pub job: NewJob,
    pub missed: MissedFires,
    pub max_catch_up: u32,
}

impl Schedule {
    /// Parses one `[schedules.NAME]` table.
    pub fn parse(name: &str, cfg: &ScheduleConfig) -> Result<Self, ScheduleError> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(cfg.cron.trim())
            .map_err(|e| ScheduleError::BadCron {
                name: name.into(),
                cron: cfg.cron.clone(),
                message: e.to_string(),
            })?;
        let timezone: Tz = cfg
            .timezone
            .parse()
            .map_err(|_| ScheduleError::BadTimezone {
                name: name.into(),
                timezone: cfg.timezone.clone(),
            })?;
        Ok(Self {
            name: name.into(),
            cron_text: cfg.cron.trim().into(),
            cron,
            timezone,
            job: NewJob {
                queue: cfg.queue.clone(),
                priority: cfg.priority,
                ..NewJob::new(cfg.kind.clone(), cfg.payload.clone())
            },
            missed: cfg.missed,
            max_catch_up: cfg.max_catch_up,
        })
    }

    /// The first fire strictly after `t`. Fires fall on whole seconds (croner keeps the
    /// sub-second part of its start time, so `t` is floored first).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let whole = t.with_nanosecond(0).unwrap_or(t);
        self.cron
            .find_next_occurrence(&whole.with_timezone(&self.timezone), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
            .and_then(|d| d.with_nanosecond(0))
    }

    /// The last fire strictly before `t`.
    fn previous_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let whole = t.with_nanosecond(0).unwrap_or(t);
        self.cron
            .find_previous_occurrence(&whole.with_timezone(&self.timezone), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
            .and_then(|d| d.with_nanosecond(0))
    }

    /// Fires in `(after, until]`: the latest `keep` of them, and how many there were (at
    /// least `MAX_FIRES_PER_PASS` when there were more).
    pub fn fires_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        keep: usize,
    ) -> (Vec<DateTime<Utc>>, usize) {
        let (latest, count, complete) = self.enumerate(after, until, keep, MAX_FIRES_PER_PASS);
        if complete {
            return (latest, count);
        }
        // Too many to walk: the latest `keep` lie after the (keep + 1)-th fire back from
        // `until`; enumerate forward from there, so DST is handled as everywhere else.
        let mut start = until;
        for _ in 0..=keep {
            match self.previous_before(start) {
                Some(p) if p > after => start = p,
                _ => {
                    start = after;
                    break;
                }
            }
        }
        let (latest, _, _) = self.enumerate(start, until, keep, keep + 2);
        (latest, count)
    }

    /// Walks fires in `(after, until]` forward, at most `limit` of them: the latest `keep`
    /// seen, how many were seen, and whether the walk reached `until`.
    fn enumerate(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        keep: usize,
        limit: usize,
    ) -> (Vec<DateTime<Utc>>, usize, bool) {
        let mut latest = VecDeque::with_capacity(keep + 1);
        let mut count = 0;
        let mut t = after;
        loop {
            match self.next_after(t) {
                Some(fire) if fire <= until => {
                    if count == limit {
                        return (latest.into(), count, false);
                    }
                    count += 1;
                    latest.push_back(fire);
                    if latest.len() > keep {
                        latest.pop_front();
                    }
                    t = fire;
                }
                _ => return (latest.into(), count, true),
            }
        }
    }

    /// The unique key of one fire's job.
    pub fn unique_key(&self, fire: DateTime<Utc>) -> String {
        format!(
            "{}schedule:{}:{}",
            crate::queue::RESERVED_KEY_PREFIX,
            self.name,
            fire.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    }
}

/// Every schedule of `config`, the built-in maintenance ones included.
pub fn from_config(config: &Config) -> Result<Vec<Schedule>, ScheduleError> {
    let mut schedules = Vec::new();
    if config.maintenance.prune {
        let prune = ScheduleConfig {
            cron: config.maintenance.prune_cron.clone(),
            timezone: "UTC".into(),
            kind: PRUNE.into(),
            payload: serde_json::json!({}),
            queue: None,
            priority: None,
            missed: MissedFires::Skip,
            max_catch_up: 1,
        };
        schedules.push(Schedule::parse(PRUNE, &prune).map_err(|e| match e {
            ScheduleError::BadCron { cron, message, .. } => ScheduleError::BadCron {
                name: "(maintenance.prune_cron)".into(),
                cron,
                message,
            },
            other => other,
        })?);
    }
    for (enabled, name, cron, kind, key) in [
        (
            config.oauth.refresh,
            OAUTH_REFRESH_SWEEP,
            &config.oauth.refresh_cron,
            "oauth.refresh_sweep",
            "(oauth.refresh_cron)",
        ),
        (
            config.api_keys.rotation,
            APIKEY_ROTATION,
            &config.api_keys.rotation_cron,
            "apikey.rotation_sweep",
            "(api_keys.rotation_cron)",
        ),
    ] {
        if enabled {
            schedules.push(builtin(name, cron, kind, key)?);
        }
    }
    if config.health.checks {
        for provider in config.providers.with_api_key() {
            let mut check = builtin(
                &format!("{HEALTH_CHECK_PREFIX}{provider}"),
                &config.health.check_cron,
                crate::kind_names::HEALTH_CHECK,
                "(health.check_cron)",
            )?;
            check.job.payload = serde_json::json!({ "provider": provider });
            schedules.push(check);
        }
    }
    for (name, cfg) in &config.schedules {
        schedules.push(Schedule::parse(name, cfg)?);
    }
    Ok(schedules)
}

/// The built-in schedules of `integration.health_check`, one per provider configured
/// with a key for outbound calls: `health-check-PROVIDER`.
pub const HEALTH_CHECK_PREFIX: &str = "health-check-";

/// The built-in schedule that enqueues `oauth.refresh` for connections about to expire.
pub const OAUTH_REFRESH_SWEEP: &str = "oauth-refresh-sweep";
/// The built-in schedule that enqueues `apikey.rotate` for keys that are due.
pub const APIKEY_ROTATION: &str = "apikey-rotation";

/// A built-in schedule (UTC, missed fires skipped); a bad cron names its config key.
fn builtin(name: &str, cron: &str, kind: &str, key: &str) -> Result<Schedule, ScheduleError> {
    let cfg = ScheduleConfig {
        cron: cron.into(),
        timezone: "UTC".into(),
        kind: kind.into(),
        payload: serde_json::json!({}),
        queue: None,
        priority: None,
        missed: MissedFires::Skip,
        max_catch_up: 1,
    };
    Schedule::parse(name, &cfg).map_err(|e| match e {
        ScheduleError::BadCron { cron, message, .. } => ScheduleError::BadCron {
            name: key.into(),
            cron,
            message,
        },
        other => other,
    })
}

/// Which fires to enqueue, given the fires due since the last pass (oldest first, the
/// latest `max_catch_up + 1` at most) and the policy: a fire within [`MISFIRE_GRACE`] of
/// `now` is the current one and always runs; earlier ones were missed.
pub fn plan(
    fires: &[DateTime<Utc>],
    now: DateTime<Utc>,
    missed: MissedFires,
    max_catch_up: u32,
) -> Vec<DateTime<Utc>> {
    let grace = chrono::Duration::from_std(MISFIRE_GRACE).unwrap_or_default();
    let (missed_fires, current) = match fires.split_last() {
        Some((last, rest)) if now - *last <= grace => (rest, Some(*last)),
        _ => (fires, None),
    };
    let mut out = Vec::new();
    if missed == MissedFires::CatchUp {
        let skip = missed_fires.len().saturating_sub(max_catch_up as usize);
        out.extend_from_slice(&missed_fires[skip..]);
    }
    out.extend(current);
    out
}

/// Writes (or updates) every schedule's row; rows of schedules no longer configured stay
/// for `schedules list` and fire no more.
pub async fn register(pool: &PgPool, schedules: &[Schedule]) -> Result<(), ScheduleError> {
    for s in schedules {
        sqlx::query(
            "insert into penguin.schedules (name, cron, timezone, kind, next_fire_at)
             values ($1, $2, $3, $4, $5)
             on conflict (name) do update
                set cron = excluded.cron, timezone = excluded.timezone, kind = excluded.kind,
                    next_fire_at = excluded.next_fire_at, updated_at = now()",
        )
        .bind(&s.name)
        .bind(&s.cron_text)
        .bind(s.timezone.name())
        .bind(&s.job.kind)
        .bind(s.next_after(Utc::now()))
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Fires `schedule` for everything due up to `now`, once across all daemons: returns the
/// ids of the jobs this call enqueued.
pub async fn fire_due(
    pool: &PgPool,
    schedule: &Schedule,
    now: DateTime<Utc>,
) -> Result<Vec<i64>, ScheduleError> {
    let mut tx = pool.begin().await?;
    let row: Option<(bool, Option<DateTime<Utc>>, DateTime<Utc>)> = sqlx::query_as(
        "select enabled, last_fire_at, created_at from penguin.schedules where name = $1 for update",
    )
    .bind(&schedule.name)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((enabled, last_fire, created)) = row else {
        return Err(ScheduleError::NotFound(schedule.name.clone()));
    };
    let since = last_fire.unwrap_or(created);
    let keep = schedule.max_catch_up as usize + 1;
    let (fires, count) = schedule.fires_between(since, now, keep);
    let Some(latest) = fires.last().copied() else {
        return Ok(Vec::new());
    };
    let mut ids = Vec::new();
    if enabled {
        let to_run = plan(&fires, now, schedule.missed, schedule.max_catch_up);
        let dropped = count - to_run.len();
        if dropped > 0 {
            tracing::warn!(
                schedule = %schedule.name, missed = dropped, policy = ?schedule.missed,
                "schedule missed fires while no daemon ran them; not enqueued"
            );
        }
        for fire in to_run {
            let job = NewJob {
                unique_key: Some(schedule.unique_key(fire)),
                ..schedule.job.clone()
            };
            ids.push(queue::enqueue(&mut *tx, &job).await?);
        }
    }
    sqlx::query(
        "update penguin.schedules
            set last_fire_at = $2, next_fire_at = $3, last_job_id = coalesce($4, last_job_id),
                updated_at = now()
          where name = $1",
    )
    .bind(&schedule.name)
    .bind(latest)
    .bind(schedule.next_after(now))
    .bind(ids.last().copied())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if !ids.is_empty() {
        tracing::debug!(schedule = %schedule.name, jobs = ?ids, "schedule fired");
    }
    Ok(ids)
}

/// Runs the schedules until `shutdown`: sleeps until the earliest next fire, then fires
/// what is due. A failed pass is logged and retried at the next wake-up.
pub async fn run(pool: PgPool, schedules: Vec<Schedule>, shutdown: CancellationToken) {
    if schedules.is_empty() {
        return;
    }
    if let Err(e) = register(&pool, &schedules).await {
        tracing::error!(error = %e, "could not register schedules; retrying at the next pass");
    }
    // the first pass fires what came due while no daemon ran (per the `missed` policy)
    let mut next: Vec<Option<DateTime<Utc>>> = vec![Some(Utc::now()); schedules.len()];
    let mut registered = true;
    loop {
        let now = Utc::now();
        if !registered {
            registered = register(&pool, &schedules).await.is_ok();
        }
        for (schedule, next_fire) in schedules.iter().zip(next.iter_mut()) {
            if next_fire.is_some_and(|t| t <= now) {
                match fire_due(&pool, schedule, now).await {
                    Ok(_) => *next_fire = schedule.next_after(now),
                    Err(e) => {
                        tracing::warn!(schedule = %schedule.name, error = %e, "schedule pass failed");
                        registered = false;
                        *next_fire = Some(now + chrono::Duration::seconds(1));
                    }
                }
            }
        }
        let wake = next.iter().flatten().min().copied();
        let pause = wake
            .and_then(|w| (w - Utc::now()).to_std().ok())
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(60))
            + Duration::from_millis(2);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One row of `schedules list`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ScheduleRow {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub kind: String,
    pub enabled: bool,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub last_fire_at: Option<DateTime<Utc>>,
    pub last_job_id: Option<i64>,
}

/// Every schedule row, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<ScheduleRow>, ScheduleError> {
    Ok(sqlx::query_as(
        "select name, cron, timezone, kind, enabled, next_fire_at, last_fire_at, last_job_id
           from penguin.schedules order by name",
    )
    .fetch_all(pool)
    .await?)
}

/// Pauses (`false`) or resumes (`true`) a schedule. Fires that come due while paused are
/// passed over, not caught up on resume.
pub async fn set_enabled(pool: &PgPool, name: &str, enabled: bool) -> Result<(), ScheduleError> {
    let done = sqlx::query(
        "update penguin.schedules set enabled = $2, updated_at = now() where name = $1",
    )
    .bind(name)
    .bind(enabled)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ScheduleError::NotFound(name.into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn schedule(cron: &str, tz: &str) -> Schedule {
        let cfg = ScheduleConfig {
            cron: cron.into(),
            timezone: tz.into(),
            ..schedule_cfg()
        };
        Schedule::parse("test", &cfg).unwrap()
    }

    fn fires(s: &Schedule, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        s.fires_between(at(from), at(to), 1000).0
    }

    #[test]
    fn health_checks_are_scheduled_for_providers_that_call_out_only() {
        let config = crate::config::Config::from_toml(
            "[providers.mailgun]\napi_key = \"env:MG\"\ndomain = \"mg.example.com\"\n\
             [providers.stripe]\nwebhook_secret = \"env:WHSEC\"\n\
             [providers.sendgrid]\nwebhook_public_key = \"env:SGPUB\"\n",
            std::path::Path::new("x.toml"),
        )
        .unwrap();
        let names: Vec<String> = from_config(&config)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .filter(|n| n.starts_with(HEALTH_CHECK_PREFIX))
            .collect();
        assert_eq!(names, ["health-check-mailgun"]);
    }

    #[test]
    fn a_fixed_time_in_the_spring_gap_runs_right_after_it_once() {
        // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist
        let s = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            fires(&s, "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z"),
            vec![
                at("2026-03-28T01:30:00Z"), // 02:30 CET
                at("2026-03-29T01:00:00Z"), // 03:00 CEST, right after the gap
                at("2026-03-30T00:30:00Z"), // 02:30 CEST
            ]
        );
    }

    #[test]
    fn a_fixed_time_in_the_autumn_overlap_runs_once() {
        // Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice
        let s = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            fires(&s, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
            vec![
                at("2026-10-25T00:30:00Z"), // the first 02:30 (CEST)
                at("2026-10-26T01:30:00Z"), // 02:30 CET
            ]
        );
    }

    #[test]
    fn an_hourly_schedule_keeps_real_hours_across_dst() {
        let s = schedule("0 * * * *", "America/New_York");
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT
        let spring = fires(&s, "2026-03-08T05:30:00Z", "2026-03-08T08:30:00Z");
        assert_eq!(
            spring,
            vec![
                at("2026-03-08T06:00:00Z"),
                at("2026-03-08T07:00:00Z"),
                at("2026-03-08T08:00:00Z")
            ]
        );
    }

    #[test]
    fn seconds_are_optional_and_bad_expressions_name_the_schedule() {
        let s = schedule("*/15 * * * * *", "UTC");
        assert_eq!(
            fires(&s, "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z").len(),
            4
        );
        let cfg = ScheduleConfig {
            cron: "61 * * * *".into(),
            ..schedule_cfg()
        };
        let err = Schedule::parse("oauth-refresh", &cfg)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("schedules.oauth-refresh.cron: invalid cron expression"),
            "{err}"
        );
        let cfg = ScheduleConfig {
            timezone: "Mars/Olympus".into(),
            ..schedule_cfg()
        };
        let err = Schedule::parse("x", &cfg).unwrap_err().to_string();
        assert_eq!(
            err,
            "schedules.x.timezone: unknown IANA time zone \"Mars/Olympus\""
        );
    }

    fn schedule_cfg() -> ScheduleConfig {
        ScheduleConfig {
            cron: "* * * * *".into(),
            timezone: "UTC".into(),
            kind: "noop".into(),
            payload: serde_json::json!({}),
            queue: None,
            priority: None,
            missed: MissedFires::Skip,
            max_catch_up: 1,
        }
    }

    #[test]
    fn plan_runs_the_current_fire_and_catches_up_as_configured() {
        let now = at("2026-01-01T00:00:10.300Z");
        let fires: Vec<_> = (5..=10)
            .map(|s| at(&format!("2026-01-01T00:00:{s:02}Z")))
            .collect();
        // on time: only the current fire, whatever the policy
        assert_eq!(plan(&fires[5..], now, MissedFires::Skip, 1), vec![fires[5]]);
        // after downtime
        assert_eq!(plan(&fires, now, MissedFires::Skip, 3), vec![fires[5]]);
        assert_eq!(
            plan(&fires, now, MissedFires::CatchUp, 2),
            vec![fires[3], fires[4], fires[5]]
        );
        // everything late (the daemon was down at the last fire too)
        let later = at("2026-01-01T01:00:00Z");
        assert!(plan(&fires, later, MissedFires::Skip, 1).is_empty());
        assert_eq!(plan(&fires, later, MissedFires::CatchUp, 1), vec![fires[5]]);
    }

    #[test]
    fn catch_up_after_a_downtime_longer_than_one_pass_takes_the_latest_fires() {
        // a per-second schedule down for two days: 172,800 missed fires, more than one pass
        // enumerates; the fires kept (and so enqueued by catch_up) are the latest, not the
        // oldest of the first 100,000
        let s = schedule("* * * * * *", "UTC");
        let after = at("2026-01-01T00:00:00Z");
        let until = at("2026-01-03T00:00:00.400Z");
        let (fires, count) = s.fires_between(after, until, 4);
        assert_eq!(
            fires,
            vec![
                at("2026-01-02T23:59:57Z"),
                at("2026-01-02T23:59:58Z"),
                at("2026-01-02T23:59:59Z"),
                at("2026-01-03T00:00:00Z"),
            ]
        );
        assert!(count >= MAX_FIRES_PER_PASS, "{count}");
        assert_eq!(
            plan(&fires, until, MissedFires::CatchUp, 3),
            fires,
            "the current fire and the latest 3 missed ones"
        );
        // across a DST change the latest fires are the ones a forward walk would give
        let s = schedule("*/2 * * * * *", "Europe/Berlin");
        let until = at("2026-03-29T01:00:01Z"); // 03:00:01 CEST, right after the gap
        let (fires, _) = s.fires_between(at("2026-03-25T00:00:00Z"), until, 2);
        assert_eq!(
            fires,
            vec![at("2026-03-29T00:59:58Z"), at("2026-03-29T01:00:00Z")]
        );
    }

    #[test]
    fn pruning_is_scheduled_by_default_and_can_be_turned_off() {
        let config = Config::from_toml("", std::path::Path::new("x")).unwrap();
        let names: Vec<_> = from_config(&config)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, vec![PRUNE, OAUTH_REFRESH_SWEEP, APIKEY_ROTATION]);
        let config = Config::from_toml(
            "[maintenance]\nprune = false\n[oauth]\nrefresh = false\n[api_keys]\nrotation = false\n",
            std::path::Path::new("x"),
        )
        .unwrap();
        assert!(from_config(&config).unwrap().is_empty());
    }

    #[test]
    fn the_example_jobs_toml_is_a_working_config() {
        let config = Config::from_toml(
            include_str!("../jobs.toml"),
            std::path::Path::new("jobs.toml"),
        )
        .unwrap();
        config.validate().unwrap();
        let registry = crate::jobs::Kinds::builtin(&config).unwrap();
        let schedules = from_config(&config).unwrap();
        assert!(schedules.len() >= 2, "the prune schedule and the example");
        for s in &schedules {
            registry.check(&s.job).unwrap();
        }
    }

    #[test]
    fn unique_keys_name_the_schedule_and_the_fire() {
        let s = schedule("* * * * *", "UTC");
        assert_eq!(
            s.unique_key(at("2026-11-26T10:00:00Z")),
            "penguin:schedule:test:2026-11-26T10:00:00Z"
        );
    }
}
