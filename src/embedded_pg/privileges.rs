//! Who runs the PostgreSQL binaries: this process's user, or the `postgres` OS user when
//! we are root (initdb and postgres refuse to run as root), which then owns the data
//! directory and must be able to reach it.
//!
//! Must never change the permissions of a parent directory (such as `/root`) to make the
//! data directory reachable: an unreachable one is [`EmbeddedError::DirNotAccessible`].

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;

use super::command::apply_std;
use super::{EmbeddedError, Result, io_err};

/// Which OS user runs the PostgreSQL binaries when we are root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RunAs {
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// Who runs the PostgreSQL binaries (`postgres` when we are root, else `None`: this
/// process's user), and the uid that owns the cluster's files.
pub(super) fn server_user() -> Result<(Option<RunAs>, u32)> {
    let euid = current_euid()?;
    let run_as = if euid == 0 {
        Some(lookup_user("postgres").ok_or(EmbeddedError::NoPostgresUser)?)
    } else {
        None
    };
    let owner_uid = run_as.map_or(euid, |r| r.uid);
    Ok((run_as, owner_uid))
}

pub(super) fn chown_tree(path: &Path, r: RunAs) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(r.uid), Some(r.gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), r)?;
        }
    }
    Ok(())
}

/// Can `r` traverse every parent of `dir` and write into it?
pub(super) fn check_accessible(dir: &Path, r: RunAs) -> Result<()> {
    let mut cmd = std::process::Command::new("/bin/sh");
    apply_std(&mut cmd, Some(r));
    cmd.args([
        "-c",
        r#"test -d "$1" && test -w "$1" && test -x "$1""#,
        "sh",
    ])
    .arg(dir)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let status = cmd.status().map_err(|error| EmbeddedError::Spawn {
        program: "/bin/sh".into(),
        error,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(EmbeddedError::DirNotAccessible {
            dir: dir.to_path_buf(),
        })
    }
}

fn run_id(args: &[&str]) -> Option<u32> {
    let out = std::process::Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn current_euid() -> Result<u32> {
    if let Some(uid) = run_id(&["-u"]) {
        return Ok(uid);
    }
    // /proc/self is owned by the effective uid.
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(io_err("inspect", Path::new("/proc/self")))
}

fn lookup_user(name: &str) -> Option<RunAs> {
    Some(RunAs {
        uid: run_id(&["-u", name])?,
        gid: run_id(&["-g", name])?,
    })
}
