//! The hot statements keep index plans when the table's statistics are stale: claims run
//! ahead of ANALYZE, so the planner believes no job is running while thousands are.

mod support;

use std::time::Duration;

use penguin_jobs::queue::{self, NewJob, outcome::WRITE_OUTCOMES_SQL};
use serde_json::json;
use support::daemon::{config, register_kinds};

#[tokio::test]
async fn the_outcome_write_probes_the_primary_key_even_with_stale_statistics() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let jobs: Vec<NewJob> = (0..5000)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    queue::enqueue_many(&mut conn, &jobs).await.unwrap();
    // statistics say: nothing is running
    sqlx::query("analyze penguin.jobs")
        .execute(&mut *conn)
        .await
        .unwrap();
    let claimed = queue::claim(
        &db.pool,
        "default",
        &support::daemon::known_kinds(&db.pool).await,
        2000,
        "w1",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 2000);

    sqlx::query("set plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(&format!(
        "prepare write_outcomes(text, bigint[], text[], timestamptz[], jsonb[], jsonb[], text[], timestamptz[]) as {WRITE_OUTCOMES_SQL}"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    let ids: Vec<String> = claimed.iter().map(|j| j.id.to_string()).collect();
    let actions = vec!["complete"; ids.len()].join(",");
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "explain execute write_outcomes('w1', '{{{}}}', '{{{actions}}}', null, null, null, null, null)",
        ids.join(",")
    ))
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("jobs_pkey"), "{plan}");
    assert!(
        !plan.contains("jobs_running_idx"),
        "the running-jobs index must not drive the join:\n{plan}"
    );
}

#[tokio::test]
async fn enqueue_many_without_unique_keys_returns_ids_in_input_order() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let jobs: Vec<NewJob> = (0..300)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    let ids = queue::enqueue_many(&mut conn, &jobs).await.unwrap();
    for (n, id) in ids.iter().enumerate() {
        let job = queue::get_job(&db.pool, *id).await.unwrap();
        assert_eq!(job.payload, json!({ "n": n }));
    }
}
