//! Shared by every integration test binary (`mod support;`).
//!
//! [`test_db`] gives each test a fresh, empty, migrated database:
//!
//! - With `DATABASE_URL` set, databases are created on that server (the role
//!   needs CREATEDB). They are named `penguin_test_<random>` and are not
//!   dropped afterwards (drop them with
//!   `select 'drop database ' || datname || ';' from pg_database where datname like 'penguin\_test\_%'`).
//! - Otherwise ONE throwaway embedded cluster is started per test binary
//!   process (in `/tmp/penguin-jobs-tmp-<pid>-<random>`, fsync off); its
//!   watchdog stops it and deletes the directory when the process exits.
//!
//! Migrations run once per test binary into a template database
//! `penguin_template_<hash of the test binary path>`; each test clones it with
//! `CREATE DATABASE ... TEMPLATE`. On a shared server, test binaries running at
//! the same time serialise on advisory locks: exclusive while (re)building a
//! template, shared while cloning it. A template built by the same test binary
//! build (path, size and mtime recorded in the database comment) is reused.
//!
//! Most tests set up through [`app::TestApp`] (database, runtime, shim, fake provider,
//! typed reads and waits); [`daemon`] holds the lower-level pieces (configs, the runtime
//! alone, daemon processes), [`credentials`] master keys and the OAuth server,
//! [`fake_provider`] the local stand-in for HTTP providers.

#![allow(dead_code)]

pub mod app;
pub mod credentials;
pub mod daemon;
pub mod fake_provider;
pub mod node;
pub mod python;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use penguin_jobs::embedded_pg::EmbeddedPostgres;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgConnection, PgPool};

/// Calls `check` every 20 ms until it is true: how long that took, or `None` once
/// `limit` has passed without it.
pub async fn poll_until(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A scratch directory under the system's temp directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// `penguin-jobs-{prefix}-{pid}-{random}`, created empty.
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "penguin-jobs-{prefix}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// Writes `name` and returns `"file:PATH"`, as the config names a secret.
    pub fn secret_file(&self, name: &str, value: &str) -> String {
        std::fs::write(self.0.join(name), value).unwrap();
        self.file_ref(name)
    }

    /// `"file:PATH"` of `name` in this directory.
    pub fn file_ref(&self, name: &str) -> String {
        format!("file:{}", self.0.join(name).display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Maximum connections of each test's pool.
const POOL_SIZE: u32 = 10;

/// A fresh migrated database for one test.
pub struct TestDb {
    /// Pool on the database (at most 10 connections).
    pub pool: PgPool,
    /// URL of the database, e.g. for `DATABASE_URL` of a spawned daemon.
    pub url: String,
    /// Database name.
    pub name: String,
}

/// A fresh, empty-but-migrated database (see the module docs).
pub async fn test_db() -> TestDb {
    let template = template().await;
    let key = lock_key(template);
    let name = format!("penguin_test_{:016x}", rand::random::<u64>());

    let mut admin = admin_connection().await;
    admin
        .execute(sqlx::query("select pg_advisory_lock_shared($1)").bind(key))
        .await
        .expect("take shared template lock");
    admin
        .execute(format!(r#"create database "{name}" template "{template}""#).as_str())
        .await
        .unwrap_or_else(|e| panic!("create test database {name} from {template}: {e}"));
    admin
        .execute(sqlx::query("select pg_advisory_unlock_shared($1)").bind(key))
        .await
        .expect("release shared template lock");
    let _ = admin.close().await;

    let url = server_url(&name);
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to test database {name}: {e}"));
    TestDb { pool, url, name }
}

/// URL of `database` on the test server (`DATABASE_URL` with its database
/// replaced, or the embedded cluster's socket URL).
pub fn server_url(database: &str) -> String {
    match server() {
        Server::External { url } => with_database(url, database),
        Server::Embedded(pg) => pg.url(database),
    }
}

enum Server {
    External { url: String },
    Embedded(EmbeddedPostgres),
}

/// The server for this test binary. The embedded cluster is started on a
/// dedicated thread with its own short-lived runtime: each `#[tokio::test]`
/// has its own runtime, and the cluster must outlive all of them (it does not
/// depend on any runtime once started).
fn server() -> &'static Server {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Ok(Server::External { url }),
        _ => std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot build a runtime: {e}"))?;
            rt.block_on(EmbeddedPostgres::start_temporary())
                .map(Server::Embedded)
                .map_err(|e| format!("cannot start embedded PostgreSQL for tests: {e}"))
        })
        .join()
        .unwrap_or_else(|_| Err("embedded PostgreSQL start panicked".into())),
    });
    match server {
        Ok(server) => server,
        Err(e) => panic!("{e}"),
    }
}

