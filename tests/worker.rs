//! The worker runtime in-process against a real PostgreSQL and a local HTTP server that
//! plays the provider: draining, wake-ups, retries, dead letters, leases, rescue, shutdown.

mod support;

use std::time::Duration;

use penguin_jobs::queue::{self, JobState, NewJob};
use serde_json::json;
use support::app::TestApp;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The local servers playing the providers are on 127.0.0.1: allowed through the egress guard.
const FAST: &str = "[egress]\nallow = [\"127.0.0.1\"]\n[daemon]\npoll_interval = \"100ms\"\nlease = \"3s\"\nrescue_interval = \"200ms\"\nshutdown_grace = \"5s\"\n";

fn http_job(url: String, max_attempts: i32) -> NewJob {
    NewJob {
        max_attempts: Some(max_attempts),
        ..NewJob::new(
            "http.request",
            json!({ "method": "POST", "url": url, "body": {"hello": "world"} }),
        )
    }
}

const QUICK_RETRIES: &str = "[kinds.\"http.request\"]\nbackoff = { strategy = \"fixed\", base = \"10ms\", max = \"10ms\", jitter = false }\n";

#[tokio::test]
async fn pools_drain_every_job_and_keep_completed_rows() {
    let mut app = TestApp::running(FAST).await;
    let jobs: Vec<NewJob> = (0..3000)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    app.enqueue_many(&jobs).await;
    app.wait_for(
        "select count(*) = 3000 from penguin.jobs where state = 'completed'",
        Duration::from_secs(60),
        "3000 completed jobs",
    )
    .await;
    app.stop().await;
    assert_eq!(
        app.count("select count(*) from penguin.jobs where attempt <> 1 or finished_at is null or leased_by is not null").await,
        0
    );
}

#[tokio::test]
async fn a_commit_wakes_an_idle_worker_well_before_the_poll_interval() {
    let mut app = TestApp::running(SLOW_POLL).await;
    // the pool marks itself idle once it found the queue empty
    app.wait_for(IDLE_MARK, Duration::from_secs(10), "an idle mark")
        .await;
    a_job_is_woken_by_notify(&mut app).await;
}

/// A 30 s poll: a job that waits for it fails [`a_job_is_woken_by_notify`].
const SLOW_POLL: &str = "[daemon]\npoll_interval = \"30s\"\n";

/// Whether the pool of queue `default` is marked idle (so inserts NOTIFY it).
const IDLE_MARK: &str =
    "select exists (select 1 from penguin.idle_workers where queue = 'default')";

/// Enqueues a job and checks that it completes well before the [`SLOW_POLL`] (woken by
/// NOTIFY), then stops the app.
async fn a_job_is_woken_by_notify(app: &mut TestApp) {
    let id = app.enqueue(&NewJob::new("noop", json!({}))).await;
    // a limit below the 30 s poll, so that the assertion below can fail on its own
    let waited = app
        .wait_for(
            &format!("select state = 'completed' from penguin.jobs where id = {id}"),
            Duration::from_secs(25),
            "the job to complete",
        )
        .await;
    app.stop().await;
    assert!(
        waited < Duration::from_secs(10),
        "woken by NOTIFY, not by the 30s poll: took {waited:?}"
    );
}

