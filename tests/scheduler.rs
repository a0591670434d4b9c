//! Cron schedules against a real PostgreSQL: exactly once across daemons, downtime
//! policies, pause, and pruning by retention.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use penguin_jobs::config::{MissedFires, ScheduleConfig};
use penguin_jobs::queue;
use penguin_jobs::scheduler::{self, Schedule};
use support::app::TestApp;
use support::daemon::stop_daemon;

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
    .bind(format!("penguin:schedule:{name}:%"))
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
    let app = TestApp::new().await;
    let s = per_second("skip", MissedFires::Skip, 1);
    registered_at(&app.pool, &s, "2026-01-01T00:00:00Z").await;

    let ids = scheduler::fire_due(&app.pool, &s, at("2026-01-01T00:00:10.300Z"))
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        keys(&app.pool, "skip").await,
        vec!["penguin:schedule:skip:2026-01-01T00:00:10Z"]
    );
    // the same instant again, as a second daemon would see it: nothing more
    assert!(
        scheduler::fire_due(&app.pool, &s, at("2026-01-01T00:00:10.400Z"))
            .await
            .unwrap()
            .is_empty()
    );
    let row = &scheduler::list(&app.pool).await.unwrap()[0];
    assert_eq!(row.last_fire_at, Some(at("2026-01-01T00:00:10Z")));
    assert_eq!(row.next_fire_at, Some(at("2026-01-01T00:00:11Z")));
    assert_eq!(row.last_job_id, Some(ids[0]));
}

#[tokio::test]
async fn after_downtime_catch_up_enqueues_at_most_max_catch_up_missed_fires() {
    let app = TestApp::new().await;
    let s = per_second("catchup", MissedFires::CatchUp, 3);
    registered_at(&app.pool, &s, "2026-01-01T00:00:00Z").await;

    let ids = scheduler::fire_due(&app.pool, &s, at("2026-01-01T00:00:10.300Z"))
        .await
        .unwrap();
    assert_eq!(ids.len(), 4);
    assert_eq!(
        keys(&app.pool, "catchup").await,
        vec![
            "penguin:schedule:catchup:2026-01-01T00:00:07Z",
            "penguin:schedule:catchup:2026-01-01T00:00:08Z",
            "penguin:schedule:catchup:2026-01-01T00:00:09Z",
            "penguin:schedule:catchup:2026-01-01T00:00:10Z",
        ]
    );
}

#[tokio::test]
async fn a_paused_schedule_passes_its_fires_over_and_resumes_without_catching_up() {
    let app = TestApp::new().await;
    let s = per_second("paused", MissedFires::CatchUp, 5);
    registered_at(&app.pool, &s, "2026-01-01T00:00:00Z").await;
    scheduler::set_enabled(&app.pool, "paused", false)
        .await
        .unwrap();
    assert!(
        scheduler::fire_due(&app.pool, &s, at("2026-01-01T00:00:03.100Z"))
            .await
            .unwrap()
            .is_empty()
    );
    scheduler::set_enabled(&app.pool, "paused", true)
        .await
        .unwrap();
    scheduler::fire_due(&app.pool, &s, at("2026-01-01T00:00:04.100Z"))
        .await
        .unwrap();
    assert_eq!(
        keys(&app.pool, "paused").await,
        vec!["penguin:schedule:paused:2026-01-01T00:00:04Z"]
    );
    let err = scheduler::set_enabled(&app.pool, "nope", false)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "schedule \"nope\" not found");
}

