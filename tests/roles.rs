//! Least privilege in the database. The owner role migrates; the runtime role, set up by the
//! SQL of `roles print-sql`, runs the real daemon (`run --no-migrate`) and can neither alter,
//! drop nor truncate a table, nor rewrite the audit log; every table of schema penguin has
//! its line in the grant list; a runtime-role daemon refuses a schema that is not current.
//! On the embedded cluster the daemon works as the runtime role, and the server sees none
//! of the daemon's environment.
//!
//! Roles are cluster-wide: each test names its own. On a server given by `DATABASE_URL`
//! the test role needs CREATEROLE besides CREATEDB.

mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use penguin_jobs::daemon::{Daemon, Roles};
use penguin_jobs::queue::grants::{DEFAULT_RUNTIME_ROLE, table_grants};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};
use support::TempDir;
use support::daemon::{stop_daemon, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_penguin-jobs");
const LIMIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "roles-test-api-token-0123456789-0123456789-01";
const OWNER_PASSWORD: &str = "owner-password";
const RUNTIME_PASSWORD: &str = "runtime-password";

/// A name no other test uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}_{:012x}", rand::random::<u64>() >> 16)
}

/// URL of `database` on the test server as `user`.
fn url_as(database: &str, user: &str, password: &str) -> String {
    let mut url = url::Url::parse(&support::server_url(database)).expect("server URL parses");
    url.set_username(user).unwrap();
    url.set_password(Some(password)).unwrap();
    url.to_string()
}

async fn admin(sql: &str) {
    let mut admin = support::admin_connection().await;
    admin
        .execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// Runs the binary with `config` against `url`.
fn cli(config: &Path, url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    support::daemon::cli(config, url, args, stdin)
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A new database owned by a new owner role (not a superuser) and migrated by it with
/// `penguin-jobs migrate`, and a runtime role set up by applying `roles print-sql` as the
/// owner, then given LOGIN.
struct Deployment {
    dir: TempDir,
    database: String,
    owner: String,
    runtime: String,
    owner_url: String,
    runtime_url: String,
}

impl Deployment {
    async fn new(toml: &str) -> Self {
        let dir = TempDir::new("roles");
        std::fs::write(dir.path().join("jobs.toml"), toml).unwrap();
        let (database, owner, runtime) = (unique("pj_roles"), unique("pj_owner"), unique("pj_rt"));
        admin(&format!(
            "create role {owner} login createrole password '{OWNER_PASSWORD}'"
        ))
        .await;
        admin(&format!("create database {database} owner {owner}")).await;
        let owner_url = url_as(&database, &owner, OWNER_PASSWORD);
        let runtime_url = url_as(&database, &runtime, RUNTIME_PASSWORD);
        let deployment = Self {
            dir,
            database,
            owner,
            runtime,
            owner_url,
            runtime_url,
        };
        deployment.cli_as_owner(&["migrate"]);
        let script =
            deployment.cli_as_owner(&["roles", "print-sql", "--runtime-role", &deployment.runtime]);
        let owner_pool = pool(&deployment.owner_url).await;
        sqlx::raw_sql(&script)
            .execute(&owner_pool)
            .await
            .unwrap_or_else(|e| panic!("applying print-sql as the owner: {e}\n{script}"));
        owner_pool.close().await;
        admin(&format!(
            "alter role {} login password '{RUNTIME_PASSWORD}'",
            deployment.runtime
        ))
        .await;
        deployment
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("jobs.toml")
    }

    fn cli_as_owner(&self, args: &[&str]) -> String {
        ok(cli(&self.config(), &self.owner_url, args, None))
    }

    fn spawn_runtime_daemon(&self, args: &[&str]) -> Child {
        Command::new(BIN)
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env("DATABASE_URL", &self.runtime_url)
            .env("RUST_LOG", "info")
            .env_remove("PENGUIN_JOBS_MASTER_KEY")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("daemon.log")).unwrap())
            .spawn()
            .unwrap()
    }

    /// Waits until the daemon's pools run; panics with its log if it exits first.
    async fn wait_started(&self, daemon: &mut Child) {
        support::poll_until(LIMIT, async || {
            if let Some(status) = daemon.try_wait().unwrap() {
                panic!("the daemon exited ({status}):\n{}", self.log());
            }
            self.log().contains("worker pools started")
        })
        .await
        .unwrap_or_else(|| panic!("the daemon did not start:\n{}", self.log()));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Drops the database and both roles (nothing else refers to them).
    async fn drop(self) {
        admin(&format!("drop database {} with (force)", self.database)).await;
        admin(&format!("drop role {}", self.runtime)).await;
        admin(&format!("drop role {}", self.owner)).await;
    }
}

/// The SQLSTATE `sql` fails with, run on `pool`; panics if it succeeds.
async fn refusal(pool: &PgPool, sql: &str) -> String {
    match pool.execute(sql).await {
        Ok(_) => panic!("the runtime role was allowed: {sql}"),
        Err(sqlx::Error::Database(e)) => e.code().unwrap_or_default().into_owned(),
        Err(e) => panic!("{sql}: {e}"),
    }
}

async fn enqueue_sql(pool: &PgPool, kind: &str, payload: Value) -> i64 {
    sqlx::query_scalar("select penguin.enqueue($1, $2)")
        .bind(kind)
        .bind(payload)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("enqueue {kind} as the runtime role: {e}"))
}

