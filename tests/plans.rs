//! The hot statements keep index plans when the table's statistics are stale: claims run
//! ahead of ANALYZE, so the planner believes no job is running while thousands are.

mod support;

use std::time::Duration;

use penguin_jobs::queue::claim::CLAIM_BATCH_SQL;
use penguin_jobs::queue::outcome::{WRITE_COMPLETIONS_SQL, WRITE_OUTCOMES_SQL};
use penguin_jobs::queue::{self, ClaimPosition, NewJob};
use serde_json::json;
use support::daemon::{config, register_kinds};

/// `running` jobs claimed by worker w1 after `completed` completed jobs were inserted and
/// the table analyzed (the statistics say: nothing runs), on a connection set to plan
/// generically (a generic plan guesses a tenth of the table for an array of ids).
async fn running_under_stale_statistics(
    db: &support::TestDb,
    completed: i64,
    running: usize,
) -> (
    sqlx::pool::PoolConnection<sqlx::Postgres>,
    Vec<queue::ClaimedJob>,
) {
    register_kinds(&db.pool, &config("")).await;
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query(
        "insert into penguin.jobs (queue, kind, payload, state, attempt, max_attempts, finished_at)
         select 'default', 'noop', '{}', 'completed', 1, 25, now() from generate_series(1, $1)",
    )
    .bind(completed)
    .execute(&mut *conn)
    .await
    .unwrap();
    let jobs: Vec<NewJob> = (0..running)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    queue::enqueue_many(&mut conn, &jobs).await.unwrap();
    sqlx::query("analyze penguin.jobs")
        .execute(&mut *conn)
        .await
        .unwrap();
    let claimed =
        support::daemon::claim_default(&db.pool, "w1", running as i64, Duration::from_secs(30))
            .await;
    assert_eq!(claimed.len(), running);
    sqlx::query("set plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    (conn, claimed)
}

/// Prepares each of `prepares` and asserts the plan of each of `executes` probes
/// `jobs_pkey` and reads no part of `penguin.jobs` sequentially.
async fn assert_primary_key_probes(
    conn: &mut sqlx::PgConnection,
    prepares: &[String],
    executes: &[String],
) {
    for prepare in prepares {
        sqlx::query(prepare).execute(&mut *conn).await.unwrap();
    }
    for execute in executes {
        let plan: Vec<String> = sqlx::query_scalar(&format!("explain {execute}"))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("jobs_pkey"), "{execute}:\n{plan}");
        assert!(!plan.contains("Seq Scan on jobs"), "{execute}:\n{plan}");
    }
}

#[tokio::test]
async fn the_outcome_writes_probe_the_primary_key_even_with_stale_statistics() {
    let db = support::test_db().await;
    let (mut conn, claimed) = running_under_stale_statistics(&db, 0, 2000).await;
    let ids: Vec<String> = claimed.iter().map(|j| j.id.to_string()).collect();
    let ids = ids.join(",");
    let actions = vec!["complete"; claimed.len()].join(",");
    assert_primary_key_probes(
        &mut conn,
        &[
            format!(
                "prepare write_outcomes(text, bigint[], text[], timestamptz[], jsonb[], jsonb[], text[], timestamptz[]) as {WRITE_OUTCOMES_SQL}"
            ),
            format!(
                "prepare write_completions(text, bigint[], jsonb[], timestamptz[]) as {WRITE_COMPLETIONS_SQL}"
            ),
        ],
        &[
            format!(
                "execute write_outcomes('w1', '{{{ids}}}', '{{{actions}}}', null, null, null, null, null)"
            ),
            format!("execute write_completions('w1', '{{{ids}}}', null, null)"),
        ],
    )
    .await;
}

/// A claim of 500 (a full pass, or a keyset claim after `after`) in one transaction rolled
/// back: (jobs claimed, how much each of the figures `counters` selects grew meanwhile).
/// `counters` reads the backend's not yet reported statistics (`pg_stat_xact_*`).
async fn measured_claim(
    conn: &mut sqlx::PgConnection,
    after: Option<ClaimPosition>,
    counters: &str,
) -> (usize, Vec<i64>) {
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let before: Vec<i64> = sqlx::query_scalar(counters)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let claimed: Vec<i64> = sqlx::query_scalar(CLAIM_BATCH_SQL)
        .bind("default")
        .bind(500i64)
        .bind("w1")
        .bind(30.0f64)
        .bind(vec!["noop".to_string()])
        .bind(after.map(|p| p.priority))
        .bind(after.map(|p| p.run_at))
        .bind(after.map(|p| p.id))
        // not a number the claims of the legacy function (the sequence) take
        .bind(-1i64)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    let now: Vec<i64> = sqlx::query_scalar(counters)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let grown = now.iter().zip(&before).map(|(n, b)| n - b).collect();
    (claimed.len(), grown)
}

