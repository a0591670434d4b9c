//! The OpenAPI documents against the running daemon: schemathesis (a property-based
//! client, from PyPI) generates requests from each listener's `/v1/openapi.json` and fails
//! on any 5xx, any status code, content type or body the document does not describe.
//! Plus what the documents must hold for a typed client: a schema per job kind.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use penguin_jobs::daemon::{Daemon, Roles};
use penguin_jobs::queue::{self, NewJob};
use serde_json::{Value, json};
use support::TempDir;
use support::credentials::master_key_file;

/// The schemathesis release the checks are written against.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

const SHIM_TOKEN: &str = "shim-token-for-tests-0123456789abcdefghijklm";
const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789abcdefghijk";

/// What every answer is checked for.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

/// The command line of schemathesis' `st` (its console script names the path the
/// virtualenv was built at, before it was moved into place: Python runs its entry point).
const ST_MAIN: &str =
    "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())";

/// The Python of a virtualenv with schemathesis, installed on first use.
fn schemathesis() -> PathBuf {
    static ST: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match ST.get_or_init(|| {
        support::python::venv("schemathesis-venv", SCHEMATHESIS, "schemathesis")
            .map(|v| v.join("bin/python"))
    }) {
        Ok(st) => st.clone(),
        Err(e) => panic!(
            "the OpenAPI conformance test runs schemathesis ({SCHEMATHESIS}) and needs Python 3 \
             with venv and PyPI: {e}"
        ),
    }
}

/// A fully configured daemon (shim, admin listener; no workers, so that generated jobs
/// only wait) with a little of everything in its database.
struct Running {
    shim: String,
    admin: String,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    dir: TempDir,
    _db: support::TestDb,
}

async fn running_daemon() -> Running {
    let db = support::test_db().await;
    let dir = TempDir::new("openapi");
    let (_, master) = master_key_file(&dir, "master.key");
    let config = support::daemon::config(&format!(
        "[daemon]\ndata_dir = \"{data}\"\n[database]\nurl = \"{url}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\napi_tokens = [\"{shim}\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntokens = [\"{admin}\"]\n\
         [secrets]\nmaster_key = \"{master}\"\n\
         [schedules.nightly]\ncron = \"0 3 * * *\"\nkind = \"noop\"\n",
        data = dir.path().display(),
        url = db.url,
        shim = dir.secret_file("shim.token", SHIM_TOKEN),
        admin = dir.secret_file("admin.token", ADMIN_TOKEN),
    ));
    let roles = Roles {
        workers: false,
        ..Roles::default()
    };
    let daemon = Daemon::build(config, roles).await.unwrap();
    let shim = format!("http://{}", daemon.local_addr().unwrap());
    let admin = format!("http://{}", daemon.admin_addr().unwrap());
    // rows for the ids the generated requests may hit
    for n in 0..3 {
        let id = queue::enqueue(&db.pool, &NewJob::new("noop", json!({ "n": n })))
            .await
            .unwrap();
        if n == 0 {
            support::daemon::bury(&db.pool, id).await;
        }
    }
    sqlx::query(
        "insert into penguin.alerts (kind, subject_type, message)
         values ('key_test_failed', 'api_key', 'the stored key failed its test')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(daemon.run_until_stopped(shutdown.clone()));
    Running {
        shim,
        admin,
        shutdown,
        task,
        dir,
        _db: db,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Runs schemathesis against `base`'s document with `token`; panics with its report
/// when a check fails.
fn conforms(base: &str, token: &str, workdir: &std::path::Path) {
    let seed =
        std::env::var("PENGUIN_JOBS_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261201".into());
    let out = Command::new(schemathesis())
        .current_dir(workdir)
        .args(["-c", ST_MAIN, "run", &format!("{base}/v1/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", CHECKS])
        .args(["--max-examples", "40", "--workers", "2", "--seed", &seed])
        .args(["--generation-database", "none", "--no-color"])
        .output()
        .expect("schemathesis runs");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "schemathesis found answers the document does not describe (seed {seed}):\n{report}"
    );
    assert!(report.contains("passed"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_both_listeners_matches_their_openapi_documents() {
    let st = schemathesis();
    let daemon = running_daemon().await;
    let (shim, admin, dir) = (
        daemon.shim.clone(),
        daemon.admin.clone(),
        daemon.dir.path().to_path_buf(),
    );
    let checked = tokio::task::spawn_blocking(move || {
        assert!(st.exists());
        conforms(&shim, SHIM_TOKEN, &dir);
        conforms(&admin, ADMIN_TOKEN, &dir);
    })
    .await;
    daemon.stop().await;
    checked.unwrap();
}

#[tokio::test]
async fn the_documents_are_openapi_3_1_with_a_payload_schema_per_kind() {
    let daemon = running_daemon().await;
    let document = async |base: &str| -> Value {
        let answer = reqwest::get(format!("{base}/v1/openapi.json"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.json().await.unwrap()
    };
    let shim = document(&daemon.shim).await;
    let admin = document(&daemon.admin).await;
    daemon.stop().await;
    for doc in [&shim, &admin] {
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    }
    // the shim documents the public routes only, the admin listener its own
    assert!(shim["paths"].get("/v1/dead-letters").is_none());
    assert!(admin["paths"].get("/webhooks/{provider}").is_none());
    for path in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/webhooks/{provider}",
        "/readyz",
    ] {
        assert!(shim["paths"].get(path).is_some(), "shim: {path}");
    }
    for path in [
        "/v1/stats",
        "/v1/dead-letters/replay",
        "/v1/queues/{queue}/pause",
        "/metrics",
    ] {
        assert!(admin["paths"].get(path).is_some(), "admin: {path}");
    }
    // one request schema per kind, its payload the kind's own schema
    let schemas = &shim["components"]["schemas"];
    let variants = schemas["EnqueueRequest"]["oneOf"].as_array().unwrap();
    let kinds: Vec<&str> = variants
        .iter()
        .map(|v| {
            v["$ref"]
                .as_str()
                .unwrap()
                .trim_start_matches("#/components/schemas/enqueue.")
        })
        .collect();
    for kind in [
        "noop",
        "http.request",
        "mailgun.send",
        "sendgrid.send",
        "posthog.capture",
    ] {
        assert!(kinds.contains(&kind), "{kind} not in {kinds:?}");
    }
    let http = &schemas["payload.http.request"];
    assert_eq!(http["required"], json!(["url"]));
    assert_eq!(http["additionalProperties"], false);
    let email = &schemas["payload.mailgun.send"];
    assert_eq!(email["$ref"], "#/components/schemas/Email", "{email}");
    assert!(schemas["Email"]["properties"]["to"].is_object());
    assert_eq!(
        shim["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/EnqueueRequest"
    );
    // every reference resolves
    for doc in [&shim, &admin] {
        let mut refs = Vec::new();
        collect_refs(doc, &mut refs);
        for r in refs {
            let pointer = r.trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }
}

fn collect_refs(value: &Value, refs: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v.as_str()) {
                    ("$ref", Some(r)) => refs.push(r.to_string()),
                    _ => collect_refs(v, refs),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
        _ => {}
    }
}

#[test]
fn the_cli_prints_both_documents_without_a_database() {
    let dir = TempDir::new("openapi-cli");
    let config = dir.path().join("jobs.toml");
    std::fs::write(&config, "").unwrap();
    for (args, path) in [
        (&["openapi"][..], "/v1/jobs"),
        (&["openapi", "--admin"][..], "/v1/stats"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_penguin-jobs"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(doc["paths"].get(path).is_some(), "{args:?}");
    }
}
