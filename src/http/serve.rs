//! The shim's accept loop: one task per connection ([`super::connection`]), at most
//! `[http] max_connections` of them (and `max_connections_per_ip` per client), drained on
//! shutdown. What slow or idle clients cost is reported in bursts, never per connection.
//!
//! At `max_connections` the loop stops accepting and new connections wait in the kernel's
//! listen backlog, as nginx's `worker_connections` and HAProxy's `maxconn` do, rather than
//! being accepted and closed: a waiting client is served as soon as a connection ends
//! (slow ones end within `header_timeout`), in arrival order, while a closed one gets an
//! error for a burst that a moment's wait would have absorbed; and a connection left in
//! the backlog costs the daemon no file, which is the resource the limit protects. A
//! client over `max_connections_per_ip` is closed at once instead: only it is refused.
//!
//! Must never log once per connection (one line per kind of trouble per
//! [`REPORT_EVERY`], with a count), and never block on one connection.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connection::{Ending, Timeouts, serve_connection};
use crate::config::HttpConfig;

/// The shortest time between two log lines about the same trouble.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How long the loop waits after an accept error that is not the client's (out of files).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` under the limits of `config` until `shutdown`, then
/// waits for every connection to end (in-flight requests finish; idle ones close).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &HttpConfig,
    shutdown: CancellationToken,
) {
    let timeouts = Timeouts {
        header: config.header_timeout,
        body: config.body_timeout,
        idle: config.idle_timeout,
    };
    let max = connection_cap(config.max_connections, crate::process::open_files_limit());
    let mut connections = Connections::new(max, config.max_connections_per_ip);
    let mut reports = Reports::new(config);
    let mut tick = tokio::time::interval(REPORT_EVERY);
    let mut was_full = false;
    loop {
        let full = connections.full();
        if full && !was_full {
            reports.limit_reached.occurred();
        }
        was_full = full;
        tokio::select! {
            accepted = listener.accept(), if !connections.full() => match accepted {
                Ok((stream, remote)) => {
                    let connection = serve_connection(stream_ready(stream), remote, router.clone(), timeouts, shutdown.clone());
                    if !connections.admit(remote, connection) {
                        reports.ip_refused.occurred();
                    }
                }
                Err(e) if is_client_error(&e) => {}
                Err(e) => {
                    reports.note_accept_error(&e);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some(ended) = connections.join_next() => reports.ended(ended),
            // lets the end of a burst be reported when nothing else happens
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        reports.log_due(Instant::now());
    }
    drop(listener);
    while let Some(ended) = connections.join_next().await {
        reports.ended(ended);
    }
    reports.log_due(Instant::now() + REPORT_EVERY);
}

/// `max_connections`, lowered when the open files limit would not hold that many
/// connections next to the database pool, provider calls and the rest: a quarter of the
/// limit (at least 64 files) is kept for those. Past the limit `accept` fails, and so do
/// database reconnects; under the cap the extra clients wait in the backlog instead.
fn connection_cap(configured: usize, open_files: Option<u64>) -> usize {
    let Some(limit) = open_files.and_then(|l| usize::try_from(l).ok()) else {
        return configured;
    };
    let room = limit.saturating_sub((limit / 4).max(64)).max(1);
    if configured > room {
        tracing::warn!(
            max_connections = configured,
            open_files_limit = limit,
            serving = room,
            "[http] max_connections is more than the open files limit leaves room for: \
             serving fewer (raise LimitNOFILE)"
        );
        return room;
    }
    configured
}

/// Answers are small: sent at once instead of waiting for Nagle's algorithm.
fn stream_ready(stream: TcpStream) -> TcpStream {
    let _ = stream.set_nodelay(true);
    stream
}

/// A failed accept that only concerns the client that went away.
fn is_client_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// The connection tasks, and how many each client address holds.
struct Connections {
    tasks: JoinSet<Ending>,
    max: usize,
    per_ip: Option<PerIp>,
}

/// Open connections per client address (see [`client_key`]), for `max_connections_per_ip`.
struct PerIp {
    max: usize,
    open: HashMap<IpAddr, usize>,
    of_task: HashMap<Id, IpAddr>,
}

impl Connections {
    fn new(max: usize, per_ip: Option<usize>) -> Self {
        Self {
            tasks: JoinSet::new(),
            max,
            per_ip: per_ip.map(|max| PerIp {
                max,
                open: HashMap::new(),
                of_task: HashMap::new(),
            }),
        }
    }

    fn full(&self) -> bool {
        self.tasks.len() >= self.max
    }

    /// Runs `connection` unless its client already holds `max_connections_per_ip`
    /// (`false`: dropped, which closes it).
    fn admit(
        &mut self,
        remote: SocketAddr,
        connection: impl Future<Output = Ending> + Send + 'static,
    ) -> bool {
        let Some(per_ip) = &mut self.per_ip else {
            self.tasks.spawn(connection);
            return true;
        };
        let client = client_key(remote.ip());
        let open = per_ip.open.entry(client).or_default();
        if *open >= per_ip.max {
            return false;
        }
        *open += 1;
        let task = self.tasks.spawn(connection);
        per_ip.of_task.insert(task.id(), client);
        true
    }

    /// The next connection to end, its count given back to its client.
    async fn join_next(&mut self) -> Option<Result<Ending, JoinError>> {
        let (id, ended) = match self.tasks.join_next_with_id().await? {
            Ok((id, ending)) => (id, Ok(ending)),
            Err(e) => (e.id(), Err(e)),
        };
        if let Some(per_ip) = &mut self.per_ip
            && let Some(client) = per_ip.of_task.remove(&id)
            && let Some(open) = per_ip.open.get_mut(&client)
        {
            *open -= 1;
            if *open == 0 {
                per_ip.open.remove(&client);
            }
        }
        Some(ended)
    }
}

/// The address a client is counted under: itself for IPv4 (an IPv4-mapped IPv6 address
/// as IPv4), its /64 network for IPv6, since one IPv6 host commonly holds a whole /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(network))
        }
        v4 => v4,
    }
}

