//! A private PostgreSQL cluster run from the locally installed PostgreSQL
//! binaries.
//!
//! Used by `penguin-jobs run` when no database is configured (the cluster then
//! lives in e.g. `./.penguin-jobs/postgres`), and by tests and benchmarks
//! (throwaway clusters under `/tmp`).
//!
//! Guarantees:
//!
//! - It never touches a cluster it did not create: it only initialises empty
//!   (or missing) directories, refuses a non-empty directory that is not a
//!   PostgreSQL data directory, and refuses to start a directory whose
//!   postmaster is still running.
//! - It never listens on TCP: `listen_addresses=''` is passed on the command
//!   line *and* written to `postgresql.conf` (so a manual `pg_ctl start` does
//!   not listen either), and `pg_hba.conf` rejects TCP connections. Clients
//!   connect over a unix socket with `trust` authentication; the socket
//!   directory is mode 0700 and the socket 0700, so only the cluster's OS
//!   user (and root) can connect.
//! - A cluster never outlives the process that started it by more than a
//!   couple of seconds, even if that process is killed with SIGKILL or exits
//!   without running destructors: a detached watchdog shell script polls the
//!   owner process once a second and requests a fast shutdown when it is gone.
//!
//! When running as root (initdb and postgres refuse to run as root), the
//! PostgreSQL binaries run as the `postgres` OS user, which then owns the data
//! directory (it is chowned if needed). Every parent directory must then be
//! traversable by that user: a data directory under `/root` (mode 0700) is
//! rejected with [`EmbeddedError::DirNotAccessible`] instead of being silently
//! moved elsewhere or having `/root`'s permissions changed.
//!
//! The superuser role is always `postgres` (`initdb -U postgres`), whatever the
//! OS user.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

/// Port number of every embedded cluster. It only names the socket file
/// (`.s.PGSQL.5432`); the socket directory is private to one cluster (see
/// [`EmbeddedPostgres::socket_dir`]), so clusters cannot collide.
pub const PORT: u16 = 5432;

/// Superuser role created by initdb; [`EmbeddedPostgres::url`] connects as it.
pub const SUPERUSER: &str = "postgres";

/// Log file of the server, inside the data directory.
const LOG_FILE: &str = "postgres.log";

/// Longest socket file path we accept (`sun_path` holds 108 bytes including
/// the terminating NUL; keep a margin).
const MAX_SOCKET_PATH: usize = 100;

/// `pg_ctl -t` for start (crash recovery can take a while) and stop.
const START_TIMEOUT_SECS: u32 = 300;
const STOP_TIMEOUT_SECS: u32 = 120;

/// How long `start` waits for a previous owner's watchdog to shut down a
/// still-running postmaster of the same data directory.
const PREVIOUS_OWNER_GRACE: Duration = Duration::from_secs(30);

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

