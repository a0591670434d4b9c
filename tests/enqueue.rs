//! Enqueue paths against a real PostgreSQL: the SQL function, the Rust API, unique keys.

mod support;

use penguin_jobs::queue::{self, NewJob};
use serde_json::json;
use support::daemon::{config, count, register_kinds};

#[tokio::test]
async fn sql_enqueue_in_a_rolled_back_transaction_leaves_no_job() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;

    let mut tx = db.pool.begin().await.unwrap();
    let id: i64 = sqlx::query_scalar("select penguin.enqueue('noop', '{}')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert!(id > 0);
    tx.rollback().await.unwrap();
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.jobs").await,
        0
    );

    let mut tx = db.pool.begin().await.unwrap();
    let id: i64 = sqlx::query_scalar("select penguin.enqueue('noop', '{\"a\": 1}')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let job = queue::get_job(&db.pool, id).await.unwrap();
    assert_eq!(job.state, "available");
    assert_eq!(job.payload, json!({"a": 1}));
}

#[tokio::test]
async fn sql_enqueue_fills_defaults_from_penguin_kinds() {
    let db = support::test_db().await;
    let cfg = config("[kinds.noop]\nqueue = \"probes\"\nmax_attempts = 7\npriority = -3\n");
    register_kinds(&db.pool, &cfg).await;

    let id: i64 = sqlx::query_scalar("select penguin.enqueue('noop', '{}')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let job = queue::get_job(&db.pool, id).await.unwrap();
    assert_eq!(
        (job.queue.as_str(), job.max_attempts, job.priority),
        ("probes", 7, -3)
    );

    // explicit arguments win; a future run_at makes the job scheduled
    let id: i64 = sqlx::query_scalar(
        "select penguin.enqueue('noop', '{}', queue => 'other', priority => 5, max_attempts => 2,
                                run_at => now() + interval '1 hour')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let job = queue::get_job(&db.pool, id).await.unwrap();
    assert_eq!(
        (job.queue.as_str(), job.max_attempts, job.priority),
        ("other", 2, 5)
    );
    assert_eq!(job.state, "scheduled");
}

#[tokio::test]
async fn sql_enqueue_of_an_unknown_kind_raises_a_clear_error() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;

    let err = sqlx::query_scalar::<_, i64>("select penguin.enqueue('no.such.kind', '{}')")
        .fetch_one(&db.pool)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("unknown job kind \"no.such.kind\""), "{msg}");

    let err =
        sqlx::query_scalar::<_, i64>("select penguin.enqueue('noop', '{}', max_attempts => 0)")
            .fetch_one(&db.pool)
            .await
            .unwrap_err();
    assert!(
        err.to_string().contains("max_attempts must be at least 1"),
        "{err}"
    );
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.jobs").await,
        0
    );
}

#[tokio::test]
async fn rust_enqueue_joins_the_callers_transaction() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;

    let mut tx = db.pool.begin().await.unwrap();
    queue::enqueue(&mut *tx, &NewJob::new("noop", json!({})))
        .await
        .unwrap();
    let ids = queue::enqueue_many(
        &mut tx,
        &[
            NewJob::new("noop", json!({"n": 1})),
            NewJob::new("noop", json!({"n": 2})),
        ],
    )
    .await
    .unwrap();
    assert_eq!(ids.len(), 2);
    tx.rollback().await.unwrap();
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.jobs").await,
        0
    );
}

#[tokio::test]
async fn enqueue_many_returns_ids_in_input_order_and_dedupes_unique_keys() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let mut conn = db.pool.acquire().await.unwrap();

    let held = queue::enqueue(
        &mut *conn,
        &NewJob {
            unique_key: Some("k1".into()),
            ..NewJob::new("noop", json!({"first": true}))
        },
    )
    .await
    .unwrap();

    let jobs: Vec<NewJob> = (0..5)
        .map(|n| NewJob {
            unique_key: match n {
                1 => Some("k1".into()),     // held by a live job
                3 | 4 => Some("k2".into()), // twice in this batch
                _ => None,
            },
            ..NewJob::new("noop", json!({ "n": n }))
        })
        .collect();
    let ids = queue::enqueue_many(&mut conn, &jobs).await.unwrap();
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[1], held);
    assert_eq!(ids[3], ids[4]);
    for (i, id) in ids.iter().enumerate() {
        if i == 1 || i == 4 {
            continue;
        }
        let job = queue::get_job(&db.pool, *id).await.unwrap();
        assert_eq!(
            job.payload,
            json!({ "n": i }),
            "id {id} belongs to input {i}"
        );
    }
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.jobs").await,
        4
    );
}