/// What a full pass of 500 read from `penguin.jobs`: (jobs claimed, tuples fetched through
/// indexes, tuples read by sequential scans).
async fn claim_reads(conn: &mut sqlx::PgConnection) -> (usize, i64, i64) {
    let (claimed, grown) = measured_claim(
        conn,
        None,
        "select array[idx_tup_fetch, seq_tup_read] from pg_stat_xact_user_tables
          where relid = 'penguin.jobs'::regclass",
    )
    .await;
    (claimed, grown[0], grown[1])
}

#[tokio::test]
async fn a_claim_reads_its_batch_not_every_due_job_even_without_statistics() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let mut conn = db.pool.acquire().await.unwrap();
    // a table never analyzed, in the middle of a drain: 20,000 of 200,000 jobs still due
    // (at 100,000 the plain statement still walked the index; at 200,000 it sorted)
    sqlx::query("alter table penguin.jobs set (autovacuum_enabled = off)")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "insert into penguin.jobs (queue, kind, payload, priority, max_attempts)
         select 'default', 'noop', jsonb_build_object('n', g), 0, 25
           from generate_series(1, 200000) g",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(
        "update penguin.jobs set state = 'completed', attempt = 1, finished_at = now()
          where id % 10 <> 0",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    // with no statistics the planner expects one due row, and a bitmap scan of all of them
    // plus a sort then costs it as much as the ordered index scan (measured: 91 ms instead of
    // 2 ms per claim); a generic plan guesses a tenth of the table for the
    // limit and would hash a sequential scan for a join
    for mode in ["force_custom_plan", "force_generic_plan"] {
        sqlx::query(&format!("set plan_cache_mode = {mode}"))
            .execute(&mut *conn)
            .await
            .unwrap();
        for _ in 0..6 {
            let (claimed, fetched, scanned) = claim_reads(&mut conn).await;
            assert_eq!(claimed, 500);
            assert_eq!(scanned, 0, "{mode}: a claim scanned the table");
            assert!(
                fetched <= 1_000,
                "{mode}: a claim of 500 fetched {fetched} rows (a sort of every due row?)"
            );
        }
    }
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

/// What a claim of 500 read from the claim index: (jobs claimed, index entries returned,
/// those pointing at dead versions included).
async fn claim_index_reads(
    conn: &mut sqlx::PgConnection,
    after: Option<ClaimPosition>,
) -> (usize, i64) {
    let (claimed, grown) = measured_claim(
        conn,
        after,
        "select array[pg_stat_get_xact_tuples_returned('penguin.jobs_claim_idx'::regclass)]",
    )
    .await;
    (claimed, grown[0])
}