/// Errors from finding, initialising, starting or stopping an embedded cluster.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No directory with `initdb` and `pg_ctl` was found.
    #[error(
        "no PostgreSQL binaries found (looked in pg_config --bindir, PATH and /usr/lib/postgresql/*/bin): install PostgreSQL (apt-get install postgresql) or set DATABASE_URL"
    )]
    BinariesNotFound,

    /// The existing cluster was created by another major version.
    #[error(
        "the cluster in {dir} was created by PostgreSQL {cluster} but the binaries in {bindir} are PostgreSQL {binaries}: install PostgreSQL {cluster} or use another directory"
    )]
    VersionMismatch {
        dir: PathBuf,
        cluster: String,
        bindir: PathBuf,
        binaries: String,
    },

    /// Running as root, but there is no `postgres` OS user to run the server as.
    #[error(
        "running as root but there is no `postgres` OS user to run PostgreSQL as: create one (useradd --system postgres) or set DATABASE_URL"
    )]
    NoPostgresUser,

    /// Running as root and the `postgres` OS user cannot reach the data directory.
    #[error(
        "the `postgres` OS user cannot access {dir} (a parent directory such as /root is not traversable by it): use a data directory outside it (e.g. under /var/lib or /srv) or set DATABASE_URL"
    )]
    DirNotAccessible { dir: PathBuf },

    /// The data directory path contains characters pg_ctl cannot quote.
    #[error(
        "unsupported data directory path {dir}: it must not contain '\"', '\\', '$', '`' or newlines"
    )]
    UnsupportedPath { dir: PathBuf },

    /// The directory is not empty and holds no PostgreSQL cluster.
    #[error("{dir} is not empty and is not a PostgreSQL data directory: refusing to initialise it")]
    NotACluster { dir: PathBuf },

    /// Another postmaster is still running on the data directory.
    #[error(
        "the cluster in {dir} is already running (postmaster pid {pid}), probably owned by another process: stop it first"
    )]
    AlreadyRunning { dir: PathBuf, pid: u32 },

    /// The socket directory under /tmp exists and belongs to someone else.
    #[error(
        "socket directory {dir} already exists and is not a directory owned by uid {uid}: remove it"
    )]
    SocketDirNotOwned { dir: PathBuf, uid: u32 },

    /// A file system operation failed.
    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },

    /// A helper program could not be run at all.
    #[error("cannot run {program}: {error}")]
    Spawn { program: String, error: io::Error },

    /// A helper program (initdb, pg_ctl, ...) exited unsuccessfully.
    #[error("{program} failed ({status}): {detail}")]
    CommandFailed {
        program: String,
        status: String,
        detail: String,
    },

    /// The postmaster started but its pid could not be read back.
    #[error("cannot read the postmaster pid from {}", path.display())]
    NoPostmasterPid { path: PathBuf },
}

type Result<T, E = EmbeddedError> = std::result::Result<T, E>;

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EmbeddedError {
    let path = path.to_path_buf();
    move |error| EmbeddedError::Io {
        action,
        path,
        error,
    }
}

/// Which OS user runs the PostgreSQL binaries when we are root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunAs {
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// fsync, synchronous_commit and full_page_writes on.
    Durable,
    /// All three off: for throwaway clusters only.
    Throwaway,
}

/// A running PostgreSQL cluster started by this process.
///
/// Stop it with [`EmbeddedPostgres::stop`]. Dropping it without `stop` requests
/// a fast shutdown without waiting; if the process dies first, the watchdog
/// stops the cluster within a couple of seconds.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bindir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    postmaster_pid: u32,
    watchdog: Option<std::process::Child>,
    /// Remove the data (and socket) directory once stopped.
    remove_on_stop: bool,
    stopped: bool,
}

impl EmbeddedPostgres {
    /// Start (running initdb first if `dir` holds no cluster yet) a durable
    /// cluster whose data lives in `dir` (e.g. `./.penguin-jobs/postgres`,
    /// created if missing).
    ///
    /// The unix socket lives in `dir` itself when the resulting socket path
    /// is short and plain enough, else in `/tmp/penguin-jobs-pg-<hash of dir>`
    /// (mode 0700). The server never listens on TCP. Returns once the server
    /// accepts connections (`pg_ctl -w`). A stale `postmaster.pid` left by a
    /// crash is removed; a postmaster that is still running on `dir` (e.g.
    /// the previous owner was just killed and its watchdog is shutting the
    /// server down) is waited for up to 30 s, then
    /// [`EmbeddedError::AlreadyRunning`] is returned.
    ///
    /// Server settings (on the command line): `listen_addresses=''`,
    /// `max_connections=200`, `shared_buffers=256MB`, `fsync=on`,
    /// `synchronous_commit=on`, `full_page_writes=on`; the server log goes to
    /// `dir/postgres.log`.
    pub async fn start(dir: &Path) -> Result<Self> {
        Self::start_inner(dir, Durability::Durable, false).await
    }

    /// Like [`EmbeddedPostgres::start`] but with `fsync=off`,
    /// `synchronous_commit=off` and `full_page_writes=off` (and `initdb
    /// --no-sync`): for throwaway test clusters only, a crash can corrupt it.
    /// When running as root, put `dir` under `/tmp` (the `postgres` user must
    /// be able to reach it).
    pub async fn start_throwaway(dir: &Path) -> Result<Self> {
        Self::start_inner(dir, Durability::Throwaway, false).await
    }