/// POST /v1/jobs with `"wait"`, retried while the shim is not listening yet: the answer.
async fn enqueue_http(base: &str, body: Value) -> Value {
    let client = reqwest::Client::new();
    let mut answer = None;
    support::poll_until(LIMIT, async || {
        let sent = client
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await;
        if let Ok(response) = sent {
            answer = Some((
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            ));
        }
        answer.is_some()
    })
    .await
    .expect("the shim answers");
    let (status, answer) = answer.unwrap();
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test]
async fn a_daemon_running_as_the_runtime_role_works_and_cannot_alter_tables_or_rewrite_the_audit_log()
 {
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = TempDir::new("roles-keys");
    let (_, master_key) = support::credentials::master_key_file(&dir, "master.key");
    let token = dir.secret_file("token", TOKEN);
    let d = Deployment::new(&format!(
        "[daemon]\npoll_interval = \"100ms\"\n[http]\nlisten = \"{listen}\"\napi_tokens = [\"{token}\"]\n\
         [secrets]\nmaster_key = \"{master_key}\"\n"
    ))
    .await;
    let mut daemon = d.spawn_runtime_daemon(&["run", "--no-migrate"]);
    d.wait_started(&mut daemon).await;
    let runtime = pool(&d.runtime_url).await;

    // over HTTP: the shim stores the job, the workers complete it
    let answer = enqueue_http(
        &format!("http://{listen}"),
        json!({ "kind": "noop", "payload": {}, "wait": "30s" }),
    )
    .await;
    assert_eq!(answer["state"], "completed", "{answer}\n{}", d.log());
    // over SQL: a job, the maintenance jobs that prune and sweep, and a bad payload
    let mut completing = vec![enqueue_sql(&runtime, "noop", json!({})).await];
    for kind in [
        "maintenance.prune",
        "oauth.refresh_sweep",
        "apikey.rotation_sweep",
    ] {
        completing.push(enqueue_sql(&runtime, kind, json!({})).await);
    }
    let bad = enqueue_sql(&runtime, "http.request", json!({ "bogus": true })).await;
    for id in completing {
        let sql = format!(
            "select coalesce((select state = 'completed' from penguin.jobs where id = {id}), false)"
        );
        wait_for(
            &runtime,
            &sql,
            LIMIT,
            &format!("job {id} completed\n{}", d.log()),
        )
        .await;
    }
    let sql = format!("select exists (select 1 from penguin.dead_letters where job_id = {bad})");
    wait_for(&runtime, &sql, LIMIT, "the bad job dead-lettered").await;

    // the CLI as the runtime role writes the audit log
    ok(cli(
        &d.config(),
        &d.runtime_url,
        &["keys", "set", "sendgrid"],
        Some("SG.key\n"),
    ));
    let audited: i64 = sqlx::query_scalar("select count(*) from penguin.audit_log")
        .fetch_one(&runtime)
        .await
        .unwrap();
    assert!(audited > 0, "keys set wrote no audit entry");

    // what the runtime role may never do
    for sql in [
        "alter table penguin.audit_log disable trigger all",
        "update penguin.audit_log set outcome = 'failed'",
        "delete from penguin.audit_log",
        "truncate penguin.audit_log",
        "drop table penguin.jobs",
        "truncate penguin.jobs",
        "alter table penguin.jobs add column sneaky int",
        "create table penguin.sneaky (id int)",
    ] {
        assert_eq!(refusal(&runtime, sql).await, "42501", "{sql}");
    }
    let owned: i64 = sqlx::query_scalar(
        "select (select count(*) from pg_class where relowner = r.oid)
              + (select count(*) from pg_proc where proowner = r.oid)
              + (select count(*) from pg_namespace where nspowner = r.oid)
           from pg_roles r where rolname = current_user",
    )
    .fetch_one(&runtime)
    .await
    .unwrap();
    assert_eq!(owned, 0, "the runtime role owns something");

    stop_daemon(&mut daemon);
    runtime.close().await;
    let log = d.log();
    assert!(!log.contains("permission denied"), "{log}");
    d.drop().await;
}