/// Connection used to create databases: the `DATABASE_URL` database itself,
/// or `postgres` on the embedded cluster.
pub async fn admin_connection() -> PgConnection {
    let url = match server() {
        Server::External { url } => url.clone(),
        Server::Embedded(pg) => pg.url("postgres"),
    };
    PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to the test server: {e}"))
}

/// Name of this binary's migrated template, built at most once per process.
async fn template() -> &'static str {
    static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TEMPLATE.get_or_init(build_template).await
}

async fn build_template() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut hasher = DefaultHasher::new();
    exe.hash(&mut hasher);
    let name = format!("penguin_template_{:016x}", hasher.finish());
    // Identifies this build of the test binary (and so of the migrations).
    let build_id = std::fs::metadata(&exe)
        .map(|m| format!("{} {} {:?}", exe.display(), m.len(), m.modified().ok()))
        .unwrap_or_else(|_| format!("{} {}", exe.display(), rand::random::<u64>()));
    let key = lock_key(&name);

    let mut admin = admin_connection().await;
    admin
        .execute(sqlx::query("select pg_advisory_lock($1)").bind(key))
        .await
        .expect("take exclusive template lock");
    let existing: Option<Option<String>> = sqlx::query_scalar(
        "select shobj_description(oid, 'pg_database') from pg_database where datname = $1",
    )
    .bind(&name)
    .fetch_optional(&mut admin)
    .await
    .expect("look up template database");
    if existing.flatten().as_deref() != Some(build_id.as_str()) {
        admin
            .execute(format!(r#"drop database if exists "{name}""#).as_str())
            .await
            .unwrap_or_else(|e| panic!("drop stale template {name}: {e}"));
        admin
            .execute(format!(r#"create database "{name}""#).as_str())
            .await
            .unwrap_or_else(|e| panic!("create template {name}: {e}"));
        // No connection may remain on the template when it is cloned: close
        // the pool before releasing the lock.
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&server_url(&name))
            .await
            .unwrap_or_else(|e| panic!("connect to template {name}: {e}"));
        let migrated = penguin_jobs::queue::migrate(&pool).await;
        pool.close().await;
        if let Err(e) = migrated {
            panic!("migrate template {name}: {e}");
        }
        admin
            .execute(
                format!(
                    "comment on database \"{name}\" is '{}'",
                    build_id.replace('\'', "''")
                )
                .as_str(),
            )
            .await
            .unwrap_or_else(|e| panic!("mark template {name}: {e}"));
    }
    admin
        .execute(sqlx::query("select pg_advisory_unlock($1)").bind(key))
        .await
        .expect("release exclusive template lock");
    let _ = admin.close().await;
    name
}

/// Advisory lock key of a template.
fn lock_key(template: &str) -> i64 {
    let mut hasher = DefaultHasher::new();
    ("penguin-jobs test template", template).hash(&mut hasher);
    hasher.finish() as i64
}

/// `url` with its database (the path) replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let query_start = after.find(['?', '#']).unwrap_or(after.len());
    format!("{scheme}://{authority}/{database}{}", &after[query_start..])
}
