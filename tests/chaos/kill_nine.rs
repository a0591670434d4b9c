//! Experiment a: three daemon processes work 20,000 jobs of mixed kinds (noop, and
//! http.request to a local sink that counts each job's calls and answers in 20-200 ms);
//! one daemon is SIGKILLed and restarted twice. Every job must complete, none may reach
//! the dead letters, the sink's duplicate calls may not exceed what the killed daemon held
//! at the kills, and a job claimed but never started may not be charged an attempt.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use penguin_jobs::queue::{self, NewJob};
use serde_json::json;

use crate::support;
use crate::support::daemon::{config, count, register_kinds, spawn_daemon, wait_for};

const CONFIG: &str = "[egress]\nallow = [\"127.0.0.1\"]\n[daemon]\npoll_interval = \"200ms\"\nlease = \"3s\"\nrescue_interval = \"250ms\"\nshutdown_grace = \"10s\"\n[queues.default]\nconcurrency = 64\n[maintenance]\nprune = false\n[oauth]\nrefresh = false\n[api_keys]\nrotation = false\n";

fn kill(child: &mut Child, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
}

async fn exit_of(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "daemon {} did not exit",
            child.id()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn kill_nine_of_one_of_three_daemons_loses_nothing_and_charges_no_unstarted_job() {
    let db = support::test_db().await;
    let sink = crate::sink::start().await;
    register_kinds(&db.pool, &config(CONFIG)).await;
    let dir = tempdir();
    let config_path = dir.join("jobs.toml");
    std::fs::write(&config_path, CONFIG).unwrap();

    let total: u64 = if crate::long_mode() { 100_000 } else { 20_000 };
    let jobs: Vec<NewJob> = (0..total)
        .map(|n| {
            if n % 2 == 0 {
                NewJob::new("noop", json!({ "n": n }))
            } else {
                NewJob::new(
                    "http.request",
                    json!({ "method": "POST", "url": format!("{}/job/{n}", sink.url), "body": {"n": n} }),
                )
            }
        })
        .collect();
    let mut conn = db.pool.acquire().await.unwrap();
    for chunk in jobs.chunks(1000) {
        queue::enqueue_many(&mut conn, chunk).await.unwrap();
    }
    drop(conn);

    let started = Instant::now();
    let log = |name: &str| dir.join(name);
    let mut daemons: Vec<crate::support::daemon::DaemonProcess> = (0..3)
        .map(|i| spawn_daemon(&config_path, &db.url, &log(&format!("d{i}.log"))))
        .collect();
    let mut held_at_kills = 0;
    let mut unstarted_at_kills = 0;
    // calls the sink was answering at the kills, all three daemons' (for the report)
    let mut in_flight_at_kills = 0;
    for (round, share) in [(1, 0.25), (2, 0.6)] {
        let target = (total as f64 * share) as i64;
        wait_for(
            &db.pool,
            &format!("select count(*) >= {target} from penguin.jobs where state = 'completed'"),
            Duration::from_secs(120),
            "a share of the jobs to complete before the kill",
        )
        .await;
        let victim = daemons[0].id();
        in_flight_at_kills += sink.calls.in_flight();
        kill(&mut daemons[0], "-KILL");
        exit_of(&mut daemons[0], Duration::from_secs(10)).await;
        let mine = format!("leased_by like '%:{victim}:%' and state = 'running'");
        held_at_kills += count(
            &db.pool,
            &format!("select count(*) from penguin.jobs where {mine} and kind = 'http.request'"),
        )
        .await;
        unstarted_at_kills += count(
            &db.pool,
            &format!("select count(*) from penguin.jobs where {mine} and started_at is null"),
        )
        .await;
        daemons[0] = spawn_daemon(&config_path, &db.url, &log(&format!("d0-{round}.log")));
    }
    wait_for(
        &db.pool,
        &format!("select count(*) = {total} from penguin.jobs where state = 'completed'"),
        Duration::from_secs(240),
        "every job completed",
    )
    .await;
    let took = started.elapsed();
    for d in &mut daemons {
        kill(d, "-TERM");
    }
    for d in &mut daemons {
        let status = exit_of(d, Duration::from_secs(30)).await;
        assert!(status.success(), "{status:?}");
    }

    assert_eq!(
        count(&db.pool, "select count(*) from penguin.dead_letters").await,
        0
    );
    assert_eq!(
        sink.calls.called() as u64,
        total / 2,
        "every http job called"
    );
    let duplicates = sink.calls.duplicates();
    assert!(
        duplicates <= held_at_kills as u64,
        "{duplicates} duplicate calls, but the killed daemon held only {held_at_kills} http jobs"
    );
    // every attempt charged was one a handler started: attempts = 1 + charged rescues
    let overcharged = count(
        &db.pool,
        "select count(*) from penguin.jobs j
          where attempt <> 1 + (select count(*) from jsonb_array_elements(j.errors) e
                                 where e->>'class' = 'lease_expired')",
    )
    .await;
    assert_eq!(
        overcharged, 0,
        "jobs charged for attempts they never started"
    );
    let refunded = count(
        &db.pool,
        "select count(*) from penguin.jobs where errors @> '[{\"class\": \"lease_expired_unstarted\"}]'",
    )
    .await;
    println!(
        "chaos a (kill -9, 3 daemons): {total} jobs in {:.1} s ({:.0}/s) with 2 kills; 0 lost, 0 dead letters; \
         {duplicates} duplicate calls <= {held_at_kills} http jobs held by the killed daemon \
         ({in_flight_at_kills} calls in flight at the kills, all daemons); \
         {refunded} rescued jobs not charged ({unstarted_at_kills} unstarted at the kills)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let dir = Path::new("/tmp").join(format!(
        "penguin-jobs-chaos-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
