//! Node.js packages the tests drive (playwright-core, for the dashboard in Debian's
//! Chromium), installed from npm into a directory of their own under the target directory
//! the first time a test needs them. Without Node.js, npm or the registry the test fails
//! saying what to install: it never skips.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The playwright-core release the browser tests are written against.
pub const PLAYWRIGHT: &str = "playwright-core@1.64.1";

/// The `node_modules` directory under the target directory named `name`, with `package`
/// installed (its module directory is `module`); built aside and renamed into place.
pub fn modules(name: &str, package: &str, module: &str) -> Result<PathBuf, String> {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let node_modules = root.join("node_modules");
    if node_modules.join(module).join("package.json").exists() {
        return Ok(node_modules);
    }
    let tmp = root.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let out = Command::new("npm")
        .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
        .arg(&tmp)
        .arg(package)
        .output()
        .map_err(|e| format!("npm could not run (install Node.js and npm): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "npm install {package} failed (the npm registry must be reachable): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let _ = std::fs::remove_dir_all(&root);
    if std::fs::rename(&tmp, &root).is_err() {
        // another test binary finished first
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if node_modules.join(module).join("package.json").exists() {
        Ok(node_modules)
    } else {
        Err(format!("{} has no {module}", node_modules.display()))
    }
}

/// Debian's Chromium (`PENGUIN_JOBS_CHROMIUM` overrides the path); panics saying how to
/// install it.
pub fn chromium() -> PathBuf {
    let path = std::env::var_os("PENGUIN_JOBS_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        Path::new(&path).exists(),
        "the dashboard test runs headless Chromium at {}: install it (apt-get install chromium; \
         bash .ci/run does) or set PENGUIN_JOBS_CHROMIUM",
        path.display()
    );
    path
}