#[tokio::test]
async fn every_table_sequence_and_function_of_schema_penguin_is_covered_by_the_printed_grants() {
    let db = support::test_db().await;
    let dir = TempDir::new("roles-print");
    std::fs::write(dir.path().join("jobs.toml"), "").unwrap();
    let runtime = unique("pj_rt");
    let script = ok(cli(
        &dir.path().join("jobs.toml"),
        &db.url,
        &["roles", "print-sql", "--runtime-role", &runtime],
        None,
    ));
    // idempotent: applied twice
    for _ in 0..2 {
        sqlx::raw_sql(&script)
            .execute(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("applying print-sql: {e}\n{script}"));
    }

    let listed = table_grants().unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "select relname::text from pg_class
          where relnamespace = 'penguin'::regnamespace and relkind in ('r', 'p', 'v', 'm', 'f')
          order by 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for table in &tables {
        assert!(
            listed.iter().any(|g| &g.table == table),
            "penguin.{table} has no line in migrations/runtime_grants.txt"
        );
    }
    for grant in &listed {
        assert!(
            tables.contains(&grant.table),
            "penguin.{} does not exist",
            grant.table
        );
        for privilege in [
            "select",
            "insert",
            "update",
            "delete",
            "truncate",
            "references",
            "trigger",
        ] {
            let has: bool = sqlx::query_scalar("select has_table_privilege($1, $2, $3)")
                .bind(&runtime)
                .bind(format!("penguin.{}", grant.table))
                .bind(privilege)
                .fetch_one(&db.pool)
                .await
                .unwrap();
            let granted = grant.privileges.iter().any(|p| p == privilege);
            assert_eq!(has, granted, "{privilege} on penguin.{}", grant.table);
        }
    }
    let uncovered: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_class c
          where c.relnamespace = 'penguin'::regnamespace
            and case when c.relkind = 'S' then not has_sequence_privilege($1, c.oid, 'usage') end
         union all
         select p.oid::regprocedure::text from pg_proc p
          where p.pronamespace = 'penguin'::regnamespace
            and not has_function_privilege($1, p.oid, 'execute')
         union all
         select 'schema penguin' where not has_schema_privilege($1, 'penguin', 'usage')
                                    or has_schema_privilege($1, 'penguin', 'create')
         union all
         select '_sqlx_migrations' where not has_table_privilege($1, '_sqlx_migrations', 'select')",
    )
    .bind(&runtime)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(uncovered.is_empty(), "not covered: {uncovered:?}");
    db.pool.close().await;
    admin(&format!("drop database {} with (force)", db.name)).await;
    admin(&format!("drop role {runtime}")).await;
}

