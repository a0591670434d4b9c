//! Cron schedules against a real PostgreSQL: exactly once across daemons, downtime
//! policies, pause, and pruning by retention.

mod support;

use std::process::{Child, Command};
use std::time::Duration;

use chrono::{DateTime, Utc};
use penguin_jobs::config::{MissedFires, ScheduleConfig};
use penguin_jobs::queue;
use penguin_jobs::scheduler::{self, Schedule};
use support::daemon::{config, count, register_kinds};

const BIN: &str = env!("CARGO_BIN_EXE_penguin-jobs");

fn per_second(name: &str, missed: MissedFires, max_catch_up: u32) -> Schedule {
    let cfg = ScheduleConfig {
        cron: "* * * * * *".into(),
        timezone: "UTC".into(),
        kind: "noop".into(),
        payload: serde_json::json!({"from": "schedule"}),
        queue: None,
        priority: None,
        missed,
        max_catch_up,
    };
    Schedule::parse(name, &cfg).unwrap()
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn keys(pool: &sqlx::PgPool, name: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select unique_key from penguin.jobs where unique_key like $1 order by unique_key",
    )
    .bind(format!("schedule:{name}:%"))
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Registers `s` and pretends it last fired at `last`.
async fn registered_at(pool: &sqlx::PgPool, s: &Schedule, last: &str) {
    scheduler::register(pool, std::slice::from_ref(s))
        .await
        .unwrap();
    sqlx::query("update penguin.schedules set last_fire_at = $2 where name = $1")
        .bind(&s.name)
        .bind(at(last))
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn after_downtime_skip_enqueues_only_the_current_fire() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let s = per_second("skip", MissedFires::Skip, 1);
    registered_at(&db.pool, &s, "2026-01-01T00:00:00Z").await;

    let ids = scheduler::fire_due(&db.pool, &s, at("2026-01-01T00:00:10.300Z"))
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        keys(&db.pool, "skip").await,
        vec!["schedule:skip:2026-01-01T00:00:10Z"]
    );
    // the same instant again, as a second daemon would see it: nothing more
    assert!(
        scheduler::fire_due(&db.pool, &s, at("2026-01-01T00:00:10.400Z"))
            .await
            .unwrap()
            .is_empty()
    );
    let row = &scheduler::list(&db.pool).await.unwrap()[0];
    assert_eq!(row.last_fire_at, Some(at("2026-01-01T00:00:10Z")));
    assert_eq!(row.next_fire_at, Some(at("2026-01-01T00:00:11Z")));
    assert_eq!(row.last_job_id, Some(ids[0]));
}

#[tokio::test]
async fn after_downtime_catch_up_enqueues_at_most_max_catch_up_missed_fires() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let s = per_second("catchup", MissedFires::CatchUp, 3);
    registered_at(&db.pool, &s, "2026-01-01T00:00:00Z").await;

    let ids = scheduler::fire_due(&db.pool, &s, at("2026-01-01T00:00:10.300Z"))
        .await
        .unwrap();
    assert_eq!(ids.len(), 4);
    assert_eq!(
        keys(&db.pool, "catchup").await,
        vec![
            "schedule:catchup:2026-01-01T00:00:07Z",
            "schedule:catchup:2026-01-01T00:00:08Z",
            "schedule:catchup:2026-01-01T00:00:09Z",
            "schedule:catchup:2026-01-01T00:00:10Z",
        ]
    );
}

#[tokio::test]
async fn a_paused_schedule_passes_its_fires_over_and_resumes_without_catching_up() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let s = per_second("paused", MissedFires::CatchUp, 5);
    registered_at(&db.pool, &s, "2026-01-01T00:00:00Z").await;
    scheduler::set_enabled(&db.pool, "paused", false)
        .await
        .unwrap();
    assert!(
        scheduler::fire_due(&db.pool, &s, at("2026-01-01T00:00:03.100Z"))
            .await
            .unwrap()
            .is_empty()
    );
    scheduler::set_enabled(&db.pool, "paused", true)
        .await
        .unwrap();
    scheduler::fire_due(&db.pool, &s, at("2026-01-01T00:00:04.100Z"))
        .await
        .unwrap();
    assert_eq!(
        keys(&db.pool, "paused").await,
        vec!["schedule:paused:2026-01-01T00:00:04Z"]
    );
    let err = scheduler::set_enabled(&db.pool, "nope", false)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "schedule \"nope\" not found");
}