#[tokio::test]
async fn enqueue_many_refuses_a_batch_with_an_unknown_kind() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let err = queue::enqueue_many(
        &mut conn,
        &[
            NewJob::new("noop", json!({})),
            NewJob::new("nope", json!({})),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.user_message().unwrap(),
        "penguin.enqueue: unknown job kind \"nope\""
    );
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.jobs").await,
        0
    );
}

#[tokio::test]
async fn concurrent_unique_enqueues_give_one_job() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;

    let mut tasks = Vec::new();
    for n in 0..16 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let job = NewJob {
                unique_key: Some("refresh:conn-42".into()),
                ..NewJob::new("noop", json!({ "n": n }))
            };
            if n % 2 == 0 {
                queue::enqueue(&pool, &job).await.unwrap()
            } else {
                let mut conn = pool.acquire().await.unwrap();
                queue::enqueue_many(&mut conn, &[job]).await.unwrap()[0]
            }
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every enqueue got the same live job: {ids:?}");
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.jobs").await,
        1
    );
}

#[tokio::test]
async fn a_unique_key_is_free_again_once_its_job_finished() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let job = NewJob {
        unique_key: Some("once".into()),
        ..NewJob::new("noop", json!({}))
    };
    let first = queue::enqueue(&db.pool, &job).await.unwrap();
    queue::cancel_job(&db.pool, first).await.unwrap();
    let second = queue::enqueue(&db.pool, &job).await.unwrap();
    assert_ne!(first, second);
}

#[tokio::test]
async fn bad_new_jobs_are_refused_before_the_database() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let bad = [
        NewJob::new("", json!({})),
        NewJob::new("noop", serde_json::Value::Null),
        NewJob {
            max_attempts: Some(0),
            ..NewJob::new("noop", json!({}))
        },
    ];
    for job in &bad {
        let err = queue::enqueue(&db.pool, job).await.unwrap_err();
        assert!(err.user_message().is_some(), "{err}");
    }
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.jobs").await,
        0
    );
}

#[tokio::test]
async fn claim_indexes_are_partial_over_live_states() {
    let db = support::test_db().await;
    let defs: Vec<String> = sqlx::query_scalar(
        "select indexdef from pg_indexes where schemaname = 'penguin' and tablename = 'jobs'
          and indexname in ('jobs_claim_idx', 'jobs_unique_key_idx')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(defs.len(), 2);
    for def in defs {
        assert!(def.contains("WHERE"), "{def}");
        assert!(!def.contains("completed"), "{def}");
    }
    let options: Vec<String> = sqlx::query_scalar(
        "select unnest(reloptions) from pg_class where oid = 'penguin.jobs'::regclass",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        options.contains(&"autovacuum_vacuum_scale_factor=0.01".to_string()),
        "{options:?}"
    );
}

#[tokio::test]
async fn a_unique_key_is_held_per_kind_and_tenant_on_every_enqueue_path() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let sql = |kind: &'static str, tenant: Option<&'static str>| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "select penguin.enqueue($1, '{\"url\": \"https://example.com/\"}',
                                        unique_key => 'k', tenant_id => $2::uuid)",
            )
            .bind(kind)
            .bind(tenant)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    const T1: &str = "8d3c1f4e-0000-4000-8000-000000000001";
    const T2: &str = "8d3c1f4e-0000-4000-8000-000000000002";
    let noop = sql("noop", None).await;
    assert_eq!(
        sql("noop", None).await,
        noop,
        "same kind, no tenant: deduplicated"
    );
    let other_kind = sql("http.request", None).await;
    assert_ne!(other_kind, noop, "another kind does not share the key");
    let t1 = sql("noop", Some(T1)).await;
    let t2 = sql("noop", Some(T2)).await;
    assert!(
        t1 != noop && t2 != noop && t1 != t2,
        "each tenant holds its own key"
    );
    assert_eq!(sql("noop", Some(T1)).await, t1);

    // the Rust batch path agrees with the SQL function
    let keyed = |kind: &str, tenant: Option<&str>| NewJob {
        unique_key: Some("k".into()),
        tenant_id: tenant.map(|t| t.parse().unwrap()),
        ..NewJob::new(kind, json!({"url": "https://example.com/"}))
    };
    let mut conn = db.pool.acquire().await.unwrap();
    let got = queue::enqueue_many_reporting(
        &mut conn,
        &[
            keyed("noop", None),
            keyed("http.request", None),
            keyed("noop", Some(T1)),
            keyed("noop", Some(T2)),
        ],
    )
    .await
    .unwrap();
    let ids: Vec<i64> = got.iter().map(|e| e.id).collect();
    assert_eq!(ids, [noop, other_kind, t1, t2]);
    assert!(got.iter().all(|e| !e.created));
}