#[tokio::test]
async fn a_runtime_role_daemon_refuses_a_schema_that_is_not_current() {
    let d = Deployment::new("[daemon]\npoll_interval = \"100ms\"\n").await;
    let owner = pool(&d.owner_url).await;
    owner
        .execute("delete from _sqlx_migrations where version = (select max(version) from _sqlx_migrations)")
        .await
        .unwrap();
    owner.close().await;

    let mut daemon = d.spawn_runtime_daemon(&["run", "--no-migrate", "--no-http"]);
    let status = daemon.wait().unwrap();
    let log = d.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains("the database schema is not current"), "{log}");
    assert!(
        log.contains("run `penguin-jobs migrate` as the owner role"),
        "{log}"
    );

    // without --no-migrate the runtime role may not apply the missing migration either
    let mut daemon = d.spawn_runtime_daemon(&["run", "--no-http"]);
    let status = daemon.wait().unwrap();
    let log = d.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("start the daemon with `run --no-migrate`"),
        "{log}"
    );
    d.drop().await;
}

/// A config whose embedded cluster lives in `dir` (reachable by the `postgres` OS user when
/// the tests run as root).
fn embedded_config(dir: &TempDir) -> String {
    format!(
        "[daemon]\ndata_dir = \"{}\"\npoll_interval = \"100ms\"\n",
        dir.path().display()
    )
}

#[tokio::test]
async fn on_the_embedded_cluster_the_daemon_works_as_the_runtime_role() {
    let dir = TempDir::new("embedded-roles");
    let config = support::daemon::config(&embedded_config(&dir));
    let roles = Roles {
        migrate: true,
        http: false,
        workers: false,
        admin: false,
    };
    let daemon = Daemon::build(config, roles)
        .await
        .expect("the daemon starts");
    let user: String = sqlx::query_scalar("select current_user::text")
        .fetch_one(daemon.pool())
        .await
        .unwrap();
    assert_eq!(user, DEFAULT_RUNTIME_ROLE);
    let kinds: i64 = sqlx::query_scalar("select count(*) from penguin.kinds")
        .fetch_one(daemon.pool())
        .await
        .unwrap();
    assert!(kinds > 0, "the superuser migrated and wrote the kinds");
    let code = refusal(
        daemon.pool(),
        "alter table penguin.audit_log disable trigger all",
    )
    .await;
    assert_eq!(code, "42501");

    let stop = tokio_util::sync::CancellationToken::new();
    stop.cancel();
    daemon
        .run_until_stopped(stop)
        .await
        .expect("the daemon stops");
}

#[tokio::test]
async fn the_embedded_postgres_sees_none_of_the_daemons_environment() {
    let dir = TempDir::new("embedded-env");
    std::fs::write(dir.path().join("jobs.toml"), embedded_config(&dir)).unwrap();
    let master_key = penguin_jobs::secrets::MasterKey::generate().to_base64();
    let master_key = master_key.expose_secret();
    let log = dir.path().join("daemon.log");
    let secrets = [
        ("PENGUIN_JOBS_MASTER_KEY", master_key),
        ("MAILGUN_API_KEY", "marker-secret"),
        ("PGPASSWORD", "marker-pg-password"),
    ];
    let mut daemon = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("jobs.toml"))
        .args(["run", "--no-http"])
        .env_remove("DATABASE_URL")
        .envs(secrets)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    support::poll_until(LIMIT, async || read_log().contains("worker pools started"))
        .await
        .unwrap_or_else(|| panic!("the daemon did not start\n{}", read_log()));

    let pid_file = std::fs::read_to_string(dir.path().join("postgres/postmaster.pid")).unwrap();
    let pid = pid_file.lines().next().unwrap().trim();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let variables: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    stop_daemon(&mut daemon);
    assert!(
        variables.iter().any(|v| v.starts_with("PATH=")),
        "{variables:?}"
    );
    // what the daemon had (this process's environment and the secrets), passed on as is:
    // only the path, the locale and the time zone (pg_ctl sets a few PG* of its own)
    let mut daemon_env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    daemon_env.extend(secrets.iter().map(|(k, v)| format!("{k}={v}")));
    for v in &variables {
        assert!(
            !v.contains(master_key) && !v.contains("marker-"),
            "the postmaster's environment holds {v}"
        );
        let kept = ["PATH=", "LANG=", "LC_", "TZ="]
            .iter()
            .any(|p| v.starts_with(p));
        assert!(
            kept || !daemon_env.contains(v),
            "the postmaster's environment holds the daemon's {v}"
        );
    }
}