fn spawn_daemon(dir: &std::path::Path, url: &str, log: &str) -> Child {
    support::daemon::spawn_daemon(&dir.join("jobs.toml"), url, &dir.join(log))
}

fn stop(child: &mut Child) {
    support::daemon::stop_daemon(child)
}

#[tokio::test]
async fn two_daemons_enqueue_each_tick_of_a_per_second_schedule_exactly_once() {
    let db = support::test_db().await;
    let dir = std::env::temp_dir().join(format!(
        "penguin-jobs-sched-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("jobs.toml"),
        "[daemon]\npoll_interval = \"100ms\"\n[maintenance]\nprune = false\n\
         [oauth]\nrefresh = false\n[api_keys]\nrotation = false\n\
         [schedules.tick]\ncron = \"* * * * * *\"\nkind = \"noop\"\n",
    )
    .unwrap();
    let migrate = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("jobs.toml"))
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let mut a = spawn_daemon(&dir, &db.url, "a.log");
    let mut b = spawn_daemon(&dir, &db.url, "b.log");
    tokio::time::sleep(Duration::from_millis(5500)).await;
    stop(&mut a);
    stop(&mut b);

    let keys = keys(&db.pool, "tick").await;
    let fires: Vec<DateTime<Utc>> = keys
        .iter()
        .map(|k| at(k.trim_start_matches("schedule:tick:")))
        .collect();
    assert!(fires.len() >= 4, "a fire per second: {keys:?}");
    // one job per tick, and no tick left out between the first and the last
    let span = (*fires.last().unwrap() - fires[0]).num_seconds() + 1;
    assert_eq!(span as usize, fires.len(), "{keys:?}");
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from penguin.jobs where kind = 'noop'"
        )
        .await as usize,
        fires.len()
    );

    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("jobs.toml"))
        .args(["schedules", "list", "--json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["name"], "tick");
    assert_eq!(
        rows[0]["last_fire_at"],
        serde_json::json!(fires.last().unwrap())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_schedules_stop_the_daemon_at_start_naming_the_schedule() {
    let db = support::test_db().await;
    let dir = std::env::temp_dir().join(format!(
        "penguin-jobs-sched-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (toml, expected) in [
        (
            "[schedules.refresh]\ncron = \"*/5 * * *\"\nkind = \"noop\"\n",
            "schedules.refresh.cron: invalid cron expression",
        ),
        (
            "[schedules.refresh]\ncron = \"* * * * *\"\ntimezone = \"Europe/Nowhere\"\nkind = \"noop\"\n",
            "schedules.refresh.timezone: unknown IANA time zone",
        ),
        (
            "[schedules.refresh]\ncron = \"* * * * *\"\nkind = \"oauth.refresh.sweep\"\n",
            "schedules.refresh: unknown job kind",
        ),
    ] {
        std::fs::write(dir.join("jobs.toml"), toml).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(dir.join("jobs.toml"))
            .arg("run")
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(expected), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn pruning_removes_exactly_what_the_retention_says() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    // 5 old completed, 2 old cancelled, 3 recent completed, 2 old but live, 1 old running
    sqlx::query(
        "insert into penguin.jobs (queue, kind, state, max_attempts, finished_at, leased_by, lease_expires_at)
         select 'default', 'noop', s, 3, f, l, case when l is null then null else now() end
           from (values ('completed', now() - interval '2 days', null),
                        ('completed', now() - interval '2 days', null),
                        ('completed', now() - interval '2 days', null),
                        ('completed', now() - interval '2 days', null),
                        ('completed', now() - interval '2 days', null),
                        ('cancelled', now() - interval '3 days', null),
                        ('cancelled', now() - interval '3 days', null),
                        ('completed', now() - interval '1 hour', null),
                        ('completed', now() - interval '1 hour', null),
                        ('completed', now() - interval '1 hour', null),
                        ('available', null, null),
                        ('retryable', null, null),
                        ('running', null, 'w')) as t(s, f, l)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("update penguin.jobs set created_at = now() - interval '5 days'")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into penguin.dead_letters (job_id, queue, kind, payload, priority, attempt, max_attempts, errors, created_at, reason, dead_at)
         select g, 'default', 'noop', '{}', 0, 1, 1, '[]', now(), 'permanent_error',
                case when g <= 4 then now() - interval '31 days' else now() - interval '29 days' end
           from generate_series(1, 6) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let day = Duration::from_secs(86_400);
    // dead letters kept forever ("0s"): only jobs go, in batches of 2
    let pruned = queue::prune(&db.pool, day, None, 2).await.unwrap();
    assert_eq!((pruned.jobs, pruned.dead_letters), (7, 0));
    let pruned = queue::prune(&db.pool, day, Some(30 * day), 2)
        .await
        .unwrap();
    assert_eq!((pruned.jobs, pruned.dead_letters), (0, 4));
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.jobs").await,
        6
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from penguin.jobs where state in ('available', 'retryable', 'running')"
        )
        .await,
        3
    );
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.dead_letters").await,
        2
    );
}

#[tokio::test]
async fn stored_webhooks_are_pruned_after_their_retention_and_what_came_from_them_stays() {
    let db = support::test_db().await;
    // 3 webhooks received 31 days ago (one of them behind an email event and a
    // suppression), 2 received yesterday
    sqlx::query(
        "insert into penguin.inbound_events (provider, event_id, raw, received_at)
         select 'mailgun', 'evt_' || g, 'raw',
                case when g <= 3 then now() - interval '31 days' else now() - interval '1 day' end
           from generate_series(1, 5) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into penguin.email_events (provider, event_type, status, recipient, occurred_at, inbound_event_id)
         select 'mailgun', 'failed', 'bounced', 'ada@example.com', now(), id
           from penguin.inbound_events where event_id = 'evt_1'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into penguin.suppressions (address, reason, provider, inbound_event_id)
         select 'ada@example.com', 'hard_bounce', 'mailgun', id
           from penguin.inbound_events where event_id = 'evt_1'",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let pruned = queue::prune_inbound_events(&db.pool, Duration::from_secs(30 * 86_400), 2)
        .await
        .unwrap();
    assert_eq!(pruned, 3);
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.inbound_events").await,
        2
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from penguin.suppressions where address = 'ada@example.com' and inbound_event_id is null"
        )
        .await,
        1,
        "the suppression stays"
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from penguin.email_events where inbound_event_id is null"
        )
        .await,
        1,
        "the email event stays"
    );
    // a retention shorter than providers' redelivery window is refused at start
    let short = penguin_jobs::config::Config::from_toml(
        "[retention]\ninbound_events = \"1d\"\n",
        std::path::Path::new("x"),
    )
    .unwrap();
    assert!(
        short
            .validate()
            .unwrap_err()
            .to_string()
            .contains("retention.inbound_events")
    );
}

#[tokio::test]
async fn a_restart_after_downtime_honours_skip_and_catch_up() {
    let db = support::test_db().await;
    let dir = std::env::temp_dir().join(format!(
        "penguin-jobs-sched-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("jobs.toml"),
        "[daemon]\npoll_interval = \"100ms\"\n[maintenance]\nprune = false\n\
         [schedules.skipper]\ncron = \"* * * * * *\"\nkind = \"noop\"\nmissed = \"skip\"\n\
         [schedules.catcher]\ncron = \"* * * * * *\"\nkind = \"noop\"\nmissed = \"catch_up\"\nmax_catch_up = 2\n",
    )
    .unwrap();
    let mut daemon = spawn_daemon(&dir, &db.url, "first.log");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop(&mut daemon);
    let before: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "select name, last_fire_at from penguin.schedules where name in ('skipper', 'catcher')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    // four seconds without a daemon
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut daemon = spawn_daemon(&dir, &db.url, "second.log");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop(&mut daemon);

    for (name, last_before) in before {
        // the restart's first pass enqueues its fires in one transaction: one created_at
        let first_pass: Vec<String> = sqlx::query_scalar(
            "select unique_key from penguin.jobs
              where unique_key like $1 and unique_key > $2
                and created_at = (select min(created_at) from penguin.jobs
                                   where unique_key like $1 and unique_key > $2)
              order by unique_key",
        )
        .bind(format!("schedule:{name}:%"))
        .bind(format!(
            "schedule:{name}:{}",
            last_before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let expected = if name == "catcher" { 3 } else { 1 };
        assert_eq!(first_pass.len(), expected, "{name}: {first_pass:?}");
        let first = at(first_pass[0].trim_start_matches(&format!("schedule:{name}:")));
        assert!(
            first - last_before >= chrono::Duration::seconds(2),
            "{name}: the missed fires before the catch-up window were not enqueued: {first_pass:?} after {last_before}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
