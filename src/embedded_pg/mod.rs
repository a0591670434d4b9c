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

mod binaries;
mod cluster;
mod command;
mod privileges;
mod settings;
mod socket;
mod watchdog;

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use binaries::find_bindir_for;
use cluster::{
    dir_is_empty, fix_data_dir_mode, initdb, is_live_postgres, prepare_data_dir, read_pg_version,
    read_pid_file, remove_dir_if_exists, remove_stale_lock, wait_for_previous_postmaster,
};
use command::{apply_std, pg_command, run, with_log_hint};
use privileges::{RunAs, server_user};
use settings::{server_options, shell_quote};
use socket::{ensure_socket_dir, socket_dir_for, socket_url};
use watchdog::spawn_watchdog;

pub use binaries::find_bindir;

/// Port number of every embedded cluster. It only names the socket file
/// (`.s.PGSQL.5432`); the socket directory is private to one cluster (see
/// [`EmbeddedPostgres::socket_dir`]), so clusters cannot collide.
pub const PORT: u16 = 5432;

/// Superuser role created by initdb; [`EmbeddedPostgres::url`] connects as it.
pub const SUPERUSER: &str = "postgres";

/// Log file of the server, inside the data directory.
const LOG_FILE: &str = "postgres.log";

/// `pg_ctl -t` for start (crash recovery can take a while) and stop.
const START_TIMEOUT_SECS: u32 = 300;
const STOP_TIMEOUT_SECS: u32 = 120;

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

    /// Another process (a `penguin-jobs run`) owns the cluster and still runs.
    #[error(
        "the embedded PostgreSQL in {dir} belongs to another process still running (pid {pid}, \
         {what}): stop it first, or point this one at another [daemon] data_dir; the other \
         commands (jobs, dlq, stats, ...) attach to it by themselves"
    )]
    InUse {
        dir: PathBuf,
        pid: u32,
        what: String,
    },

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
    /// The owner lock (see [`owner_lock`]), released when this is dropped.
    _owner: std::fs::File,
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
        let (run_as, owner_uid) = server_user()?;
        // Data directory: absolute, existing, owned by the server's user.
        let data_dir = prepare_data_dir(dir, run_as)?;
        let owner = owner_lock(&data_dir)?;

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
        pg_ctl_start(&bindir, &data_dir, &socket_dir, port, run_as, durability).await?;

        let this = EmbeddedPostgres {
            bindir,
            postmaster_pid: 0,
            data_dir,
            socket_dir,
            port,
            run_as,
            watchdog: None,
            remove_on_stop,
            stopped: false,
            _owner: owner,
        };
        this.watch().await
    }

    /// Reads the pid of the postmaster just started and spawns its watchdog. A server
    /// that cannot be watched is stopped (fast) and an error returned.
    async fn watch(mut self) -> Result<Self> {
        let pid_file = self.data_dir.join("postmaster.pid");
        let Some(pid) = read_pid_file(&pid_file) else {
            // Cannot watch it: do not leave it running unwatched.
            let _ = self.pg_ctl_stop("fast").await;
            self.stopped = true;
            return Err(EmbeddedError::NoPostmasterPid { path: pid_file });
        };
        self.postmaster_pid = pid;
        match spawn_watchdog(&self) {
            Ok(child) => self.watchdog = Some(child),
            Err(e) => {
                let _ = self.pg_ctl_stop("fast").await;
                self.stopped = true;
                return Err(e);
            }
        }
        tracing::info!(
            dir = %self.data_dir.display(),
            socket_dir = %self.socket_dir.display(),
            pid,
            "embedded PostgreSQL started"
        );
        Ok(self)
    }
}

/// Takes the owner lock of the cluster in `data_dir`: an exclusive `flock` on
/// `<data_dir>.owner` (beside it, in the daemon's directory), holding this process's pid.
/// A second process that would start the same cluster fails at once, naming the owner,
/// instead of waiting for a postmaster that will not go away. The lock goes with the
/// process (a kill -9 included); the file is not closed over exec, so the watchdog does
/// not inherit it.
fn owner_lock(data_dir: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = data_dir.with_extension("owner");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("open the owner lock", &path))?;
    // SAFETY: flock on a file descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let pid: u32 = text.trim().parse().unwrap_or(0);
        let what = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .split('\0')
                    .filter(|a| !a.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .ok()
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "its command line is not visible".into());
        return Err(EmbeddedError::InUse {
            dir: data_dir.to_path_buf(),
            pid,
            what,
        });
    }
    let write = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()))
        .and_then(|()| file.flush());
    write.map_err(io_err("write the owner lock", &path))?;
    Ok(file)
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

/// `pg_ctl start` of the cluster in `data_dir` with our [`server_options`], waiting until
/// it accepts connections; a failure names the server log's last error.
async fn pg_ctl_start(
    bindir: &Path,
    data_dir: &Path,
    socket_dir: &Path,
    port: u16,
    run_as: Option<RunAs>,
    durability: Durability,
) -> Result<()> {
    let options = server_options(socket_dir, port, durability)
        .iter()
        .map(|s| format!("-c {}", shell_quote(s)))
        .collect::<Vec<_>>()
        .join(" ");
    let log_file = data_dir.join(LOG_FILE);
    let mut cmd = pg_command(&bindir.join("pg_ctl"), run_as);
    cmd.arg("start")
        .arg("-D")
        .arg(data_dir)
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_message_is_one_line() {
        let msg = EmbeddedError::BinariesNotFound.to_string();
        assert!(!msg.contains('\n'));
        assert!(msg.starts_with("no PostgreSQL binaries found"));
    }
}