#[tokio::test]
async fn migrating_moves_the_daemons_live_unique_keys_under_the_reserved_prefix() {
    let db = support::test_db().await;
    let name = format!("{}_upgrade", db.name);
    sqlx::query(&format!(r#"create database "{name}""#))
        .execute(&db.pool)
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&support::server_url(&name))
        .await
        .unwrap();
    // the schema as it was before migration 0017
    let mut before = sqlx::migrate!("./migrations");
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 17)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&pool).await.unwrap();
    for (kind, key, state) in [
        ("noop", "schedule:tick:2026-01-01T00:00:00Z", "scheduled"),
        (
            "apikey.rotate",
            "apikey.rotate:sendgrid:production",
            "available",
        ),
        ("oauth.refresh", "oauth.refresh:42", "retryable"),
        ("noop", "order:42", "available"),
        (
            "apikey.rotate",
            "apikey.rotate:mailgun:production",
            "completed",
        ),
    ] {
        sqlx::query(
            "insert into penguin.jobs
                 (queue, kind, payload, state, unique_key, max_attempts, finished_at)
             values ('default', $1, '{}', $2, $3, 25,
                     case when $2 = 'completed' then now() end)",
        )
        .bind(kind)
        .bind(state)
        .bind(key)
        .execute(&pool)
        .await
        .unwrap();
    }
    queue::migrate(&pool).await.unwrap();
    let keys: Vec<String> = sqlx::query_scalar("select unique_key from penguin.jobs order by id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        keys,
        [
            "penguin:schedule:tick:2026-01-01T00:00:00Z",
            "penguin:apikey.rotate:sendgrid:production",
            "penguin:oauth.refresh:42",
            "order:42",
            "apikey.rotate:mailgun:production",
        ],
        "live daemon keys moved; callers' keys and finished jobs left as they were"
    );
    pool.close().await;
}

#[tokio::test]
async fn finished_at_is_set_exactly_when_a_job_is_final_and_a_unique_key_frees_when_it_is() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let enqueue_keyed = "select penguin.enqueue('noop', '{}', unique_key => 'k')";
    let id: i64 = sqlx::query_scalar(enqueue_keyed)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    for refused in [
        "update penguin.jobs set finished_at = now() where id = $1",
        "update penguin.jobs set state = 'cancelled' where id = $1",
    ] {
        let err = sqlx::query(refused)
            .bind(id)
            .execute(&db.pool)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("jobs_finished_only_when_final"),
            "{refused}: {err}"
        );
    }
    // the live holder is returned, not a second job
    let again: i64 = sqlx::query_scalar(enqueue_keyed)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(again, id);
    queue::cancel_job(&db.pool, id).await.unwrap();
    let finished: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select finished_at from penguin.jobs where id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(finished.is_some(), "a cancelled job has finished_at");
    // once final, the key is free again
    let next: i64 = sqlx::query_scalar(enqueue_keyed)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_ne!(next, id);
}

