//! Finding the PostgreSQL binaries (`initdb`, `pg_ctl`, `postgres`): `pg_config
//! --bindir`, then `PATH`, then `/usr/lib/postgresql/*/bin`, and the one whose major
//! version matches an existing cluster.
//!
//! Must never pick binaries of another major version than the cluster's (that is a
//! [`EmbeddedError::VersionMismatch`]), and never run anything but `pg_config --bindir`
//! and `pg_ctl --version` to find out.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::{EmbeddedError, Result};

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `pg_config
/// --bindir` if it has initdb, else the first directory on `PATH` containing
/// both initdb and pg_ctl, else the highest-version
/// `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Result<PathBuf> {
    candidate_bindirs()
        .into_iter()
        .next()
        .ok_or(EmbeddedError::BinariesNotFound)
}

/// Like [`find_bindir`], but when the data directory already holds a cluster
/// of major version `major`, the first candidate of that version.
pub(super) fn find_bindir_for(data_dir: &Path, major: Option<&str>) -> Result<PathBuf> {
    let candidates = candidate_bindirs();
    let Some(first) = candidates.first() else {
        return Err(EmbeddedError::BinariesNotFound);
    };
    let Some(major) = major else {
        return Ok(first.clone());
    };
    for c in &candidates {
        if binaries_major(c).as_deref() == Some(major) {
            return Ok(c.clone());
        }
    }
    Err(EmbeddedError::VersionMismatch {
        dir: data_dir.to_path_buf(),
        cluster: major.to_string(),
        bindir: first.clone(),
        binaries: binaries_major(first).unwrap_or_else(|| "of unknown version".into()),
    })
}

fn candidate_bindirs() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        let key = p.canonicalize().unwrap_or_else(|_| p.clone());
        if !out
            .iter()
            .any(|q| q.canonicalize().unwrap_or_else(|_| q.clone()) == key)
        {
            out.push(p);
        }
    };

    let pg_config = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    if let Ok(o) = pg_config {
        let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if o.status.success()
            && is_executable(&dir.join("initdb"))
            && is_executable(&dir.join("pg_ctl"))
        {
            push(dir);
        }
    }

    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.is_absolute()
                && is_executable(&dir.join("initdb"))
                && is_executable(&dir.join("pg_ctl"))
            {
                push(dir);
            }
        }
    }

    let mut versioned: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = parse_version(&name.to_string_lossy()) else {
                continue;
            };
            let bin = entry.path().join("bin");
            if is_executable(&bin.join("initdb")) && is_executable(&bin.join("pg_ctl")) {
                versioned.push((version, bin));
            }
        }
    }
    versioned.sort_by(|a, b| b.0.cmp(&a.0));
    for (_, bin) in versioned {
        push(bin);
    }
    out
}

/// "15" -> [15], "9.6" -> [9, 6]; None if not a version.
fn parse_version(s: &str) -> Option<Vec<u32>> {
    s.split('.').map(|p| p.parse().ok()).collect()
}

/// Major version as written in `PG_VERSION`: "15" for 15.x, "9.6" for 9.6.x.
fn major_of(version: &str) -> Option<String> {
    let parts: Vec<u32> = version
        .split('.')
        .map_while(|p| {
            let digits: String = p.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        })
        .collect();
    match parts.as_slice() {
        [major, ..] if *major >= 10 => Some(major.to_string()),
        [major, minor, ..] => Some(format!("{major}.{minor}")),
        _ => None,
    }
}

/// Major version of the binaries in `bindir` (`pg_ctl --version`).
fn binaries_major(bindir: &Path) -> Option<String> {
    let out = std::process::Command::new(bindir.join("pg_ctl"))
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    // "pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.split("(PostgreSQL)").nth(1)?;
    major_of(rest.split_whitespace().next()?)
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(major_of("15.18").as_deref(), Some("15"));
        assert_eq!(major_of("16beta1").as_deref(), Some("16"));
        assert_eq!(major_of("9.6.24").as_deref(), Some("9.6"));
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("common"), None);
    }
}
