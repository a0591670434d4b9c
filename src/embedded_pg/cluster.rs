//! The data directory and the cluster in it: creating the directory (0700, owned by the
//! server's user), running initdb, telling a live postmaster from a stale lock file, and
//! removing a temporary cluster's directories.
//!
//! Must never touch a cluster it did not create: it only initialises empty (or missing)
//! directories, refuses a non-empty directory that is not a PostgreSQL data directory,
//! and never starts over a postmaster that is still running.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::command::{pg_command, run};
use super::privileges::{RunAs, check_accessible, chown_tree};
use super::settings::forbid_tcp_in_conf;
use super::{Durability, EmbeddedError, Result, SUPERUSER, io_err};

/// How long `start` waits for a previous owner's watchdog to shut down a
/// still-running postmaster of the same data directory.
const PREVIOUS_OWNER_GRACE: Duration = Duration::from_secs(30);

/// The data directory for `dir`: absolute and canonical, created (0700) if missing,
/// owned by and accessible to `run_as` if set. A directory created here is removed again
/// when `run_as` cannot reach it.
pub(super) fn prepare_data_dir(dir: &Path, run_as: Option<RunAs>) -> Result<PathBuf> {
    let abs = std::path::absolute(dir).map_err(io_err("resolve", dir))?;
    let created = !abs.exists();
    if created {
        // Parents get the default mode; the data directory itself 0700.
        if let Some(parent) = abs.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&abs)
            .map_err(io_err("create directory", &abs))?;
    }
    let data_dir = abs.canonicalize().map_err(io_err("resolve", &abs))?;
    check_quotable(&data_dir)?;
    if let Some(r) = run_as {
        let meta = std::fs::metadata(&data_dir).map_err(io_err("inspect", &data_dir))?;
        if meta.uid() != r.uid {
            chown_tree(&data_dir, r).map_err(io_err("change owner of", &data_dir))?;
        }
        if let Err(e) = check_accessible(&data_dir, r) {
            if created {
                let _ = std::fs::remove_dir(&data_dir);
            }
            return Err(e);
        }
    }
    Ok(data_dir)
}

/// pg_ctl puts the data directory inside double quotes in a shell command.
fn check_quotable(dir: &Path) -> Result<()> {
    let bad = dir
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|b| b"\"\\$`\n\r".contains(b));
    if bad {
        return Err(EmbeddedError::UnsupportedPath {
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

pub(super) fn read_pg_version(data_dir: &Path) -> Result<Option<String>> {
    let path = data_dir.join("PG_VERSION");
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

pub(super) fn dir_is_empty(dir: &Path) -> Result<bool> {
    let mut entries = std::fs::read_dir(dir).map_err(io_err("read directory", dir))?;
    Ok(entries.next().is_none())
}

/// PostgreSQL refuses a data directory with group-write or any "other" bits.
pub(super) fn fix_data_dir_mode(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(io_err("inspect", dir))?;
    if meta.permissions().mode() & 0o027 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("set permissions of", dir))?;
    }
    Ok(())
}

/// First line of a postmaster.pid-style lock file.
pub(super) fn read_pid_file(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Is `pid` a live (not zombie) PostgreSQL process, running on `data_dir` if
/// that can be checked? Errs on the side of "yes" when it cannot tell.
pub(super) fn is_live_postgres(pid: u32, data_dir: Option<&Path>) -> bool {
    if pid == 0 {
        return false;
    }
    if !Path::new("/proc/self/stat").exists() {
        // No procfs: ask kill(1).
        return std::process::Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(true);
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "<pid> (<comm>) <state> ..."
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return true;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    if matches!(state, Some('Z' | 'X' | 'x')) {
        return false;
    }
    if !(comm.starts_with("postgres") || comm.starts_with("postmaster")) {
        return false;
    }
    // The postmaster's working directory is its data directory.
    match (data_dir, std::fs::read_link(format!("/proc/{pid}/cwd"))) {
        (Some(dir), Ok(cwd)) => cwd == dir,
        _ => true,
    }
}

/// Remove a lock file whose pid is not a live postgres (the server removes
/// stale lock files itself only when the pid is dead, not when it has been
/// reused by another process, e.g. after a container restart).
pub(super) fn remove_stale_lock(path: &Path, data_dir: Option<&Path>) -> Result<()> {
    let Some(pid) = read_pid_file(path) else {
        return Ok(());
    };
    if !is_live_postgres(pid, data_dir) {
        tracing::info!(path = %path.display(), pid, "removing stale PostgreSQL lock file");
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", path)(e)),
        }
    }
    Ok(())
}

/// If a postmaster still runs on `data_dir` (e.g. its previous owner was just
/// killed and the watchdog is shutting it down), wait for it to go away.
pub(super) async fn wait_for_previous_postmaster(data_dir: &Path) -> Result<()> {
    let pid_file = data_dir.join("postmaster.pid");
    let deadline = tokio::time::Instant::now() + PREVIOUS_OWNER_GRACE;
    loop {
        let Some(pid) = read_pid_file(&pid_file) else {
            return Ok(());
        };
        if !is_live_postgres(pid, Some(data_dir)) {
            return remove_stale_lock(&pid_file, Some(data_dir));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(EmbeddedError::AlreadyRunning {
                dir: data_dir.to_path_buf(),
                pid,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(super) async fn initdb(
    bindir: &Path,
    data_dir: &Path,
    run_as: Option<RunAs>,
    durability: Durability,
) -> Result<()> {
    tracing::info!(dir = %data_dir.display(), "initialising embedded PostgreSQL cluster");
    let mut cmd = pg_command(&bindir.join("initdb"), run_as);
    cmd.arg("-D").arg(data_dir).args([
        "-U",
        SUPERUSER,
        "--auth-local=trust",
        "--auth-host=reject",
        "-E",
        "UTF8",
        "--no-locale",
        "--no-instructions",
    ]);
    if durability == Durability::Throwaway {
        cmd.arg("--no-sync");
    }
    run(cmd, "initdb").await?;

    forbid_tcp_in_conf(data_dir)
}

pub(super) async fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_limits_of_pg_ctl() {
        assert!(check_quotable(Path::new("/srv/ok dir")).is_ok());
        assert!(check_quotable(Path::new("/srv/$HOME")).is_err());
        assert!(check_quotable(Path::new("/srv/\"x\"")).is_err());
    }
}