/// A kind of trouble logged at most once per [`REPORT_EVERY`], with how many times it
/// happened since the previous line: one line per burst, not one per connection.
#[derive(Debug, Default)]
struct Throttled {
    last_line: Option<Instant>,
    unreported: u64,
}

impl Throttled {
    /// Counts one occurrence.
    fn occurred(&mut self) {
        self.unreported += 1;
    }

    /// The count to log now, if any occurrence is unreported and the previous line is at
    /// least [`REPORT_EVERY`] old (the first line of a burst comes at once).
    fn due(&mut self, now: Instant) -> Option<u64> {
        if self.unreported == 0
            || self
                .last_line
                .is_some_and(|last| now.saturating_duration_since(last) < REPORT_EVERY)
        {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// The troubles the accept loop reports, and the limits their lines quote.
struct Reports {
    max_connections: usize,
    max_per_ip: Option<usize>,
    header_timeout: Duration,
    body_timeout: Duration,
    limit_reached: Throttled,
    ip_refused: Throttled,
    header_timeouts: Throttled,
    body_timeouts: Throttled,
    accept_errors: Throttled,
    last_accept_error: String,
}

impl Reports {
    fn new(config: &HttpConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            max_per_ip: config.max_connections_per_ip,
            header_timeout: config.header_timeout,
            body_timeout: config.body_timeout,
            limit_reached: Throttled::default(),
            ip_refused: Throttled::default(),
            header_timeouts: Throttled::default(),
            body_timeouts: Throttled::default(),
            accept_errors: Throttled::default(),
            last_accept_error: String::new(),
        }
    }

    fn ended(&mut self, ended: Result<Ending, JoinError>) {
        match ended {
            Ok(Ending::HeaderTimeout) => self.header_timeouts.occurred(),
            Ok(Ending::BodyTimeout) => self.body_timeouts.occurred(),
            Ok(Ending::Closed | Ending::IdleTimeout) => {}
            Err(e) if e.is_panic() => {
                tracing::error!(error = %e, "an HTTP connection task panicked")
            }
            Err(_) => {}
        }
    }

    fn note_accept_error(&mut self, e: &std::io::Error) {
        self.last_accept_error = e.to_string();
        self.accept_errors.occurred();
    }

    /// Logs every trouble whose line is due at `now`.
    fn log_due(&mut self, now: Instant) {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        if let Some(times) = self.limit_reached.due(now) {
            tracing::warn!(
                max_connections = self.max_connections,
                times,
                "HTTP connection limit reached: new connections wait in the listen backlog until \
                 one ends (raise [http] max_connections if these are real clients)"
            );
        }
        if let Some(refused) = self.ip_refused.due(now) {
            tracing::warn!(
                max_connections_per_ip = self.max_per_ip,
                refused,
                "HTTP connections closed: their client address already holds max_connections_per_ip"
            );
        }
        if let Some(closed) = self.header_timeouts.due(now) {
            tracing::info!(
                header_timeout = %fmt(self.header_timeout),
                closed,
                "HTTP connections closed: request headers not complete within header_timeout \
                 (slow or stalled clients)"
            );
        }
        if let Some(answered) = self.body_timeouts.due(now) {
            tracing::info!(
                body_timeout = %fmt(self.body_timeout),
                answered,
                "HTTP requests answered 408: body not complete within body_timeout"
            );
        }
        if let Some(times) = self.accept_errors.due(now) {
            tracing::warn!(
                error = %self.last_accept_error,
                times,
                "cannot accept HTTP connections (out of open files? see LimitNOFILE)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_one_line_at_once_then_one_line_per_period_with_its_count() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut t = Throttled::default();
        assert_eq!(t.due(at(0)), None, "nothing happened");
        t.occurred();
        assert_eq!(t.due(at(0)), Some(1), "the first line comes at once");
        for s in 1..=5 {
            t.occurred();
            assert_eq!(t.due(at(s)), None, "held back within the period");
        }
        assert_eq!(t.due(at(9)), None);
        assert_eq!(t.due(at(10)), Some(5), "the rest of the burst, counted");
        assert_eq!(t.due(at(30)), None, "the burst is over");
        t.occurred();
        assert_eq!(t.due(at(31)), Some(1), "a new burst is reported at once");
    }

    #[test]
    fn clients_are_counted_per_ipv4_address_and_per_ipv6_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_key(ip("203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(client_key(ip("::ffff:203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            client_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn the_connection_cap_leaves_a_quarter_of_the_open_files_for_the_rest() {
        assert_eq!(connection_cap(10_000, Some(65_536)), 10_000);
        assert_eq!(connection_cap(10_000, Some(1024)), 768);
        assert_eq!(connection_cap(10_000, Some(100)), 36, "at least 64 kept");
        assert_eq!(connection_cap(10_000, Some(10)), 1);
        assert_eq!(connection_cap(10_000, None), 10_000, "unknown limit");
    }

    #[tokio::test]
    async fn a_client_over_its_share_is_refused_and_its_slot_comes_back_when_one_ends() {
        let mut connections = Connections::new(10, Some(2));
        let a: SocketAddr = "198.51.100.1:1000".parse().unwrap();
        let b: SocketAddr = "198.51.100.2:1000".parse().unwrap();
        let hold = CancellationToken::new();
        let held = |token: &CancellationToken| {
            let token = token.clone();
            async move {
                token.cancelled().await;
                Ending::Closed
            }
        };
        assert!(connections.admit(a, async { Ending::Closed }));
        assert!(connections.admit(a, held(&hold)));
        assert!(connections.admit(b, held(&hold)));
        assert_eq!(
            connections.join_next().await.unwrap().unwrap(),
            Ending::Closed
        );
        assert!(
            connections.admit(a, held(&hold)),
            "the ended one freed a slot"
        );
        assert!(!connections.admit(a, held(&hold)), "two are held");
        assert!(
            connections.admit(b, held(&hold)),
            "b has a share of its own"
        );
        hold.cancel();
        while connections.join_next().await.is_some() {}
        assert!(connections.per_ip.unwrap().open.is_empty());
    }
}