/// Transactions committed in this test's database so far (every connection's, as the
/// statistics collector has them: each backend reports at most once a second).
async fn commits(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "select xact_commit from pg_stat_database where datname = current_database()",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_idle_pool_that_has_worked_waits_for_jobs_instead_of_claiming_in_a_loop() {
    let mut app = TestApp::running("[daemon]\npoll_interval = \"1s\"\n").await;
    // a job run gives the pool a claim position, then the queue is empty
    let id = app.enqueue(&NewJob::new("noop", json!({}))).await;
    app.wait_for_state(id, JobState::Completed).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = commits(&app).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = commits(&app).await - before;
    // idle, each pool claims once per poll or wake-up, maintenance ticks: tens in 3 s; a
    // pool passing over its empty queue back to back makes thousands
    assert!(idle < 300, "{idle} transactions in 3 s of idling");
    // and a job still wakes it at once
    let id = app.enqueue(&NewJob::new("noop", json!({}))).await;
    app.wait_for_state(id, JobState::Completed).await;
    app.stop().await;
}

#[tokio::test]
async fn a_pool_busy_long_enough_to_clear_its_idle_mark_marks_itself_again_once_empty() {
    let mut app = TestApp::running(SLOW_POLL).await;
    // a job every 10 ms for 2 s: busy for longer than the grace, the pool clears its mark
    let until = std::time::Instant::now() + Duration::from_secs(2);
    let mut last = 0;
    while std::time::Instant::now() < until {
        last = app.enqueue(&NewJob::new("noop", json!({}))).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.wait_for_state(last, JobState::Completed).await;
    // the queue is empty: the mark is back well before the 30 s poll, so inserts NOTIFY
    app.wait_for(
        IDLE_MARK,
        Duration::from_secs(10),
        "the idle mark written again",
    )
    .await;
    a_job_is_woken_by_notify(&mut app).await;
}

#[tokio::test]
async fn a_busy_queue_does_not_notify_on_each_insert() {
    let app = TestApp::new().await;
    // nobody idles: the trigger must not send anything
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.pool)
        .await
        .unwrap();
    listener.listen(queue::NOTIFY_CHANNEL).await.unwrap();
    app.enqueue(&NewJob::new("noop", json!({}))).await;
    // a negative: no NOTIFY can be awaited, so a bounded window stands for "never"
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv())
            .await
            .is_err(),
        "no NOTIFY while no worker idles"
    );
    // one idle worker: one NOTIFY per statement, even for many rows
    queue::mark_idle(&app.pool, "w1", "default").await.unwrap();
    let many: Vec<NewJob> = (0..50).map(|_| NewJob::new("noop", json!({}))).collect();
    app.enqueue_many(&many).await;
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.payload(), "default");
    // a negative again: no second NOTIFY within a bounded window
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn retries_exhausted_land_in_dead_letters_with_every_error() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(503))
        .expect(3)
        .mount(&provider)
        .await;
    let mut app = TestApp::running(&format!("{FAST}{QUICK_RETRIES}")).await;
    let id = app
        .enqueue(&http_job(format!("{}/hook", provider.uri()), 3))
        .await;
    app.wait_for_dead_letter(id).await;
    app.stop().await;
    assert!(app.try_job(id).await.is_none());
    let dead = &app.dead_letter(id).await;
    assert_eq!(dead.reason, "attempts_exhausted");
    assert_eq!(dead.attempt, 3);
    let errors = dead.errors.as_array().unwrap();
    assert_eq!(errors.len(), 3);
    for (i, e) in errors.iter().enumerate() {
        assert_eq!(e["attempt"], json!(i + 1));
        assert_eq!(e["class"], "api");
        assert_eq!(e["status"], 503);
    }
    provider.verify().await;
}

#[tokio::test]
async fn a_4xx_goes_to_the_dead_letters_at_once() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(422))
        .expect(1)
        .mount(&provider)
        .await;
    let mut app = TestApp::running(&format!("{FAST}{QUICK_RETRIES}")).await;
    let id = app
        .enqueue(&http_job(format!("{}/hook", provider.uri()), 10))
        .await;
    app.wait_for_dead_letter(id).await;
    app.stop().await;
    let dead = &app.dead_letter(id).await;
    assert_eq!(dead.reason, "permanent_error");
    assert_eq!(dead.attempt, 1);
    assert_eq!(dead.errors[0]["class"], "data");
    assert_eq!(dead.errors[0]["status"], 422);
}

#[tokio::test]
async fn a_429_retry_after_sets_the_earliest_next_run() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "120"))
        .mount(&provider)
        .await;
    let mut app = TestApp::running(&format!("{FAST}{QUICK_RETRIES}")).await;
    let id = app
        .enqueue(&http_job(format!("{}/hook", provider.uri()), 10))
        .await;
    app.wait_for_state(id, JobState::Retryable).await;
    app.stop().await;
    let job = app.job(id).await;
    let wait = job.run_at
        - job.errors[0]["at"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap();
    assert!(
        wait >= chrono::Duration::seconds(119),
        "run_at honours Retry-After: {wait}"
    );
    assert_eq!(job.errors[0]["class"], "rate_limit");
}

