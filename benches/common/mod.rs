//! Shared by the benchmarks (`mod common;`): command-line options, medians, a fresh database per run on the
//! benchmark's own cluster, and a daemon process that is stopped (SIGTERM) when dropped.

#![allow(dead_code)]

use std::process::{Child, Command};

use penguin_jobs::embedded_pg::EmbeddedPostgres;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The value after `--name` on the command line, if any.
pub fn arg<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .and_then(|v| v.parse().ok())
}

/// The median of `values` (the upper one of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A spawned `penguin-jobs` process, stopped with SIGTERM and awaited on drop.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Drops and creates database `name` on `cluster`: a pool of `connections` on it, and its URL.
pub async fn fresh_database(
    cluster: &EmbeddedPostgres,
    name: &str,
    connections: u32,
) -> (PgPool, String) {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&cluster.url("postgres"))
        .await
        .unwrap();
    for sql in [
        format!("drop database if exists {name}"),
        format!("create database {name}"),
    ] {
        sqlx::query(&sql).execute(&admin).await.unwrap();
    }
    admin.close().await;
    let url = cluster.url(name);
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect(&url)
        .await
        .unwrap();
    (pool, url)
}

/// Waits (at most a minute) until no autovacuum worker runs on the cluster: the work of
/// the phases before would otherwise share the cores with the next measurement.
pub async fn wait_for_autovacuum(pool: &PgPool) {
    for _ in 0..600 {
        let busy: bool = sqlx::query_scalar(
            "select exists (select 1 from pg_stat_activity where backend_type = 'autovacuum worker')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if !busy {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eprintln!("  autovacuum still running after a minute; measuring anyway");
}

/// Vacuums every database of the cluster and waits (at most a minute) until no autovacuum
/// worker runs, so that a drain measured next does not share the cores with the cleanup of
/// the work before it (the drain before ours, or ours before the peer's). Prints how long.
pub async fn quiet_cluster(cluster: &EmbeddedPostgres) {
    let began = std::time::Instant::now();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&cluster.url("postgres"))
        .await
        .unwrap();
    let names: Vec<String> = sqlx::query_scalar(
        "select datname from pg_database where datallowconn and not datistemplate",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    for name in names {
        let db = PgPoolOptions::new()
            .max_connections(1)
            .connect(&cluster.url(&name))
            .await
            .unwrap();
        sqlx::query("vacuum").execute(&db).await.unwrap();
        db.close().await;
    }
    wait_for_autovacuum(&admin).await;
    admin.close().await;
    eprintln!(
        "  cluster vacuumed and quiet in {:.1} s",
        began.elapsed().as_secs_f64()
    );
}

/// `SHOW name` for each of `names`, as a JSON object of name to value.
pub async fn show_settings(
    pool: &sqlx::PgPool,
    names: &[&str],
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for name in names {
        let value: String = sqlx::query_scalar(&format!("show {name}"))
            .fetch_one(pool)
            .await
            .unwrap();
        out.insert((*name).into(), value.into());
    }
    out
}

/// The server settings a figure depends on, read back from the running cluster (not
/// assumed from how it was started).
pub async fn server_settings(cluster: &EmbeddedPostgres) -> serde_json::Value {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&cluster.url("postgres"))
        .await
        .unwrap();
    let out = show_settings(
        &pool,
        &[
            "server_version",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "shared_buffers",
            "max_wal_size",
            "autovacuum_naptime",
        ],
    )
    .await;
    pool.close().await;
    out.into()
}
