//! The watchdog: a detached shell script that stops a cluster within a couple of seconds
//! of the process that started it dying (even by SIGKILL, or exiting without running
//! destructors), and removes a temporary cluster's directories.
//!
//! Must never signal a process that is not this cluster's postmaster (a reused pid does
//! not count), and never hold the caller's stdout/stderr or get its terminal's Ctrl-C.

use std::os::unix::process::CommandExt;
use std::process::Stdio;

use super::command::kept_env;
use super::{EmbeddedError, EmbeddedPostgres, Result};

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

pub(super) fn spawn_watchdog(pg: &EmbeddedPostgres) -> Result<std::process::Child> {
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
        .env_clear()
        .envs(kept_env())
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