    /// A throwaway cluster (see [`EmbeddedPostgres::start_throwaway`]) in a
    /// fresh directory `/tmp/penguin-jobs-tmp-<pid>-<random>`, which is deleted
    /// once the cluster is stopped (by [`EmbeddedPostgres::stop`], by drop, or
    /// by the watchdog when this process exits).
    pub async fn start_temporary() -> Result<Self> {
        let dir = PathBuf::from(format!(
            "/tmp/penguin-jobs-tmp-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let result = Self::start_inner(&dir, Durability::Throwaway, true).await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    /// Postgres URL of `database` on this cluster, over the unix socket, as
    /// the `postgres` superuser (trust authentication), e.g.
    /// `postgres://postgres@localhost/penguin?host=/srv/pj/postgres&port=5432&sslmode=disable`.
    /// Accepted by sqlx 0.8 and libpq.
    pub fn url(&self, database: &str) -> String {
        socket_url(&self.socket_dir, self.port, database)
    }

    /// URL of `database` on the cluster in `dir` if it is running (started by
    /// another process, e.g. `penguin-jobs run`), read from its
    /// `postmaster.pid`; `None` if no live postmaster runs on `dir`.
    pub fn running_url(dir: &Path, database: &str) -> Option<String> {
        let data_dir = std::path::absolute(dir).ok()?.canonicalize().ok()?;
        let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
        // Lines: pid, data dir, start time, port, first socket directory, ...
        let lines: Vec<&str> = text.lines().collect();
        let pid: u32 = lines.first()?.trim().parse().ok()?;
        let port: u16 = lines.get(3)?.trim().parse().ok()?;
        let socket_dir = lines.get(4)?.trim();
        if socket_dir.is_empty() || !is_live_postgres(pid, Some(&data_dir)) {
            return None;
        }
        Some(socket_url(Path::new(socket_dir), port, database))
    }

    /// Absolute path of the data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory holding the unix socket `.s.PGSQL.<port>`.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Port number (only names the socket file).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory of the PostgreSQL binaries in use.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Stop the cluster (`pg_ctl stop -m fast`, waiting until it is down; if
    /// that fails, `-m immediate`) and its watchdog. A temporary cluster's
    /// directories are removed.
    pub async fn stop(mut self) -> Result<()> {
        self.stopped = true;
        self.kill_watchdog();
        let pid_file = self.data_dir.join("postmaster.pid");
        let mut result = Ok(());
        if pid_file.exists() {
            result = self.pg_ctl_stop("fast").await;
            if result.is_err() {
                tracing::warn!(dir = %self.data_dir.display(), "fast shutdown failed, trying immediate shutdown");
                let _ = self.pg_ctl_stop("immediate").await;
            }
        }
        if result.is_ok() {
            tracing::info!(dir = %self.data_dir.display(), "embedded PostgreSQL stopped");
            if self.remove_on_stop {
                remove_dir_if_exists(&self.data_dir).await?;
                if self.socket_dir != self.data_dir {
                    remove_dir_if_exists(&self.socket_dir).await?;
                }
            }
        }
        result
    }

    /// Restarts the server (`pg_ctl restart -m MODE`, `fast` or `immediate`) with the same
    /// settings, waiting until it accepts connections again; for fault-injection tests.
    /// Every connection is cut; an `immediate` restart goes through crash recovery.
    pub async fn restart(&mut self, mode: &str) -> Result<()> {
        self.kill_watchdog();
        let mut cmd = pg_command(&self.bindir.join("pg_ctl"), self.run_as);
        cmd.arg("restart")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t"])
            .arg(STOP_TIMEOUT_SECS.to_string())
            .arg("-l")
            .arg(self.data_dir.join(LOG_FILE));
        let result = run(cmd, "pg_ctl restart").await.map(drop);
        if let Some(pid) = read_pid_file(&self.data_dir.join("postmaster.pid")) {
            self.postmaster_pid = pid;
        }
        if let Ok(child) = spawn_watchdog(self) {
            self.watchdog = Some(child);
        }
        result
    }

    async fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        let mut cmd = pg_command(&self.bindir.join("pg_ctl"), self.run_as);
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t"])
            .arg(STOP_TIMEOUT_SECS.to_string());
        run(cmd, "pg_ctl stop").await.map(drop)
    }

    fn kill_watchdog(&mut self) {
        if let Some(mut child) = self.watchdog.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn start_inner(dir: &Path, durability: Durability, remove_on_stop: bool) -> Result<Self> {
        let euid = current_euid()?;
        let run_as = if euid == 0 {
            Some(lookup_user("postgres").ok_or(EmbeddedError::NoPostgresUser)?)
        } else {
            None
        };
        let owner_uid = run_as.map_or(euid, |r| r.uid);

        // Data directory: absolute, existing, owned by the server's user.
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

        let cluster_version = read_pg_version(&data_dir)?;
        if cluster_version.is_none() && !dir_is_empty(&data_dir)? {
            return Err(EmbeddedError::NotACluster { dir: data_dir });
        }
        let bindir = find_bindir_for(&data_dir, cluster_version.as_deref())?;

        let port = PORT;
        let socket_dir = socket_dir_for(&data_dir, port);

        if cluster_version.is_none() {
            initdb(&bindir, &data_dir, run_as, durability).await?;
        } else {
            fix_data_dir_mode(&data_dir)?;
            wait_for_previous_postmaster(&data_dir).await?;
        }
        if socket_dir != data_dir {
            ensure_socket_dir(&socket_dir, owner_uid, run_as)?;
        }
        remove_stale_lock(&socket_dir.join(format!(".s.PGSQL.{port}.lock")), None)?;

        // Start and wait until it accepts connections.
        let options = server_options(&socket_dir, port, durability)
            .iter()
            .map(|s| format!("-c {}", shell_quote(s)))
            .collect::<Vec<_>>()
            .join(" ");
        let log_file = data_dir.join(LOG_FILE);
        let mut cmd = pg_command(&bindir.join("pg_ctl"), run_as);
        cmd.arg("start")
            .arg("-D")
            .arg(&data_dir)
            .arg("-l")
            .arg(&log_file)
            .arg("-w")
            .arg("-t")
            .arg(START_TIMEOUT_SECS.to_string())
            .arg("-o")
            .arg(&options);
        if let Err(e) = run(cmd, "pg_ctl start").await {
            return Err(with_log_hint(e, &log_file));
        }

        let pid_file = data_dir.join("postmaster.pid");
        let mut this = EmbeddedPostgres {
            bindir,
            postmaster_pid: 0,
            data_dir,
            socket_dir,
            port,
            run_as,
            watchdog: None,
            remove_on_stop,
            stopped: false,
        };
        let Some(pid) = read_pid_file(&pid_file) else {
            // Cannot watch it: do not leave it running unwatched.
            let _ = this.pg_ctl_stop("fast").await;
            this.stopped = true;
            return Err(EmbeddedError::NoPostmasterPid { path: pid_file });
        };
        this.postmaster_pid = pid;
        match spawn_watchdog(&this) {
            Ok(child) => this.watchdog = Some(child),
            Err(e) => {
                let _ = this.pg_ctl_stop("fast").await;
                this.stopped = true;
                return Err(e);
            }
        }
        tracing::info!(
            dir = %this.data_dir.display(),
            socket_dir = %this.socket_dir.display(),
            pid,
            "embedded PostgreSQL started"
        );
        Ok(this)
    }
}

impl Drop for EmbeddedPostgres {
    /// Requests a fast shutdown without waiting; the watchdog notices the
    /// postmaster is gone, exits, and (for temporary clusters) removes the
    /// directories.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let mut cmd = std::process::Command::new(self.bindir.join("pg_ctl"));
        apply_std(&mut cmd, self.run_as);
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-W"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = cmd.status();
    }
}

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
fn find_bindir_for(data_dir: &Path, major: Option<&str>) -> Result<PathBuf> {
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

/// Socket directory for a cluster whose data lives in `data_dir`: the data
/// directory itself if the socket path fits in a unix socket address and the
/// path needs no quoting in `unix_socket_directories`, else
/// `/tmp/penguin-jobs-pg-<hash of data_dir>`.
fn socket_dir_for(data_dir: &Path, port: u16) -> PathBuf {
    let bytes = data_dir.as_os_str().as_bytes();
    let socket_file = format!("/.s.PGSQL.{port}");
    let plain = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+@~:=".contains(b));
    if plain && bytes.len() + socket_file.len() <= MAX_SOCKET_PATH {
        data_dir.to_path_buf()
    } else {
        PathBuf::from(format!("/tmp/penguin-jobs-pg-{:016x}", fnv1a64(bytes)))
    }
}

/// FNV-1a: a hash that is stable across Rust versions (unlike `DefaultHasher`).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn socket_url(socket_dir: &Path, port: u16, database: &str) -> String {
    format!(
        "postgres://{SUPERUSER}@localhost/{}?host={}&port={port}&sslmode=disable",
        percent_encode(database.as_bytes(), b""),
        percent_encode(socket_dir.as_os_str().as_bytes(), b"/"),
    )
}

/// Percent-encode everything but unreserved characters and `keep`.
fn percent_encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn server_options(socket_dir: &Path, port: u16, durability: Durability) -> Vec<String> {
    let on_off = match durability {
        Durability::Durable => "on",
        Durability::Throwaway => "off",
    };
    vec![
        "listen_addresses=".into(),
        format!("unix_socket_directories={}", socket_dir.display()),
        "unix_socket_permissions=0700".into(),
        format!("port={port}"),
        "max_connections=200".into(),
        "shared_buffers=256MB".into(),
        // a queue writes WAL fast: checkpoint on time rather than every GB of WAL, so
        // full-page writes after a checkpoint do not come every few seconds under load
        "max_wal_size=4GB".into(),
        "checkpoint_timeout=10min".into(),
        format!("fsync={on_off}"),
        format!("synchronous_commit={on_off}"),
        format!("full_page_writes={on_off}"),
    ]
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
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

fn read_pg_version(data_dir: &Path) -> Result<Option<String>> {
    let path = data_dir.join("PG_VERSION");
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

fn dir_is_empty(dir: &Path) -> Result<bool> {
    let mut entries = std::fs::read_dir(dir).map_err(io_err("read directory", dir))?;
    Ok(entries.next().is_none())
}

/// PostgreSQL refuses a data directory with group-write or any "other" bits.
fn fix_data_dir_mode(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(io_err("inspect", dir))?;
    if meta.permissions().mode() & 0o027 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("set permissions of", dir))?;
    }
    Ok(())
}

fn chown_tree(path: &Path, r: RunAs) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(r.uid), Some(r.gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), r)?;
        }
    }
    Ok(())
}