#[tokio::test]
async fn a_network_error_is_retried() {
    // a port nobody listens on: connection refused
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let mut app = TestApp::running(&format!("{FAST}{QUICK_RETRIES}")).await;
    let id = app.enqueue(&http_job(url, 2)).await;
    app.wait_for_dead_letter(id).await;
    app.stop().await;
    let dead = &app.dead_letter(id).await;
    assert_eq!(dead.reason, "attempts_exhausted");
    assert_eq!(dead.errors[0]["class"], "network");
    assert_eq!(dead.errors.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_job_of_a_kind_no_daemon_handles_waits_and_is_dead_lettered_only_after_the_grace() {
    let mut app = TestApp::builder()
        .config(&format!("{FAST}unknown_kind_grace = \"3s\"\n"))
        .build()
        .await;
    // a newer daemon registered the kind and enqueued a job of it, then went away
    sqlx::query(
        "insert into penguin.kinds (kind, queue, max_attempts, priority) values ('from.the.future', 'default', 5, 0)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let id: i64 = sqlx::query_scalar("select penguin.enqueue('from.the.future', '{}')")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    app.start_runtime();
    // it is not claimed: it waits, untouched, while the grace runs
    let noop = app.enqueue(&NewJob::new("noop", json!({}))).await;
    app.wait_for_state(noop, JobState::Completed).await;
    let waiting = queue::waiting_kinds(&app.pool, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(
        (waiting[0].kind.as_str(), waiting[0].jobs),
        ("from.the.future", 1)
    );
    let job = app.job(id).await;
    assert_eq!((job.state, job.attempt), (JobState::Available, 0));
    app.wait_for_dead_letter(id).await;
    app.stop().await;
    let dead = &app.dead_letter(id).await;
    assert_eq!(dead.reason, "unknown_kind");
    assert_eq!(dead.attempt, 0, "no attempt was spent on it");
    assert_eq!(dead.errors[0]["class"], "unknown_kind");
    assert!(
        dead.errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("no running daemon handles kind from.the.future"),
        "{}",
        dead.errors
    );
    let waited_secs: f64 = sqlx::query_scalar(
        "select extract(epoch from dead_at - created_at)::float8 from penguin.dead_letters where job_id = $1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        waited_secs >= 3.0,
        "dead-lettered {waited_secs:.1} s after it was enqueued, before the 3 s grace"
    );
}

#[tokio::test]
async fn a_job_running_longer_than_the_lease_is_not_rescued_while_its_worker_lives() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(7)))
        .expect(1)
        .mount(&provider)
        .await;
    // lease 3s (heartbeat every 1s), rescue every 200ms, the job takes 7s
    let mut app = TestApp::running(FAST).await;
    let id = app
        .enqueue(&http_job(format!("{}/slow", provider.uri()), 5))
        .await;
    app.wait_for_state(id, JobState::Completed).await;
    app.stop().await;
    let job = app.job(id).await;
    assert_eq!(job.attempt, 1);
    assert_eq!(job.errors, json!([]), "never rescued");
    provider.verify().await;
}

#[tokio::test]
async fn a_job_whose_lease_expired_is_rescued_and_charged_only_if_it_had_started() {
    let mut app = TestApp::builder().config(FAST).build().await;
    let started = app.enqueue(&NewJob::new("noop", json!({"n": 1}))).await;
    let unstarted = app.enqueue(&NewJob::new("noop", json!({"n": 2}))).await;
    // a worker claimed both, started one, and died
    let claimed =
        support::daemon::claim_default(&app.pool, "dead-worker", 10, Duration::from_secs(3)).await;
    assert_eq!(claimed.len(), 2);
    queue::mark_started(&app.pool, "dead-worker", &[started], &[chrono::Utc::now()])
        .await
        .unwrap();
    sqlx::query("update penguin.jobs set lease_expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.start_runtime();
    app.wait_for(
        "select count(*) = 2 from penguin.jobs where state = 'completed'",
        Duration::from_secs(30),
        "the rescued jobs to complete",
    )
    .await;
    app.stop().await;
    let job = app.job(started).await;
    assert_eq!(job.attempt, 2);
    assert_eq!(job.errors[0]["class"], "lease_expired");
    assert!(
        job.errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("dead-worker")
    );
    let job = app.job(unstarted).await;
    assert_eq!(
        job.attempt, 1,
        "the attempt it never started is not charged"
    );
    assert_eq!(job.errors[0]["class"], "lease_expired_unstarted");
}

#[tokio::test]
async fn a_job_that_kills_its_daemon_before_its_start_is_recorded_still_reaches_the_dead_letters() {
    let app = TestApp::new().await;
    let id = app
        .enqueue(&NewJob {
            max_attempts: Some(2),
            ..NewJob::new("noop", json!({}))
        })
        .await;
    let kinds = support::daemon::known_kinds(&app.pool).await;
    // each round: claimed, the daemon dies before any start mark, the lease expires
    for round in 1..=10 {
        let claimed = queue::claim(
            &app.pool,
            "default",
            &kinds,
            1,
            "doomed",
            Duration::from_secs(3),
        )
        .await
        .unwrap();
        if claimed.is_empty() {
            assert!(round > 1);
            break;
        }
        sqlx::query("update penguin.jobs set lease_expires_at = now() - interval '1 second'")
            .execute(&app.pool)
            .await
            .unwrap();
        sqlx::query("update penguin.jobs set run_at = now() where state = 'retryable'")
            .execute(&app.pool)
            .await
            .unwrap();
        queue::rescue_expired(&app.pool, 10).await.unwrap();
    }
    let dead = &app.newest_dead_letter().await;
    assert_eq!(dead.job_id, id);
    assert_eq!(dead.reason, "attempts_exhausted");
    let classes: Vec<&str> = dead
        .errors
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["class"].as_str().unwrap())
        .collect();
    assert_eq!(
        classes,
        [
            "lease_expired_unstarted",
            "lease_expired_unstarted",
            "lease_expired_unstarted",
            "lease_expired",
            "lease_expired"
        ]
    );
}

#[tokio::test]
async fn an_outcome_from_a_worker_that_lost_its_lease_is_dropped() {
    let app = TestApp::new().await;
    let id = app.enqueue(&NewJob::new("noop", json!({}))).await;
    support::daemon::claim_default(&app.pool, "w-old", 1, Duration::from_secs(3)).await;
    queue::cancel_job(&app.pool, id).await.unwrap();
    let counts = queue::write_outcomes(
        &app.pool,
        "w-old",
        &[(
            id,
            queue::Outcome::Completed {
                result: None,
                delete: false,
            },
        )],
    )
    .await
    .unwrap();
    assert_eq!((counts.applied, counts.dropped), (0, 1));
    assert_eq!(app.job(id).await.state, JobState::Cancelled);

    // the same in a batch of mixed outcomes (the general statement, not the completions')
    let lost = app.enqueue(&NewJob::new("noop", json!({"n": 1}))).await;
    let held = app.enqueue(&NewJob::new("noop", json!({"n": 2}))).await;
    let claimed =
        support::daemon::claim_default(&app.pool, "w-old", 2, Duration::from_secs(3)).await;
    assert_eq!(claimed.len(), 2);
    queue::cancel_job(&app.pool, lost).await.unwrap();
    let counts = queue::write_outcomes(
        &app.pool,
        "w-old",
        &[
            (
                lost,
                queue::Outcome::Completed {
                    result: None,
                    delete: false,
                },
            ),
            (
                held,
                queue::Outcome::Snooze {
                    run_at: chrono::Utc::now(),
                },
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!((counts.applied, counts.dropped), (1, 1));
    assert_eq!(app.job(lost).await.state, JobState::Cancelled);
    assert_eq!(app.job(held).await.state, JobState::Scheduled);
}

#[tokio::test]
async fn a_slow_queue_claims_only_what_its_workers_start_and_shutdown_spends_no_attempt_on_the_rest()
 {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(1500)))
        .mount(&provider)
        .await;
    // one job at a time, claims of up to 4: a 1.5 s job leaves nothing to claim ahead
    let mut app = TestApp::running(&format!(
        "{FAST}[queues.default]\nconcurrency = 1\nbatch = 4\n"
    ))
    .await;
    let jobs: Vec<NewJob> = (0..4)
        .map(|_| http_job(format!("{}/slow", provider.uri()), 5))
        .collect();
    app.enqueue_many(&jobs).await;
    support::poll_until(Duration::from_secs(10), async || {
        !provider
            .received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    })
    .await
    .expect("the first job never started");
    assert_eq!(
        app.count("select count(*) from penguin.jobs where state = 'running'")
            .await,
        1,
        "only the job a worker runs is claimed"
    );
    app.stop().await;
    assert_eq!(
        app.count("select count(*) from penguin.jobs where state = 'completed' and attempt = 1")
            .await,
        1
    );
    assert_eq!(
        app.count("select count(*) from penguin.jobs where state = 'available' and attempt = 0 and leased_by is null").await,
        3
    );
}

#[tokio::test]
async fn shutdown_after_the_grace_period_releases_jobs_still_running() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&provider)
        .await;
    let mut app =
        TestApp::running("[egress]\nallow = [\"127.0.0.1\"]\n[daemon]\npoll_interval = \"100ms\"\nshutdown_grace = \"500ms\"\n").await;
    let id = app
        .enqueue(&http_job(format!("{}/stuck", provider.uri()), 5))
        .await;
    app.wait_for_state(id, JobState::Running).await;
    app.stop().await;
    let job = app.job(id).await;
    assert_eq!((job.state, job.attempt), (JobState::Available, 0));
}

