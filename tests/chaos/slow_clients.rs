//! Experiment e: 1,000 slow clients hold connections to the shim (each sends a request
//! header a byte at a time) while jobs are enqueued through SQL, under the common soft
//! limit of 1,024 open files. Every database connection of the daemon is cut meanwhile,
//! so it must reconnect with a thousand sockets open. The workers and the database must
//! not notice: every job drains, the daemon stays up and stops cleanly. (How the shim
//! itself answers meanwhile is the security issue's; it is printed, not asserted.)

use std::time::{Duration, Instant};

use penguin_jobs::queue::{self, NewJob};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::support;
use crate::support::daemon::{config, count, register_kinds, wait_for};

const CONNECTIONS: usize = 1000;

#[tokio::test]
async fn a_thousand_slow_clients_of_the_shim_leave_the_workers_and_the_database_alone() {
    // the test process holds the sockets too
    penguin_jobs::process::raise_open_files_limit().unwrap();
    let db = support::test_db().await;
    let port = crate::free_port();
    let toml = format!(
        "[daemon]\npoll_interval = \"200ms\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
         api_tokens = [\"env:CHAOS_API_TOKEN\"]\n[queues.default]\nconcurrency = 32\n\
         [maintenance]\nprune = false\n[oauth]\nrefresh = false\n[api_keys]\nrotation = false\n"
    );
    register_kinds(&db.pool, &config(&toml)).await;
    let dir = std::env::temp_dir().join(format!(
        "penguin-jobs-chaos-e-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("jobs.toml"), &toml).unwrap();
    // the daemon starts under a soft limit of 1,024 open files, as under a default login
    let mut run = std::process::Command::new("sh");
    run.arg("-c")
        .arg("ulimit -Sn 1024 && exec \"$0\" --config \"$1\" run")
        .arg(env!("CARGO_BIN_EXE_penguin-jobs"))
        .arg(dir.join("jobs.toml"));
    let mut daemon = crate::spawn_with_shim(run, &db.url, &dir);
    let base = format!("http://127.0.0.1:{port}");
    let client = crate::wait_for_shim(&base, Duration::from_secs(5)).await;

    // the slow clients: a request line, then one byte of header per second
    let mut sockets = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(mut s) => {
                let _ = s.write_all(b"POST /v1/jobs HTTP/1.1\r\nX-Slow: ").await;
                sockets.push(s);
            }
            Err(e) => panic!("connect {} of {CONNECTIONS}: {e}", sockets.len() + 1),
        }
    }
    let dribble = tokio::spawn(async move {
        loop {
            for s in &mut sockets {
                let _ = s.write_all(b"a").await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    // every database connection of the daemon is cut: it must reconnect now
    let cut: i64 = sqlx::query_scalar(
        "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
                                where datname = current_database() and pid <> pg_backend_pid()) t",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let jobs: Vec<NewJob> = (0..5000)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    let started = Instant::now();
    let mut conn = db.pool.acquire().await.unwrap();
    for chunk in jobs.chunks(500) {
        queue::enqueue_many(&mut conn, chunk).await.unwrap();
    }
    drop(conn);
    wait_for(
        &db.pool,
        "select count(*) = 5000 from penguin.jobs where state = 'completed'",
        Duration::from_secs(60),
        "every job to drain while the slow clients hold the shim",
    )
    .await;
    let drained = started.elapsed();
    // a normal client meanwhile (reported; the shim's own limits are the security issue's)
    let probe = Instant::now();
    let shim = client
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(crate::API_TOKEN)
        .json(&json!({"kind": "noop", "payload": {}}))
        .send()
        .await
        .map(|r| r.status().to_string())
        .unwrap_or_else(|e| format!("error: {e}"));
    let probe_ms = probe.elapsed().as_millis();
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon died under the slow clients"
    );
    // SIGTERM with the slow clients still connected: they must not hold the exit
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        if stopping.elapsed() > Duration::from_secs(30) {
            let _ = daemon.kill();
            panic!("the daemon did not exit within 30 s of SIGTERM with slow clients connected");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stop_secs = stopping.elapsed().as_secs_f64();
    dribble.abort();
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        !log.contains("Too many open files"),
        "the daemon ran out of files:\n{log}"
    );
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.dead_letters").await,
        0
    );
    println!(
        "chaos e (slow clients): {CONNECTIONS} slow connections held, {cut} database connections cut; \
         5,000 jobs drained in {:.2} s; a normal POST /v1/jobs meanwhile: {shim} in {probe_ms} ms; \
         exit {stop_secs:.1} s after SIGTERM with the slow clients still connected",
        drained.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
