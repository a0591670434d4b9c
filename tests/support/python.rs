//! Python tools the tests drive (oauthlib's authorization server, schemathesis), each in a
//! virtualenv of its own under the target directory, created and filled from PyPI the
//! first time a test needs it. Without Python's venv or PyPI the test fails saying what
//! to install: it never skips.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether `python` imports `module`.
pub fn imports(python: &Path, module: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The virtualenv `name` (under the target directory) with `requirement` installed, whose
/// Python imports `module`: its directory. Built aside and renamed into place, so that
/// concurrent test binaries never see half a virtualenv.
pub fn venv(name: &str, requirement: &str, module: &str) -> Result<PathBuf, String> {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    if imports(&venv.join("bin/python"), module) {
        return Ok(venv);
    }
    let tmp = venv.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd
            .output()
            .map_err(|e| format!("{what} could not run: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&tmp),
        "python3 -m venv (install python3-venv)",
    )?;
    run(
        Command::new(tmp.join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ]),
        &format!("pip install {requirement} (PyPI must be reachable)"),
    )?;
    if std::fs::rename(&tmp, &venv).is_err() {
        // another test binary finished first
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if imports(&venv.join("bin/python"), module) {
        Ok(venv)
    } else {
        Err(format!(
            "the virtualenv at {} does not import {module}",
            venv.display()
        ))
    }
}
