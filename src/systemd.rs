//! systemd's service protocol (`Type=notify`): `READY=1` once the listeners are bound and
//! the worker pools run, `STOPPING=1` when a drain begins, `STATUS=` lines on the way, and
//! `WATCHDOG=1` every half `WatchdogSec` while the process's runtime answers, so that a
//! hung daemon is restarted. Datagrams to `$NOTIFY_SOCKET` (a path, or `@name` in the
//! abstract namespace), as `sd_notify(3)` sends them; without it (not under systemd)
//! every call does nothing.
//!
//! Must never fail the daemon: a notification that cannot be sent is logged at debug
//! level and dropped.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go, read once from the environment.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier of this process: `$NOTIFY_SOCKET`, and `$WATCHDOG_USEC` when
    /// `$WATCHDOG_PID` is unset or names this process.
    pub fn from_env() -> Self {
        let target = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())
            .and_then(|path| match socket_addr(&path) {
                Ok(addr) => UnixDatagram::unbound().ok().map(|s| (s, addr)),
                Err(e) => {
                    tracing::warn!(error = %e, "NOTIFY_SOCKET is not a socket address; not notifying systemd");
                    None
                }
            });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us && target.is_some())
            .map(Duration::from_micros);
        Self { target, watchdog }
    }

    /// Whether systemd listens.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// The daemon is up: listeners bound, pools running.
    pub fn ready(&self, status: &str) {
        self.send(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ));
    }

    /// A drain began.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// A line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// How often to send [`Notifier::watchdog`]: half the unit's `WatchdogSec`, if set.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// The process is alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target
            && let Err(e) = socket.send_to_addr(message.as_bytes(), addr)
        {
            tracing::debug!(error = %e, "could not notify systemd");
        }
    }
}

/// `$NOTIFY_SOCKET` as an address: a path, or `@name` for the abstract namespace.
fn socket_addr(text: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    match text.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => std::os::unix::net::SocketAddr::from_pathname(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("pj-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let abstract_name = format!("pj-notify-test-{}", std::process::id());
        let abstract_listener = {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
                .unwrap();
            UnixDatagram::bind_addr(&addr).unwrap()
        };
        for (text, socket) in [
            (path.display().to_string(), &listener),
            (format!("@{abstract_name}"), &abstract_listener),
        ] {
            let notifier = Notifier {
                target: Some((
                    UnixDatagram::unbound().unwrap(),
                    socket_addr(&text).unwrap(),
                )),
                watchdog: Some(Duration::from_secs(10)),
            };
            notifier.ready("serving");
            let mut buf = [0u8; 256];
            let n = socket.recv(&mut buf).unwrap();
            let got = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(
                got.starts_with("READY=1\nSTATUS=serving\nMAINPID="),
                "{got}"
            );
            assert_eq!(notifier.watchdog_every(), Some(Duration::from_secs(5)));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let notifier = Notifier {
            target: None,
            watchdog: None,
        };
        notifier.ready("x");
        notifier.stopping("y");
        assert!(!notifier.is_active());
        assert_eq!(notifier.watchdog_every(), None);
    }
}
