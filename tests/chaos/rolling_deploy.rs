//! Experiment d, a rolling deploy: an old daemon (a registry without the new kind) and a
//! new one (with it) work the same queue. Jobs of the new kind enqueued while only the old
//! daemon runs must wait for the new one, untouched (no attempt spent, never
//! dead-lettered); once the new daemon is up they all complete. A dead letter of the new
//! kind replayed while the old daemon runs is worked by the new one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use penguin_jobs::jobs::{Attempt, JobContext, Kind, Registry, handler, noop::Noop};
use penguin_jobs::queue::{self, NewJob};
use serde_json::json;

use crate::support;
use crate::support::daemon::{config, count, start_runtime, wait_for};

/// The kind only the new daemon knows (a JSON object, ignored).
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct NewKind {}

impl Kind for NewKind {
    const KIND: &'static str = "deploy.new_kind";
    type Deps = ();
    async fn run(self, _: &JobContext, _: &()) -> Attempt {
        Ok(None)
    }
}

const CONFIG: &str = "[daemon]\npoll_interval = \"100ms\"\nlease = \"3s\"\nrescue_interval = \"200ms\"\nshutdown_grace = \"5s\"\n[queues.default]\nconcurrency = 32\n";

#[tokio::test]
async fn a_rolling_deploy_dead_letters_no_job_of_the_new_kind() {
    let db = support::test_db().await;
    let old = Arc::new(Registry::new(vec![handler::<Noop>(())], &Default::default()).unwrap());
    let new = Arc::new(
        Registry::new(
            vec![handler::<Noop>(()), handler::<NewKind>(())],
            &Default::default(),
        )
        .unwrap(),
    );
    // the new release migrated first: its kinds are enqueueable
    queue::sync_kinds(&db.pool, &new.kind_defaults())
        .await
        .unwrap();
    let old_daemon = start_runtime(&db.pool, config(CONFIG), old);

    let jobs = if crate::long_mode() { 20_000 } else { 2_000 };
    let mut batch: Vec<NewJob> = Vec::with_capacity(jobs);
    for n in 0..jobs {
        let kind = if n % 2 == 0 {
            "noop"
        } else {
            "deploy.new_kind"
        };
        batch.push(NewJob::new(kind, json!({ "n": n })));
    }
    let mut conn = db.pool.acquire().await.unwrap();
    queue::enqueue_many(&mut conn, &batch).await.unwrap();
    drop(conn);
    wait_for(
        &db.pool,
        &format!(
            "select count(*) = {} from penguin.jobs where kind = 'noop' and state = 'completed'",
            jobs / 2
        ),
        Duration::from_secs(60),
        "the old daemon to work every job of the kinds it knows",
    )
    .await;
    // a negative (nothing may happen), so a bounded window: a few more claim rounds and
    // maintenance passes in which the old daemon could do harm
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.dead_letters").await,
        0,
        "no job of the new kind is dead-lettered by the old daemon"
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from penguin.jobs
              where kind = 'deploy.new_kind' and state = 'available' and attempt = 0"
        )
        .await,
        (jobs / 2) as i64,
        "the new kind's jobs wait untouched"
    );
    let waiting = queue::waiting_kinds(&db.pool, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0].kind, "deploy.new_kind");
    assert_eq!(waiting[0].jobs, (jobs / 2) as i64);

    // a dead letter of the new kind (from an earlier incident), replayed before the new
    // daemon is up, waits too instead of going straight back to the dead letters
    let dead_id: i64 = sqlx::query_scalar(
        "insert into penguin.dead_letters
             (job_id, queue, kind, payload, priority, attempt, max_attempts, errors, created_at, reason)
         values (0, 'default', 'deploy.new_kind', '{\"replayed\": true}', 0, 1, 25, '[]', now(), 'unknown_kind')
         returning id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let replayed = queue::replay_dead_letters(&db.pool, Some(&[dead_id]), None)
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1);

    let started = Instant::now();
    let new_daemon = start_runtime(&db.pool, config(CONFIG), new);
    wait_for(
        &db.pool,
        &format!(
            "select count(*) = {} from penguin.jobs where kind = 'deploy.new_kind' and state = 'completed'",
            jobs / 2 + 1
        ),
        Duration::from_secs(60),
        "the new daemon to work every job of the new kind",
    )
    .await;
    let took = started.elapsed();
    old_daemon.stop().await;
    new_daemon.stop().await;
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from penguin.dead_letters where replayed_at is null"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from penguin.jobs where state <> 'completed' or attempt <> 1"
        )
        .await,
        0,
        "every job completed on its first attempt"
    );
    println!(
        "chaos d (rolling deploy): {} jobs of a new kind waited through the old daemon, 0 dead-lettered, all done {:.2} s after the new daemon started",
        jobs / 2 + 1,
        took.as_secs_f64()
    );
}