/// A fresh database migrated up to `last` (e.g. "0021"), as a daemon of an earlier
/// release leaves it: (its name, a pool on it). Drop it with [`drop_database`].
async fn database_migrated_to(last: &str) -> (String, sqlx::PgPool) {
    let name = format!("penguin_test_{:016x}", rand::random::<u64>());
    let mut admin = support::admin_connection().await;
    sqlx::Executor::execute(&mut admin, format!(r#"create database "{name}""#).as_str())
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&support::server_url(&name))
        .await
        .unwrap();
    let before = support::TempDir::new("migrations-before");
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if file.ends_with(".sql") && file[..4] <= *last {
            std::fs::copy(&path, before.path().join(&file)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(before.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    (name, pool)
}

async fn drop_database(name: &str, pool: sqlx::PgPool) {
    pool.close().await;
    let mut admin = support::admin_connection().await;
    // with (force): an autovacuum worker may still be on the database
    sqlx::Executor::execute(
        &mut admin,
        format!(r#"drop database "{name}" with (force)"#).as_str(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn migration_0022_repairs_rows_whose_finished_at_disagreed_with_their_state() {
    let (name, pool) = database_migrated_to("0021").await;
    let ids: Vec<i64> = sqlx::query_scalar(
        "insert into penguin.jobs (queue, kind, state, max_attempts, attempted_at, finished_at)
         values ('default', 'noop', 'completed', 1, now() - interval '1 hour', null),
                ('default', 'noop', 'available', 1, null, now())
         returning id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();

    queue::migrate(&pool).await.unwrap();
    let repaired: Vec<(String, bool)> = sqlx::query_as(
        "select state, finished_at is not null from penguin.jobs where id = any($1) order by id",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        repaired,
        vec![
            ("completed".to_string(), true),
            ("available".to_string(), false)
        ]
    );
    let validated: bool = sqlx::query_scalar(
        "select convalidated from pg_constraint where conname = 'jobs_finished_only_when_final'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(validated);
    drop_database(&name, pool).await;
}

#[tokio::test]
async fn the_jobs_running_when_claims_rows_arrive_get_theirs_and_are_rescued_through_them() {
    // a daemon of the release before 0024 claimed three jobs and died
    let (name, pool) = database_migrated_to("0023").await;
    let running: Vec<i64> = sqlx::query_scalar(
        "insert into penguin.jobs (queue, kind, state, attempt, max_attempts, leased_by,
                                   lease_expires_at, attempted_at, started_at)
         select 'default', 'noop', 'running', 1, 5, 'old-daemon/default',
                now() - interval '1 second', now() - interval '1 minute', now() - interval '1 minute'
           from generate_series(1, 3)
         returning id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into penguin.jobs (queue, kind, max_attempts) values ('default', 'noop', 5)",
    )
    .execute(&pool)
    .await
    .unwrap();

    queue::migrate(&pool).await.unwrap();
    let rows: Vec<(String, Vec<i64>)> = sqlx::query_as("select worker, ids from penguin.claims")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows, [("old-daemon/default".to_string(), running.clone())]);
    let rescued = queue::rescue_expired(&pool, 10).await.unwrap();
    assert_eq!(rescued.requeued, 3);
    // the indexes: predicates on finished_at under the old names, no running index
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "select indexname, indexdef from pg_indexes
          where schemaname = 'penguin' and tablename = 'jobs' order by indexname",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let names: Vec<&str> = indexes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "jobs_claim_idx",
            "jobs_finished_brin",
            "jobs_pkey",
            "jobs_unique_key_idx"
        ]
    );
    for (index, def) in &indexes {
        assert!(!def.contains("state"), "{index} names state: {def}");
    }
    let options: Vec<String> = sqlx::query_scalar(
        "select unnest(reloptions) from pg_class where oid = 'penguin.jobs'::regclass",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        options.contains(&"fillfactor=50".to_string()),
        "{options:?}"
    );
    drop_database(&name, pool).await;
}