/// Can `r` traverse every parent of `dir` and write into it?
fn check_accessible(dir: &Path, r: RunAs) -> Result<()> {
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

/// Create the private socket directory (0700, owned by the server's user) or
/// check that an existing one is ours.
fn ensure_socket_dir(dir: &Path, owner_uid: u32, run_as: Option<RunAs>) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            if let Some(r) = run_as {
                std::os::unix::fs::lchown(dir, Some(r.uid), Some(r.gid))
                    .map_err(io_err("change owner of", dir))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir).map_err(io_err("inspect", dir))?;
            if !meta.is_dir() || meta.uid() != owner_uid {
                return Err(EmbeddedError::SocketDirNotOwned {
                    dir: dir.to_path_buf(),
                    uid: owner_uid,
                });
            }
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io_err("set permissions of", dir))?;
            }
            Ok(())
        }
        Err(e) => Err(io_err("create directory", dir)(e)),
    }
}

/// First line of a postmaster.pid-style lock file.
fn read_pid_file(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Is `pid` a live (not zombie) PostgreSQL process, running on `data_dir` if
/// that can be checked? Errs on the side of "yes" when it cannot tell.
fn is_live_postgres(pid: u32, data_dir: Option<&Path>) -> bool {
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
fn remove_stale_lock(path: &Path, data_dir: Option<&Path>) -> Result<()> {
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
async fn wait_for_previous_postmaster(data_dir: &Path) -> Result<()> {
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

async fn initdb(
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

    // Never listen on TCP, even when started by hand without our options.
    let conf = data_dir.join("postgresql.conf");
    let block = "\n# Added by penguin-jobs (embedded PostgreSQL): unix socket only, never TCP.\n\
                 listen_addresses = ''\n\
                 unix_socket_permissions = 0700\n";
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut f| f.write_all(block.as_bytes()))
        .map_err(io_err("append to", &conf))
}

/// A tokio command for a PostgreSQL binary, run as `run_as` if set, from `/`
/// (root's working directory may not be accessible), without PG* variables.
fn pg_command(program: &Path, run_as: Option<RunAs>) -> tokio::process::Command {
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

fn apply_std(cmd: &mut std::process::Command, run_as: Option<RunAs>) {
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
async fn run(mut cmd: tokio::process::Command, program: &str) -> Result<Output> {
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
fn with_log_hint(e: EmbeddedError, log_file: &Path) -> EmbeddedError {
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

async fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", dir)(e)),
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

/// The watchdog: `sh -c WATCHDOG_SCRIPT watchdog OWNER_PID PM_PID PIDFILE
/// CLEANUP DATA_DIR SOCKET_DIR`. Runs as the current user (root can signal the
/// postmaster and remove its files; otherwise it is the same user).
///
/// It polls once a second while the owner process and the postmaster are both
/// alive (same pid *and* same start time, so a reused pid does not count, and
/// zombies count as dead) and postmaster.pid still names the postmaster. Then,
/// if the postmaster is still alive, it sends SIGINT (what `pg_ctl stop -m
/// fast` does). With CLEANUP=1 it waits for the postmaster to exit (at most
/// 5 minutes) and removes DATA_DIR and SOCKET_DIR (if not empty).
const WATCHDOG_SCRIPT: &str = r#"
trap '' HUP INT PIPE
owner=$1 pm=$2 pidfile=$3 cleanup=$4 datadir=$5 sockdir=$6
ST=
st() {
  ST=
  if [ -r /proc/self/stat ]; then
    [ -r "/proc/$1/stat" ] || return 1
    read -r l < "/proc/$1/stat" || return 1
    r=${l##*") "}
    set -- $r
    case $1 in Z|X|x) return 1;; esac
    shift 19
    ST=$1
  else
    kill -0 "$1" 2>/dev/null || return 1
    ST=alive
  fi
}
same() { st "$1" && [ "$ST" = "$2" ]; }
pidfile_is_pm() { read -r p < "$pidfile" && [ "$p" = "$pm" ]; }
st "$owner"; owner_st=$ST
st "$pm"; pm_st=$ST
[ -n "$owner_st" ] && [ -n "$pm_st" ] || exit 0
while same "$owner" "$owner_st" && same "$pm" "$pm_st" && pidfile_is_pm; do
  sleep 1
done
if same "$pm" "$pm_st"; then kill -INT "$pm"; fi
[ "$cleanup" = 1 ] || exit 0
n=0
while same "$pm" "$pm_st" && [ $n -lt 300 ]; do sleep 1; n=$((n + 1)); done
rm -rf -- "$datadir"
[ -n "$sockdir" ] && rm -rf -- "$sockdir"
exit 0
"#;

fn spawn_watchdog(pg: &EmbeddedPostgres) -> Result<std::process::Child> {
    let socket_dir_to_remove = if pg.remove_on_stop && pg.socket_dir != pg.data_dir {
        pg.socket_dir.as_os_str()
    } else {
        "".as_ref()
    };
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("penguin-jobs-pg-watchdog")
        .arg(std::process::id().to_string())
        .arg(pg.postmaster_pid.to_string())
        .arg(pg.data_dir.join("postmaster.pid"))
        .arg(if pg.remove_on_stop { "1" } else { "0" })
        .arg(&pg.data_dir)
        .arg(socket_dir_to_remove)
        .current_dir("/")
        // Never hold the caller's stdout/stderr (cargo test would wait for
        // them to close), and do not get the terminal's Ctrl-C.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    cmd.spawn().map_err(|error| EmbeddedError::Spawn {
        program: "/bin/sh (watchdog)".into(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_data_dir_holds_its_own_socket() {
        let dir = Path::new("/srv/penguin-jobs/postgres");
        assert_eq!(socket_dir_for(dir, 5432), dir);
    }

    #[test]
    fn long_data_dir_gets_hashed_socket_dir_under_tmp() {
        let long = PathBuf::from(format!("/home/someone/{}/postgres", "x".repeat(120)));
        let s = socket_dir_for(&long, 5432);
        assert!(s.starts_with("/tmp"), "{}", s.display());
        assert!(s.join(".s.PGSQL.5432").as_os_str().len() <= MAX_SOCKET_PATH);
        // Stable and distinct per data directory.
        assert_eq!(s, socket_dir_for(&long, 5432));
        let other = PathBuf::from(format!("/home/someone/{}/postgres2", "x".repeat(120)));
        assert_ne!(s, socket_dir_for(&other, 5432));
    }

    #[test]
    fn boundary_of_socket_path_length() {
        let suffix = "/.s.PGSQL.5432".len();
        let fits = PathBuf::from(format!("/{}", "a".repeat(MAX_SOCKET_PATH - suffix - 1)));
        assert_eq!(socket_dir_for(&fits, 5432), fits);
        let too_long = PathBuf::from(format!("/{}", "a".repeat(MAX_SOCKET_PATH - suffix)));
        let hashed = socket_dir_for(&too_long, 5432);
        assert!(
            hashed
                .to_string_lossy()
                .starts_with("/tmp/penguin-jobs-pg-")
        );
    }

    #[test]
    fn odd_characters_move_socket_to_tmp() {
        assert!(socket_dir_for(Path::new("/srv/a b/pg"), 5432).starts_with("/tmp/"));
        assert!(socket_dir_for(Path::new("/srv/a,b/pg"), 5432).starts_with("/tmp/"));
    }

    #[test]
    fn url_format() {
        assert_eq!(
            socket_url(Path::new("/tmp/penguin-jobs-pg-1"), 5432, "penguin"),
            "postgres://postgres@localhost/penguin?host=/tmp/penguin-jobs-pg-1&port=5432&sslmode=disable"
        );
        assert_eq!(
            socket_url(Path::new("/srv/x~y"), 5433, "a b/c"),
            "postgres://postgres@localhost/a%20b%2Fc?host=/srv/x~y&port=5433&sslmode=disable"
        );
    }

    #[test]
    fn url_is_understood_by_sqlx() {
        use sqlx::postgres::PgConnectOptions;
        use std::str::FromStr;
        let url = socket_url(Path::new("/tmp/penguin-jobs-pg-1"), 5433, "my db");
        let o = PgConnectOptions::from_str(&url).expect("sqlx parses the url");
        assert_eq!(
            o.get_socket(),
            Some(&PathBuf::from("/tmp/penguin-jobs-pg-1"))
        );
        assert_eq!(o.get_port(), 5433);
        assert_eq!(o.get_database(), Some("my db"));
        assert_eq!(o.get_username(), "postgres");
    }

    #[test]
    fn versions() {
        assert_eq!(major_of("15.18").as_deref(), Some("15"));
        assert_eq!(major_of("16beta1").as_deref(), Some("16"));
        assert_eq!(major_of("9.6.24").as_deref(), Some("9.6"));
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("common"), None);
    }

    #[test]
    fn options_are_shell_quoted() {
        assert_eq!(shell_quote("listen_addresses="), "'listen_addresses='");
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        let opts = server_options(Path::new("/s"), 5432, Durability::Throwaway);
        assert!(opts.contains(&"fsync=off".to_string()));
        assert!(opts.contains(&"listen_addresses=".to_string()));
        let opts = server_options(Path::new("/s"), 5432, Durability::Durable);
        assert!(opts.contains(&"synchronous_commit=on".to_string()));
    }

    #[test]
    fn quoting_limits_of_pg_ctl() {
        assert!(check_quotable(Path::new("/srv/ok dir")).is_ok());
        assert!(check_quotable(Path::new("/srv/$HOME")).is_err());
        assert!(check_quotable(Path::new("/srv/\"x\"")).is_err());
    }

    #[test]
    fn not_found_message_is_one_line() {
        let msg = EmbeddedError::BinariesNotFound.to_string();
        assert!(!msg.contains('\n'));
        assert!(msg.starts_with("no PostgreSQL binaries found"));
    }
}
