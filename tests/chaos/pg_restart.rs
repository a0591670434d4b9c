//! Experiment b: PostgreSQL restarted under load, once fast and once immediate (crash
//! recovery), on a durable cluster of the experiment's own. A daemon (shim and workers) works jobs
//! that call a slow local sink while producers enqueue over HTTP. The daemon must stay up,
//! work again within 5 s of each restart, answer 503 (never another 5xx) while the
//! database is away, keep every job it answered 2xx for, and be back to waking an idle
//! pool within 50 ms (LISTEN re-established, idle marks rewritten) 2 s after the restart.
//! Signed Stripe webhooks arrive all the while: each one answered 200 is stored once and its
//! `stripe.event` job completed; the others get 503 and are redelivered, as Stripe does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use penguin_jobs::embedded_pg::EmbeddedPostgres;
use penguin_jobs::queue::{self, NewJob};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Mutex;

use crate::support::daemon::{config, count, register_kinds, wait_for};

/// The Stripe webhook secret of the experiment's daemon (`env:CHAOS_STRIPE_SECRET`).
const STRIPE_SECRET: &str = "whsec_chaos_0123456789abcdef";

fn daemon_config(port: u16) -> String {
    format!(
        "[egress]\nallow = [\"127.0.0.1\"]\n[daemon]\nlease = \"5s\"\nrescue_interval = \"500ms\"\nshutdown_grace = \"10s\"\n\
         [http]\nlisten = \"127.0.0.1:{port}\"\napi_tokens = [\"env:CHAOS_API_TOKEN\"]\n\
         [providers.stripe]\nwebhook_secret = \"env:CHAOS_STRIPE_SECRET\"\n\
         [queues.default]\nconcurrency = 32\n\
         [maintenance]\nprune = false\n[oauth]\nrefresh = false\n[api_keys]\nrotation = false\n"
    )
}

/// What the producers saw.
#[derive(Default)]
struct Answers {
    accepted: Mutex<Vec<i64>>,
    /// Stripe event ids answered 200
    events_stored: Mutex<Vec<String>>,
    unavailable: AtomicU64,
    other_errors: Mutex<Vec<String>>,
}

async fn produce(
    client: reqwest::Client,
    url: String,
    stop: Arc<AtomicBool>,
    answers: Arc<Answers>,
    producer: u64,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let sent = client
            .post(&url)
            .bearer_auth(crate::API_TOKEN)
            .json(&json!({"kind": "noop", "payload": {"producer": producer, "n": n}}))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                let body: serde_json::Value = r.json().await.unwrap();
                answers
                    .accepted
                    .lock()
                    .await
                    .push(body["id"].as_i64().unwrap());
            }
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                answers.unavailable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(r) => answers.other_errors.lock().await.push(format!(
                "{} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )),
            Err(e) => answers.other_errors.lock().await.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A Stripe-signed `payment_intent.succeeded` event, as Stripe would POST it at `t`.
fn signed_stripe_event(id: &str, t: i64) -> (Vec<u8>, String) {
    use hmac::{Hmac, Mac};
    let body = serde_json::to_vec(&json!({
        "id": id, "object": "event", "type": "payment_intent.succeeded", "created": t,
        "data": {"object": {"id": format!("pi_{id}"), "object": "payment_intent",
                            "amount": 4200, "currency": "usd", "status": "succeeded"}}
    }))
    .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(STRIPE_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&body);
    let signature = format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()));
    (body, signature)
}