/// The horizon warning is for transactions of other roles (a report, `pg_dump` run by an
/// operator). `pg_stat_activity` shows the runtime role their `backend_xmin` but not their
/// `xact_start` nor state, so a warning on time held never fired for them; read through
/// `penguin.horizon_holders()`, whose owner `print-sql` let read all statistics, the
/// superuser's held snapshot is seen by pid, name, state and time held. Without that grant
/// the blind spot is named, and the daemon says so at start.
#[tokio::test]
async fn the_runtime_role_sees_a_horizon_held_by_another_role_or_says_it_cannot() {
    use penguin_jobs::queue::horizon;
    let d = Deployment::new("[daemon]\npoll_interval = \"100ms\"\n").await;
    let mut report = support::admin_connection().await;
    report
        .execute("set application_name = 'nightly-report'")
        .await
        .unwrap();
    report
        .execute("begin isolation level repeatable read")
        .await
        .unwrap();
    let report_pid: i32 = sqlx::query_scalar("select pg_backend_pid() from txid_current()")
        .fetch_one(&mut report)
        .await
        .unwrap();

    let runtime = pool(&d.runtime_url).await;
    let (xmin, started): (Option<String>, Option<String>) = sqlx::query_as(
        "select backend_xmin::text, xact_start::text from pg_stat_activity where pid = $1",
    )
    .bind(report_pid)
    .fetch_one(&runtime)
    .await
    .unwrap();
    assert!(
        xmin.is_some() && started.is_none(),
        "read directly, the runtime role sees another role's snapshot but not since when \
         (xmin {xmin:?}, xact_start {started:?}): a warning on time held never fired"
    );
    let holders = horizon::holders(&runtime, 10_000).await.unwrap();
    let seen = holders
        .iter()
        .find(|h| h.pid == Some(report_pid))
        .unwrap_or_else(|| panic!("pid {report_pid} not among {holders:?}"));
    assert_eq!(seen.name, "nightly-report");
    assert_eq!(seen.state.as_deref(), Some("idle in transaction"));
    assert!(seen.held_longer_than(std::time::Duration::ZERO), "{seen:?}");
    assert_eq!(horizon::blind_spot(&runtime).await.unwrap(), None);

    // without the grant: named, and the daemon warns at start
    admin(&format!("revoke pg_read_all_stats from {}", d.owner)).await;
    assert_eq!(
        horizon::blind_spot(&runtime).await.unwrap().as_deref(),
        Some(d.owner.as_str())
    );
    let mut daemon = d.spawn_runtime_daemon(&["run", "--no-migrate", "--no-http"]);
    d.wait_started(&mut daemon).await;
    let advice = format!("grant pg_read_all_stats to {}", d.owner);
    let warned = support::poll_until(LIMIT, async || d.log().contains(&advice)).await;
    stop_daemon(&mut daemon);
    assert!(warned.is_some(), "{}", d.log());
    report.execute("rollback").await.unwrap();
    runtime.close().await;
    d.drop().await;
}