#[tokio::test]
async fn completed_jobs_are_deleted_at_once_with_zero_retention() {
    let mut app = TestApp::running(&format!("{FAST}[retention]\ncompleted = \"0s\"\n")).await;
    let jobs: Vec<NewJob> = (0..100).map(|_| NewJob::new("noop", json!({}))).collect();
    app.enqueue_many(&jobs).await;
    app.wait_for(
        "select count(*) = 0 from penguin.jobs",
        Duration::from_secs(30),
        "every job deleted",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn replay_enqueues_a_dead_letter_again_with_fresh_attempts() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400))
        .up_to_n_times(1)
        .mount(&provider)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&provider)
        .await;
    let mut app = TestApp::running(FAST).await;
    let id = app
        .enqueue(&http_job(format!("{}/hook", provider.uri()), 5))
        .await;
    let dead = app.wait_for_dead_letter(id).await;
    let replayed = queue::replay_dead_letters(&app.pool, Some(&[dead.id]), None)
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1);
    let new_id = replayed[0].job;
    app.wait_for_state(new_id, JobState::Completed).await;
    app.stop().await;
    let letter = queue::get_dead_letter(&app.pool, dead.id).await.unwrap();
    assert_eq!(letter.replayed_as, Some(new_id));
    assert!(letter.replayed_at.is_some());
    let job = app.job(new_id).await;
    assert_eq!((job.attempt, job.payload), (1, dead.payload));
    // a second replay of the same letter is refused
    let err = queue::replay_dead_letters(&app.pool, Some(&[dead.id]), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already replayed"), "{err}");
}

