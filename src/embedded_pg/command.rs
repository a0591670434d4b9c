//! Running the PostgreSQL binaries: as the server's OS user, from `/`, with nothing of the
//! caller's environment but [`kept_env`] (the path, the locale and the time zone), and with a
//! failure reported as the last line the program (or the server log) wrote.
//!
//! Must never pass the daemon's environment on: a superuser SQL session can read the
//! server's `/proc/self/environ`, so the master key and provider keys must not be in it,
//! and a PG* variable must not redirect a command to another cluster, host or user than
//! the one on its command line. Everything they need is passed on the command line.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Output, Stdio};

use super::privileges::RunAs;
use super::{EmbeddedError, Result};

/// The variables of the caller's environment the PostgreSQL binaries (and the watchdog
/// shell) get, besides every `LC_*`: where programs are, and the locale and time zone
/// initdb picks up for a new cluster.
const KEPT_VARIABLES: [&str; 3] = ["PATH", "LANG", "TZ"];

/// The part of this process's environment a PostgreSQL binary may see (see
/// [`KEPT_VARIABLES`]); set it after `env_clear`.
pub(super) fn kept_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(name, _)| {
            name.to_str()
                .is_some_and(|name| KEPT_VARIABLES.contains(&name) || name.starts_with("LC_"))
        })
        .collect()
}

/// A tokio command for a PostgreSQL binary, run as `run_as` if set, from `/`
/// (root's working directory may not be accessible), with only [`kept_env`].
pub(super) fn pg_command(program: &Path, run_as: Option<RunAs>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    if let Some(r) = run_as {
        cmd.uid(r.uid).gid(r.gid);
    }
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .env_clear()
        .envs(kept_env());
    cmd
}

/// The same settings as [`pg_command`] for a std command.
pub(super) fn apply_std(cmd: &mut std::process::Command, run_as: Option<RunAs>) {
    if let Some(r) = run_as {
        cmd.uid(r.uid).gid(r.gid);
    }
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .env_clear()
        .envs(kept_env());
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