#[tokio::test]
async fn two_daemons_enqueue_each_tick_of_a_per_second_schedule_exactly_once() {
    let app = TestApp::builder()
        .config(
            "[daemon]\npoll_interval = \"100ms\"\n[maintenance]\nprune = false\n\
             [oauth]\nrefresh = false\n[api_keys]\nrotation = false\n\
             [schedules.tick]\ncron = \"* * * * * *\"\nkind = \"noop\"\n",
        )
        .build()
        .await;
    let migrate = app.cli(&["migrate"]);
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let mut a = app.spawn_daemon("a.log");
    let mut b = app.spawn_daemon("b.log");
    // five ticks enqueued (what a 5.5 s window used to allow for)
    app.wait_for(
        "select count(*) >= 5 from penguin.jobs where unique_key like 'penguin:schedule:tick:%'",
        Duration::from_secs(30),
        "five ticks of the schedule",
    )
    .await;
    stop_daemon(&mut a);
    stop_daemon(&mut b);

    let keys = keys(&app.pool, "tick").await;
    let fires: Vec<DateTime<Utc>> = keys
        .iter()
        .map(|k| at(k.trim_start_matches("penguin:schedule:tick:")))
        .collect();
    assert!(fires.len() >= 4, "a fire per second: {keys:?}");
    // one job per tick, and no tick left out between the first and the last
    let span = (*fires.last().unwrap() - fires[0]).num_seconds() + 1;
    assert_eq!(span as usize, fires.len(), "{keys:?}");
    assert_eq!(
        app.count("select count(*) from penguin.jobs where kind = 'noop'")
            .await as usize,
        fires.len()
    );

    let out = app.cli(&["schedules", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["name"], "tick");
    assert_eq!(
        rows[0]["last_fire_at"],
        serde_json::json!(fires.last().unwrap())
    );
}

#[tokio::test]
async fn bad_schedules_stop_the_daemon_at_start_naming_the_schedule() {
    let app = TestApp::new().await;
    let bad = app.dir.path().join("bad.toml");
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
        std::fs::write(&bad, toml).unwrap();
        let out = support::daemon::cli(&bad, &app.url, &["run"], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[tokio::test]
async fn pruning_removes_exactly_what_the_retention_says() {
    let app = TestApp::new().await;
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
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("update penguin.jobs set created_at = now() - interval '5 days'")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into penguin.dead_letters (job_id, queue, kind, payload, priority, attempt, max_attempts, errors, created_at, reason, dead_at)
         select g, 'default', 'noop', '{}', 0, 1, 1, '[]', now(), 'permanent_error',
                case when g <= 4 then now() - interval '31 days' else now() - interval '29 days' end
           from generate_series(1, 6) g",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let day = Duration::from_secs(86_400);
    // dead letters kept forever ("0s"): only jobs go, in batches of 2
    let pruned = queue::prune(&app.pool, day, None, 2).await.unwrap();
    assert_eq!((pruned.jobs, pruned.dead_letters), (7, 0));
    let pruned = queue::prune(&app.pool, day, Some(30 * day), 2)
        .await
        .unwrap();
    assert_eq!((pruned.jobs, pruned.dead_letters), (0, 4));
    assert_eq!(app.count("select count(*) from penguin.jobs").await, 6);
    assert_eq!(
        app.count(
            "select count(*) from penguin.jobs where state in ('available', 'retryable', 'running')"
        )
        .await,
        3
    );
    assert_eq!(
        app.count("select count(*) from penguin.dead_letters").await,
        2
    );
}

#[tokio::test]
async fn stored_webhooks_are_pruned_after_their_retention_and_what_came_from_them_stays() {
    let app = TestApp::new().await;
    // 3 webhooks received 31 days ago (one of them behind an email event and a
    // suppression), 2 received yesterday
    sqlx::query(
        "insert into penguin.inbound_events (provider, event_id, raw, received_at)
         select 'mailgun', 'evt_' || g, 'raw',
                case when g <= 3 then now() - interval '31 days' else now() - interval '1 day' end
           from generate_series(1, 5) g",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into penguin.email_events (provider, event_type, status, recipient, occurred_at, inbound_event_id)
         select 'mailgun', 'failed', 'bounced', 'ada@example.com', now(), id
           from penguin.inbound_events where event_id = 'evt_1'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into penguin.suppressions (address, reason, provider, inbound_event_id)
         select 'ada@example.com', 'hard_bounce', 'mailgun', id
           from penguin.inbound_events where event_id = 'evt_1'",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let pruned = queue::prune_inbound_events(&app.pool, Duration::from_secs(30 * 86_400), 2)
        .await
        .unwrap();
    assert_eq!(pruned, 3);
    assert_eq!(
        app.count("select count(*) from penguin.inbound_events")
            .await,
        2
    );
    assert_eq!(
        app.count(
            "select count(*) from penguin.suppressions where address = 'ada@example.com' and inbound_event_id is null"
        )
        .await,
        1,
        "the suppression stays"
    );
    assert_eq!(
        app.count("select count(*) from penguin.email_events where inbound_event_id is null")
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
    let app = TestApp::builder()
        .config(
            "[daemon]\npoll_interval = \"100ms\"\n[maintenance]\nprune = false\n\
             [schedules.skipper]\ncron = \"* * * * * *\"\nkind = \"noop\"\nmissed = \"skip\"\n\
             [schedules.catcher]\ncron = \"* * * * * *\"\nkind = \"noop\"\nmissed = \"catch_up\"\nmax_catch_up = 2\n",
        )
        .build()
        .await;
    let mut daemon = app.spawn_daemon("first.log");
    app.wait_for(
        "select count(*) = 2 from penguin.schedules
          where name in ('skipper', 'catcher') and last_fire_at is not null",
        Duration::from_secs(30),
        "both schedules fired once",
    )
    .await;
    stop_daemon(&mut daemon);
    let before: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "select name, last_fire_at from penguin.schedules where name in ('skipper', 'catcher')",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    // four seconds without a daemon: not a wait on anything, the downtime under test
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut daemon = app.spawn_daemon("second.log");
    // the restart's first pass: for each schedule, a fire after its last before the downtime
    let first_pass_done = before
        .iter()
        .map(|(name, last_before)| {
            format!(
                "exists (select 1 from penguin.jobs where unique_key like 'penguin:schedule:{name}:%' and unique_key > '{}')",
                fire_key(name, *last_before)
            )
        })
        .collect::<Vec<_>>()
        .join(" and ");
    app.wait_for(
        &format!("select {first_pass_done}"),
        Duration::from_secs(30),
        "the restart's first pass of both schedules",
    )
    .await;
    stop_daemon(&mut daemon);

    for (name, last_before) in before {
        // the restart's first pass enqueues its fires in one transaction: one created_at
        let first_pass: Vec<String> = sqlx::query_scalar(
            "select unique_key from penguin.jobs
              where unique_key like $1 and unique_key > $2
                and created_at = (select min(created_at) from penguin.jobs
                                   where unique_key like $1 and unique_key > $2)
              order by unique_key",
        )
        .bind(format!("penguin:schedule:{name}:%"))
        .bind(fire_key(&name, last_before))
        .fetch_all(&app.pool)
        .await
        .unwrap();
        let expected = if name == "catcher" { 3 } else { 1 };
        assert_eq!(first_pass.len(), expected, "{name}: {first_pass:?}");
        let first = at(first_pass[0].trim_start_matches(&format!("penguin:schedule:{name}:")));
        assert!(
            first - last_before >= chrono::Duration::seconds(2),
            "{name}: the missed fires before the catch-up window were not enqueued: {first_pass:?} after {last_before}"
        );
    }
}

/// The unique key of schedule `name`'s fire at `at`.
fn fire_key(name: &str, at: DateTime<Utc>) -> String {
    format!(
        "penguin:schedule:{name}:{}",
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}