/// A kind whose every attempt returns text PostgreSQL refuses to store, as a handler that
/// copied a provider's answer without cleaning it would.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct UnstorableResult {}

impl penguin_jobs::jobs::Kind for UnstorableResult {
    const KIND: &'static str = "test.unstorable";
    type Deps = ();
    async fn run(self, _: &penguin_jobs::jobs::JobContext, _: &()) -> penguin_jobs::jobs::Attempt {
        Ok(Some(json!({"body": "bad \u{0} byte"})))
    }
}

#[tokio::test]
async fn an_outcome_the_database_refuses_is_dead_lettered_and_holds_back_nothing_else() {
    let registry = penguin_jobs::jobs::Registry::new(
        vec![
            penguin_jobs::jobs::handler::<penguin_jobs::jobs::noop::Noop>(()),
            penguin_jobs::jobs::handler::<UnstorableResult>(()),
        ],
        &Default::default(),
    )
    .unwrap();
    let mut app = TestApp::builder()
        .config(&format!(
            "{FAST}[queues.default]\nconcurrency = 20\nbatch = 50\n"
        ))
        .registry(registry)
        .build()
        .await;
    let mut jobs: Vec<NewJob> = (0..500)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    jobs.insert(100, NewJob::new("test.unstorable", json!({})));
    jobs.insert(300, NewJob::new("test.unstorable", json!({})));
    app.enqueue_many(&jobs).await;
    app.start_runtime();
    app.wait_for(
        "select (select count(*) = 500 from penguin.jobs where state = 'completed')
            and (select count(*) = 2 from penguin.dead_letters)",
        Duration::from_secs(30),
        "every noop completed and both unstorable outcomes dead-lettered",
    )
    .await;
    app.stop().await;
    let dead = queue::list_dead_letters(
        &app.pool,
        &queue::DeadLetterFilter {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for d in &dead {
        assert_eq!(d.kind, "test.unstorable");
        assert_eq!(d.reason, "outcome_unwritable");
        let last = d.errors.as_array().unwrap().last().unwrap();
        assert_eq!(last["class"], "internal");
        assert!(
            last["message"]
                .as_str()
                .unwrap()
                .contains("could not be stored"),
            "{last}"
        );
    }
    assert_eq!(
        app.count("select count(*) from penguin.jobs where state <> 'completed'")
            .await,
        0
    );
}

#[tokio::test]
async fn jobs_that_land_behind_the_claim_position_are_still_claimed() {
    let mut app = TestApp::running(FAST).await;
    // a job enqueued in a transaction that commits late: its run_at is the transaction's
    // start, behind every job enqueued and claimed meanwhile
    let mut late = app.pool.begin().await.unwrap();
    let late_id = queue::enqueue(&mut *late, &NewJob::new("noop", json!({ "late": true })))
        .await
        .unwrap();
    let jobs: Vec<NewJob> = (0..500)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    app.enqueue_many(&jobs).await;
    app.wait_for(
        "select count(*) = 500 from penguin.jobs where state = 'completed'",
        Duration::from_secs(30),
        "the 500 jobs that moved the claim position past the late one",
    )
    .await;
    late.commit().await.unwrap();
    // and one more urgent than any job claimed so far
    let urgent_id = app
        .enqueue(&NewJob {
            priority: Some(-100),
            ..NewJob::new("noop", json!({ "urgent": true }))
        })
        .await;
    for (id, what) in [(late_id, "the late commit"), (urgent_id, "the urgent job")] {
        app.wait_for(
            &format!("select state = 'completed' from penguin.jobs where id = {id}"),
            Duration::from_secs(10),
            what,
        )
        .await;
    }
    app.stop().await;
}

/// Makes every full pass fail (`fail`: its function `penguin.claim` renamed away) or work
/// again; keyset claims (`penguin.claim_after`) are untouched.
async fn fail_full_passes(app: &TestApp, fail: bool) {
    let (from, to) = if fail {
        ("claim", "claim_gone")
    } else {
        ("claim_gone", "claim")
    };
    sqlx::query(&format!(
        "alter function penguin.{from}(text, bigint, text, float8, text[]) rename to {to}"
    ))
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failing_full_pass_holds_back_neither_the_keyset_claims_nor_the_pass_after_it() {
    let mut app = TestApp::running(FAST).await;
    let first: Vec<NewJob> = (0..100)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    app.enqueue_many(&first).await;
    app.wait_for(
        "select count(*) = 100 from penguin.jobs where state = 'completed'",
        Duration::from_secs(30),
        "the jobs that give the pool a claim position",
    )
    .await;
    // every full pass now fails (the statement's function is gone); keyset claims do not use it
    fail_full_passes(&app, true).await;
    let more: Vec<NewJob> = (0..300)
        .map(|n| NewJob::new("noop", json!({ "more": n })))
        .collect();
    app.enqueue_many(&more).await;
    app.wait_for(
        "select count(*) = 400 from penguin.jobs where state = 'completed'",
        Duration::from_secs(30),
        "the jobs after the position, claimed while the full passes fail",
    )
    .await;
    fail_full_passes(&app, false).await;
    // behind the position: only a full pass finds it, so one ran again after the failures
    let urgent_id = app
        .enqueue(&NewJob {
            priority: Some(-100),
            ..NewJob::new("noop", json!({ "urgent": true }))
        })
        .await;
    app.wait_for(
        &format!("select state = 'completed' from penguin.jobs where id = {urgent_id}"),
        Duration::from_secs(10),
        "the urgent job, claimed by the first full pass after the failed ones",
    )
    .await;
    app.stop().await;
}

/// Two producers: A's job is due 10 ms before B's, but A commits after B's job was claimed,
/// so it lands behind the pool's position. With every full pass failing, only a keyset claim
/// that looks back over late commits (`cursor::LATE_COMMITS`, 50 ms) can claim it.
#[tokio::test]
async fn a_job_committed_after_a_later_one_was_claimed_is_claimed_without_a_full_pass() {
    let mut app = TestApp::running(FAST).await;
    let due = chrono::Utc::now() - chrono::TimeDelta::seconds(1);
    // the pool's position: a job due well before the two
    let first = app
        .enqueue(&NewJob {
            run_at: Some(due - chrono::TimeDelta::seconds(10)),
            ..NewJob::new("noop", json!({ "n": 0 }))
        })
        .await;
    app.wait_for_state(first, JobState::Completed).await;
    fail_full_passes(&app, true).await;
    let mut late = app.pool.begin().await.unwrap();
    let a = queue::enqueue(
        &mut *late,
        &NewJob {
            run_at: Some(due),
            ..NewJob::new("noop", json!({ "committed": "late" }))
        },
    )
    .await
    .unwrap();
    let b = app
        .enqueue(&NewJob {
            run_at: Some(due + chrono::TimeDelta::milliseconds(10)),
            ..NewJob::new("noop", json!({ "committed": "first" }))
        })
        .await;
    app.wait_for_state(b, JobState::Completed).await;
    late.commit().await.unwrap();
    app.wait_for(
        &format!("select state = 'completed' from penguin.jobs where id = {a}"),
        Duration::from_secs(10),
        "the job behind the position, while every full pass fails",
    )
    .await;
    fail_full_passes(&app, false).await;
    app.stop().await;
}

/// The xmin of the pool's idle mark: it changes whenever the mark is written again.
async fn idle_mark_version(app: &TestApp) -> Option<String> {
    sqlx::query_scalar("select xmin::text from penguin.idle_workers where queue = 'default'")
        .fetch_optional(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_queue_flipping_between_one_job_and_none_does_not_rewrite_its_idle_mark() {
    let mut app = TestApp::running(FAST).await;
    app.wait_for(
        "select exists (select 1 from penguin.idle_workers where queue = 'default')",
        Duration::from_secs(10),
        "an idle mark",
    )
    .await;
    let before = idle_mark_version(&app).await;
    // one job every 20 ms: each wakes the pool, which finds the queue empty again
    for n in 0..50 {
        app.enqueue(&NewJob::new("noop", json!({ "n": n }))).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.wait_for(
        "select count(*) = 50 from penguin.jobs where state = 'completed'",
        Duration::from_secs(10),
        "the 50 jobs",
    )
    .await;
    let after = idle_mark_version(&app).await;
    app.stop().await;
    assert!(before.is_some());
    assert_eq!(before, after, "the idle mark was written again");
}

#[tokio::test]
async fn a_pool_busy_for_over_a_second_clears_its_idle_mark() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(700)))
        .mount(&provider)
        .await;
    let mut app = TestApp::running(&format!(
        "{FAST}[queues.default]\nconcurrency = 1\nbatch = 1\n"
    ))
    .await;
    app.wait_for(
        "select exists (select 1 from penguin.idle_workers where queue = 'default')",
        Duration::from_secs(10),
        "an idle mark",
    )
    .await;
    let jobs: Vec<NewJob> = (0..4)
        .map(|_| http_job(format!("{}/slow", provider.uri()), 5))
        .collect();
    app.enqueue_many(&jobs).await;
    // jobs of 0.7 s one at a time: the third claim finds the pool busy for over a second
    app.wait_for(
        "select not exists (select 1 from penguin.idle_workers where queue = 'default')
            and exists (select 1 from penguin.jobs where state <> 'completed')",
        Duration::from_secs(10),
        "the idle mark cleared while jobs remain",
    )
    .await;
    app.wait_for(
        "select exists (select 1 from penguin.idle_workers where queue = 'default')",
        Duration::from_secs(10),
        "the idle mark written again once the queue is empty",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_dead_workers_jobs_are_found_through_its_claims_rows_which_go_once_none_runs_under_it() {
    let app = TestApp::new().await;
    let kinds = vec!["noop".to_string()];
    for n in 0..3 {
        app.enqueue(&NewJob::new("noop", json!({ "n": n }))).await;
    }
    let claim = |worker: &'static str, limit: i64, number: i64| {
        let pool = app.pool.clone();
        let kinds = kinds.clone();
        async move {
            let request = queue::ClaimRequest {
                queue: "default",
                kinds: &kinds,
                limit,
                worker,
                lease: Duration::from_secs(30),
                claim: number,
            };
            queue::claim_from(&pool, &request, None).await.unwrap()
        }
    };
    // a worker claims two jobs and dies; a live one holds the third
    let dead = claim("dead-worker", 2, 7).await;
    let live = claim("live-worker", 1, 1).await;
    assert_eq!((dead.len(), live.len()), (2, 1));
    assert!(claim("live-worker", 1, 2).await.is_empty());
    assert_eq!(
        app.count("select count(*) from penguin.claims").await,
        2,
        "one row per claim that claimed something"
    );
    sqlx::query(
        "update penguin.jobs set lease_expires_at = now() - interval '1 second'
          where leased_by = 'dead-worker'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // rows younger than the age given are not checked
    assert_eq!(
        queue::forget_finished_claims(&app.pool, Duration::from_secs(60))
            .await
            .unwrap(),
        0
    );
    let rescued = queue::rescue_expired(&app.pool, 10).await.unwrap();
    assert_eq!(rescued.requeued, 2);
    for job in &dead {
        assert_eq!(app.job(job.id).await.state, JobState::Retryable);
    }
    assert_eq!(app.job(live[0].id).await.state, JobState::Running);
    // none of the dead worker's jobs runs under it any more: its row goes, the live one stays
    assert_eq!(
        queue::forget_finished_claims(&app.pool, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    let left: Vec<(String, i64)> = sqlx::query_as("select worker, claim from penguin.claims")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, [("live-worker".to_string(), 1)]);
    // at shutdown its owner deletes its rows none of whose jobs still runs: not this one
    assert_eq!(
        queue::forget_idle_claims(&app.pool, "live-worker")
            .await
            .unwrap(),
        0
    );
    // once the job is written back, by its number
    sqlx::query(
        "update penguin.jobs set state = 'completed', finished_at = now(), leased_by = null,
                lease_expires_at = null
          where id = $1",
    )
    .bind(live[0].id)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        queue::forget_claims(&app.pool, "live-worker", &[1])
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_pool_deletes_the_claims_rows_of_the_jobs_it_wrote_back_while_it_runs() {
    let mut app = TestApp::running(FAST).await;
    let jobs: Vec<NewJob> = (0..2000)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    app.enqueue_many(&jobs).await;
    app.wait_for(
        "select count(*) = 2000 from penguin.jobs where state = 'completed'",
        Duration::from_secs(60),
        "2000 completed jobs",
    )
    .await;
    // within a few flushes, not at shutdown, and not by a rescue pass (10 s old rows only)
    app.wait_for(
        "select not exists (select 1 from penguin.claims)",
        Duration::from_secs(5),
        "the pool to delete its finished claims",
    )
    .await;
    app.stop().await;
}