#[tokio::test]
async fn under_a_held_snapshot_a_keyset_claim_reads_its_batch_and_a_full_pass_every_earlier_claim()
{
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let mut conn = db.pool.acquire().await.unwrap();
    // a long transaction elsewhere: an xid and a snapshot, held through the test
    let mut held = db.pool.begin().await.unwrap();
    sqlx::query("set transaction isolation level repeatable read")
        .execute(&mut *held)
        .await
        .unwrap();
    sqlx::query("select txid_current(), count(*) from penguin.jobs")
        .execute(&mut *held)
        .await
        .unwrap();
    // 5,000 jobs claimed under it: their claim-index entries point at versions the held
    // snapshot still sees, so nothing may remove them or mark them dead
    let first: Vec<NewJob> = (0..5000)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    queue::enqueue_many(&mut conn, &first).await.unwrap();
    let claimed = queue::claim(
        &db.pool,
        "default",
        &["noop".to_string()],
        5000,
        "w1",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let position = ClaimPosition::of(claimed.last().unwrap());
    let next: Vec<NewJob> = (0..500)
        .map(|n| NewJob::new("noop", json!({ "next": n })))
        .collect();
    queue::enqueue_many(&mut conn, &next).await.unwrap();
    let (full_claimed, full_entries) = claim_index_reads(&mut conn, None).await;
    let (keyset_claimed, keyset_entries) = claim_index_reads(&mut conn, Some(position)).await;
    held.rollback().await.unwrap();
    assert_eq!((full_claimed, keyset_claimed), (500, 500));
    assert!(
        full_entries >= 5500,
        "the full pass walks the earlier claims' entries: {full_entries} read"
    );
    assert!(
        keyset_entries <= 600,
        "the keyset claim reads its batch: {keyset_entries} entries read"
    );
}

#[tokio::test]
async fn a_claim_rewrites_its_jobs_in_place_and_records_itself_in_penguin_claims() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let jobs: Vec<NewJob> = (0..2000)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    queue::enqueue_many(&mut conn, &jobs).await.unwrap();
    // a claim is a HOT update when no index holds a column it writes (state, attempt,
    // leases, attempted_at) and the page has room (fillfactor 50): no index entry behind it
    let (claimed, grown) = measured_claim(
        &mut conn,
        None,
        "select array[n_tup_upd, n_tup_hot_upd] from pg_stat_xact_user_tables
          where relid = 'penguin.jobs'::regclass",
    )
    .await;
    assert_eq!((claimed, grown[0]), (500, 500));
    assert!(
        grown[1] >= 400,
        "{} of 500 claimed rows were HOT updates (an index on a column the claim writes?)",
        grown[1]
    );
    // the same claim, kept: its row names the worker, its number and every id
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let mut ids: Vec<i64> = sqlx::query_scalar(CLAIM_BATCH_SQL)
        .bind("default")
        .bind(300i64)
        .bind("w1")
        .bind(30.0f64)
        .bind(vec!["noop".to_string()])
        .bind(None::<i16>)
        .bind(None::<chrono::DateTime<chrono::Utc>>)
        .bind(None::<i64>)
        .bind(42i64)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    ids.sort_unstable();
    let row: (String, i64, Vec<i64>) =
        sqlx::query_as("select worker, claim, ids from penguin.claims")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    let mut recorded = row.2.clone();
    recorded.sort_unstable();
    assert_eq!((row.0.as_str(), row.1, recorded), ("w1", 42, ids));
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn rescue_probes_the_claims_jobs_by_primary_key_even_with_stale_statistics() {
    let db = support::test_db().await;
    let (mut conn, _) = running_under_stale_statistics(&db, 20_000, 5000).await;
    assert_primary_key_probes(
        &mut conn,
        &[
            format!(
                "prepare rescue(bigint, int) as {}",
                penguin_jobs::queue::rescue::rescue_sql()
            ),
            format!(
                "prepare forget(float8, text) as {}",
                penguin_jobs::queue::rescue::FORGET_FINISHED_CLAIMS_SQL
            ),
        ],
        &[
            "execute rescue(1000, 3)".to_string(),
            "execute forget(10, null)".to_string(),
            "execute forget(0, 'w1')".to_string(),
        ],
    )
    .await;
}

#[tokio::test]
async fn claims_and_outcomes_probe_indexes_when_the_statistics_say_the_table_is_empty() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let mut conn = db.pool.acquire().await.unwrap();
    // analyzed while empty (a fresh install), then a burst the statistics know nothing of
    sqlx::query("analyze penguin.jobs")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("alter table penguin.jobs set (autovacuum_enabled = off)")
        .execute(&mut *conn)
        .await
        .unwrap();
    // the first claims of a session plan while the table is small: PL/pgSQL keeps the
    // generic plan it settles on after five calls
    let first: Vec<NewJob> = (0..600)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    queue::enqueue_many(&mut conn, &first).await.unwrap();
    for _ in 0..6 {
        assert_eq!(claim_reads(&mut conn).await.0, 500);
    }
    let jobs: Vec<NewJob> = (0..20_000)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    queue::enqueue_many(&mut conn, &jobs).await.unwrap();
    // measured: before migration 0034 each claim then read all 20,600 rows
    let (claimed, _, seq_read) = claim_reads(&mut conn).await;
    assert_eq!(claimed, 500);
    assert_eq!(seq_read, 0, "a claim read penguin.jobs sequentially");
    let claimed =
        support::daemon::claim_default(&db.pool, "w1", 2000, Duration::from_secs(30)).await;
    let ids: Vec<String> = claimed.iter().map(|j| j.id.to_string()).collect();
    let ids = ids.join(",");
    // the session the daemon writes outcomes on
    for (name, value) in penguin_jobs::runtime::KEYED_WRITE_SESSION {
        sqlx::query(&format!("set {name} = {value}"))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    assert_primary_key_probes(
        &mut conn,
        &[format!(
            "prepare write_completions(text, bigint[], jsonb[], timestamptz[]) as {WRITE_COMPLETIONS_SQL}"
        )],
        &[format!("execute write_completions('w1', '{{{ids}}}', null, null)")],
    )
    .await;
}