/// Posts signed Stripe events one after another; an event answered 503 is redelivered (as
/// Stripe does) until it is stored or the experiment stops.
async fn deliver_webhooks(
    client: reqwest::Client,
    url: String,
    stop: Arc<AtomicBool>,
    answers: Arc<Answers>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("evt_chaos_{n}");
        while !stop.load(Ordering::Relaxed) {
            let (body, signature) = signed_stripe_event(&id, chrono::Utc::now().timestamp());
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .header("stripe-signature", signature)
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    answers.events_stored.lock().await.push(id.clone());
                    break;
                }
                Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                    answers.unavailable.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(r) => {
                    answers.other_errors.lock().await.push(format!(
                        "webhook {}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    ));
                    break;
                }
                Err(e) => {
                    answers
                        .other_errors
                        .lock()
                        .await
                        .push(format!("webhook: {e}"));
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn db_now(pool: &PgPool) -> chrono::DateTime<chrono::Utc> {
    // the pool's connections died with the server: retry until one reconnects
    for _ in 0..100 {
        if let Ok(t) = sqlx::query_scalar("select now()").fetch_one(pool).await {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the database did not come back");
}

#[tokio::test]
async fn postgres_restarted_fast_and_immediate_under_load_loses_nothing() {
    let dir = std::path::PathBuf::from(format!(
        "/tmp/penguin-jobs-chaos-pg-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    // durable (fsync and synchronous_commit on, PostgreSQL's defaults): the throwaway test
    // cluster runs with synchronous_commit off, where an immediate restart loses the last
    // commits by design (a run here lost a job answered 202 that way)
    let mut cluster = EmbeddedPostgres::start(&dir.join("pg"))
        .await
        .expect("start the experiment's own cluster");
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&cluster.url("postgres"))
        .await
        .unwrap();
    sqlx::query("create database chaos")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = cluster.url("chaos");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    queue::migrate(&pool).await.unwrap();
    let port = crate::free_port();
    let toml = daemon_config(port);
    register_kinds(&pool, &config(&toml)).await;
    let sink = crate::sink::start().await;
    let slow: Vec<NewJob> = (0..2000u64)
        .map(|n| {
            NewJob::new(
                "http.request",
                json!({"method": "POST", "url": format!("{}/job/{n}", sink.url)}),
            )
        })
        .collect();
    let mut conn = pool.acquire().await.unwrap();
    queue::enqueue_many(&mut conn, &slow).await.unwrap();
    drop(conn);

    std::fs::write(dir.join("jobs.toml"), &toml).unwrap();
    let mut run = std::process::Command::new(env!("CARGO_BIN_EXE_penguin-jobs"));
    run.arg("--config")
        .arg(dir.join("jobs.toml"))
        .arg("run")
        .env("CHAOS_STRIPE_SECRET", STRIPE_SECRET);
    let mut daemon = crate::spawn_with_shim(run, &url, &dir);
    let base = format!("http://127.0.0.1:{port}");
    let client = crate::wait_for_shim(&base, Duration::from_secs(10)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Answers::default());
    let producers: Vec<_> = (0..4)
        .map(|p| {
            tokio::spawn(produce(
                client.clone(),
                format!("{base}/v1/jobs"),
                stop.clone(),
                answers.clone(),
                p,
            ))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .chain(std::iter::once(tokio::spawn(deliver_webhooks(
            client.clone(),
            format!("{base}/webhooks/stripe"),
            stop.clone(),
            answers.clone(),
        ))))
        .collect();

    let mut resumed = Vec::new();
    for mode in ["fast", "immediate"] {
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.restart(mode).await.expect("restart PostgreSQL");
        let back = db_now(&pool).await;
        let first: chrono::DateTime<chrono::Utc> = loop {
            let t: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
                "select min(finished_at) from penguin.jobs where finished_at > $1",
            )
            .bind(back)
            .fetch_one(&pool)
            .await
            .unwrap();
            if let Some(t) = t {
                break t;
            }
            assert!(
                db_now(&pool).await - back < chrono::Duration::seconds(5),
                "no job finished within 5 s of the {mode} restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        resumed.push((mode, (first - back).num_milliseconds()));
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon died with the database"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let restarted_at = Instant::now();

    let accepted = answers.accepted.lock().await.clone();
    wait_for(
        &pool,
        "select not exists (select 1 from penguin.jobs where state <> 'completed')",
        Duration::from_secs(120),
        "every job completed after the restarts",
    )
    .await;
    let missing = count(
        &pool,
        &format!(
            "select count(*) from unnest('{{{}}}'::bigint[]) a(id)
              where not exists (select 1 from penguin.jobs j where j.id = a.id and j.state = 'completed')",
            accepted
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    )
    .await;
    assert_eq!(missing, 0, "jobs answered 2xx and then lost");
    let events = answers.events_stored.lock().await.clone();
    assert!(!events.is_empty(), "no webhook was stored at all");
    let events_missing = count(
        &pool,
        &format!(
            "select count(*) from unnest('{{{}}}'::text[]) a(event_id)
              where not exists (
                    select 1 from penguin.inbound_events e
                      join penguin.jobs j on j.kind = 'stripe.event'
                                         and (j.payload->>'inbound_event_id')::bigint = e.id
                     where e.provider = 'stripe' and e.event_id = a.event_id
                       and j.state = 'completed')",
            events.join(",")
        ),
    )
    .await;
    assert_eq!(
        events_missing, 0,
        "webhooks answered 200 and then lost (or their job never completed)"
    );
    assert_eq!(
        count(&pool, "select count(*) from penguin.payments").await,
        events.len() as i64,
        "one payment row per stored event"
    );
    assert_eq!(sink.calls.called(), 2000, "every slow job called");
    assert_eq!(
        count(&pool, "select count(*) from penguin.dead_letters").await,
        0
    );
    let other = answers.other_errors.lock().await.clone();
    assert!(other.is_empty(), "answers other than 2xx/503: {other:?}");

    // idle wake-up: LISTEN and the idle marks are back within 2 s
    let since = restarted_at.elapsed();
    if since < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_secs(2) - since).await;
    }
    let mut wakeups = Vec::new();
    for probe in 0..5 {
        let id: i64 = sqlx::query_scalar("select penguin.enqueue('noop', $1)")
            .bind(json!({ "probe": probe }))
            .fetch_one(&pool)
            .await
            .unwrap();
        wait_for(
            &pool,
            &format!("select state = 'completed' from penguin.jobs where id = {id}"),
            Duration::from_secs(10),
            "the probe to run",
        )
        .await;
        let ms: f64 = sqlx::query_scalar(
            "select extract(epoch from attempted_at - created_at)::float8 * 1000 from penguin.jobs where id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        wakeups.push(ms);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wakeups.sort_by(|a, b| a.total_cmp(b));
    let median_wakeup = wakeups[wakeups.len() / 2];
    assert!(
        median_wakeup < 50.0,
        "idle wake-up after the restarts: {wakeups:?} ms (poll interval is 1 s: LISTEN is not back)"
    );

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status:?}");
    println!(
        "chaos b (PostgreSQL restarts): resumed after {resumed:?} ms; {} enqueues and {} webhooks answered 2xx, \
         all kept; {} answered 503 while the database was away; idle wake-up {median_wakeup:.1} ms (median of 5) afterwards",
        accepted.len(),
        events.len(),
        answers.unavailable.load(Ordering::Relaxed)
    );
    pool.close().await;
    let _ = cluster.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
