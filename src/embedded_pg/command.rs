//! Running the PostgreSQL binaries: as the server's OS user, from `/`, without the PG*
//! environment variables, and with a failure reported as the last line the program (or
//! the server log) wrote.
//!
//! Must never let a PG* variable of the caller's environment redirect a command to
//! another cluster, host or user than the one on its command line.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Output, Stdio};

use super::privileges::RunAs;
use super::{EmbeddedError, Result};

/// Environment variables that could make PostgreSQL tools act on something
/// else than what we pass on the command line.
const PG_ENV: &[&str] = &[
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGPASSWORD",
    "PGSERVICE",
    "PGSSLMODE",
    "PGCTLTIMEOUT",
];

/// A tokio command for a PostgreSQL binary, run as `run_as` if set, from `/`
/// (root's working directory may not be accessible), without PG* variables.
pub(super) fn pg_command(program: &Path, run_as: Option<RunAs>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    if let Some(r) = run_as {
        cmd.uid(r.uid).gid(r.gid);
    }
    cmd.current_dir("/").stdin(Stdio::null());
    for var in PG_ENV {
        cmd.env_remove(var);
    }
    cmd
}

pub(super) fn apply_std(cmd: &mut std::process::Command, run_as: Option<RunAs>) {
    if let Some(r) = run_as {
        cmd.uid(r.uid).gid(r.gid);
    }
    cmd.current_dir("/").stdin(Stdio::null());
    for var in PG_ENV {
        cmd.env_remove(var);
    }
}

/// Run to completion, capturing output; a non-zero exit is an error whose
/// detail is the last line of stderr (or stdout).
pub(super) async fn run(mut cmd: tokio::process::Command, program: &str) -> Result<Output> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|error| EmbeddedError::Spawn {
            program: program.to_string(),
            error,
        })?;
    if out.status.success() {
        return Ok(out);
    }
    let detail = last_line(&out.stderr)
        .or_else(|| last_line(&out.stdout))
        .unwrap_or_else(|| "no output".into());
    Err(EmbeddedError::CommandFailed {
        program: program.to_string(),
        status: out.status.to_string(),
        detail,
    })
}

fn last_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
}

/// Replace pg_ctl's "Examine the log output." by the server's last FATAL /
/// PANIC / ERROR line and the log path.
pub(super) fn with_log_hint(e: EmbeddedError, log_file: &Path) -> EmbeddedError {
    let EmbeddedError::CommandFailed {
        program, status, ..
    } = e
    else {
        return e;
    };
    let log = std::fs::read(log_file).unwrap_or_default();
    let text = String::from_utf8_lossy(&log);
    let reason = text
        .lines()
        .rev()
        .take(50)
        .find(|l| l.contains("FATAL:") || l.contains("PANIC:") || l.contains("ERROR:"))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("server did not start")
        .trim()
        .to_string();
    EmbeddedError::CommandFailed {
        program,
        status,
        detail: format!("{reason} (see {})", log_file.display()),
    }
}
