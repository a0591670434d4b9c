//! One connection of the shim, served by hyper's HTTP/1 with the limits `axum::serve`
//! lacks: a request head must be complete within `header_timeout`, a request body within
//! `body_timeout` (else 408 and the connection closes), and a keep-alive connection with
//! no request in progress is closed after `idle_timeout`. Handlers see the client's
//! address as `ConnectInfo<SocketAddr>`; on shutdown in-flight requests finish, idle
//! connections close at once.
//!
//! The head and idle clocks are a watchdog of ours: hyper's own `header_read_timeout`
//! restarts the moment a keep-alive connection starts waiting for its next request, so it
//! would close every idle connection after `header_timeout`, whatever `idle_timeout` says.
//! hyper's timer stays on at `header_timeout + idle_timeout`, as a backstop.
//!
//! Must never let a client hold its connection past these limits, never log per connection
//! (the accept loop reports endings in bursts: see [`super::serve`]), and never answer
//! anything itself: requests go to the router.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The time limits of every connection (`[http]` in the config).
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// To send a request's line and headers.
    pub header: Duration,
    /// To send a request's whole body.
    pub body: Duration,
    /// To start the next request on a keep-alive connection.
    pub idle: Duration,
}

/// Why a connection ended: what the accept loop counts and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// The client closed it, or hyper did (no keep-alive, a malformed request, shutdown).
    Closed,
    /// Its request head was not complete within `header_timeout`: closed unanswered.
    HeaderTimeout,
    /// A request body did not arrive within `body_timeout`: answered 408, then closed.
    BodyTimeout,
    /// Idle (keep-alive, no request in progress) for `idle_timeout`.
    IdleTimeout,
}

/// The error a request body yields once `body_timeout` has passed; the shim's JSON error
/// mapping ([`super::ApiError`]) answers it 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
pub struct BodyTimedOut(pub Duration);

/// Serves `stream` until the client leaves, a limit of `timeouts` ends it, or `shutdown`
/// (then in-flight requests finish first).
pub(super) async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    router: Router,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) -> Ending {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request| {
            respond(router.clone(), request, remote, timeouts.body, &activity)
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(timeouts.header + timeouts.idle)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let watchdog = watchdog(&activity, timeouts);
    tokio::pin!(watchdog);
    let mut ending = Ending::Closed;
    let mut stopping = false;
    loop {
        tokio::select! {
            // an error is the client's doing (reset, malformed request): nothing to report
            _ = connection.as_mut() => break,
            expired = &mut watchdog, if ending == Ending::Closed => {
                if expired == Ending::HeaderTimeout {
                    return expired;
                }
                // idle: closes at once, or lets a request that raced in finish
                ending = expired;
                connection.as_mut().graceful_shutdown();
            }
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    if activity.lock().body_timed_out {
        Ending::BodyTimeout
    } else {
        ending
    }
}

/// One request: its body under the body deadline and the client's address in its
/// extensions, through the router; the answer's end tracked for the idle clock.
fn respond(
    router: Router,
    request: Request<Incoming>,
    remote: SocketAddr,
    body_timeout: Duration,
    activity: &Arc<Activity>,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + use<> {
    let in_progress = RequestInProgress::start(activity.clone());
    let mut request = request.map(|body| Body::new(DeadlineBody::new(body, body_timeout)));
    request.extensions_mut().insert(ConnectInfo(remote));
    async move {
        let Ok(mut response) = router.oneshot(request).await;
        if response.status() == StatusCode::REQUEST_TIMEOUT {
            // the rest of the body may still trickle in: never read it, close instead
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            in_progress.activity.lock().body_timed_out = true;
        }
        Ok(response.map(|body| {
            Body::new(TrackedBody {
                body,
                _in_progress: in_progress,
            })
        }))
    }
}

/// Where a connection stands, as its watchdog sees it.
struct State {
    /// Requests whose answer is not fully sent (HTTP/1: one at a time).
    in_flight: u32,
    /// With nothing in flight: since when the client is awaited, and for what.
    waiting: Waiting,
    /// A request of this connection was answered 408.
    body_timed_out: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// A request head, since the connection's start or the first byte after an answer.
    Head(Instant),
    /// Any byte of a next request, since the last answer was sent.
    Idle(Instant),
}

/// A connection's [`State`], shared by its reads, its requests and its watchdog.
struct Activity(Mutex<State>);

impl Activity {
    fn new() -> Self {
        Self(Mutex::new(State {
            in_flight: 0,
            waiting: Waiting::Head(Instant::now()),
            body_timed_out: false,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // the state stays consistent whatever panicked while holding it
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes arrived: an idle connection is now reading a request head.
    fn bytes_received(&self) {
        let mut state = self.lock();
        if state.in_flight == 0
            && let Waiting::Idle(_) = state.waiting
        {
            state.waiting = Waiting::Head(Instant::now());
        }
    }

    /// When the connection expires if nothing happens, and as what; `None` while a request
    /// is in flight (its body has a deadline of its own).
    fn deadline(&self, timeouts: Timeouts) -> Option<(Instant, Ending)> {
        let state = self.lock();
        if state.in_flight > 0 {
            return None;
        }
        Some(match state.waiting {
            Waiting::Head(since) => (since + timeouts.header, Ending::HeaderTimeout),
            Waiting::Idle(since) => (since + timeouts.idle, Ending::IdleTimeout),
        })
    }
}

/// Resolves when the connection has waited too long for a request head or, idle, for a
/// next request.
async fn watchdog(activity: &Activity, timeouts: Timeouts) -> Ending {
    let recheck = timeouts.header.min(timeouts.idle);
    loop {
        let Some((deadline, ending)) = activity.deadline(timeouts) else {
            tokio::time::sleep(recheck).await;
            continue;
        };
        tokio::time::sleep_until(deadline).await;
        if activity.deadline(timeouts) == Some((deadline, ending)) {
            return ending;
        }
    }
}

/// Marks a request in flight from its head until its answer's body is dropped (sent, or
/// the connection gone).
struct RequestInProgress {
    activity: Arc<Activity>,
}

impl RequestInProgress {
    fn start(activity: Arc<Activity>) -> Self {
        activity.lock().in_flight += 1;
        Self { activity }
    }
}

impl Drop for RequestInProgress {
    fn drop(&mut self) {
        let mut state = self.activity.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.waiting = Waiting::Idle(Instant::now());
        }
    }
}

/// An answer's body, ending its request's [`RequestInProgress`] when dropped.
struct TrackedBody {
    body: Body,
    _in_progress: RequestInProgress,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails with [`BodyTimedOut`] once its deadline has passed.
struct DeadlineBody {
    body: Incoming,
    limit: Duration,
    deadline: Instant,
    /// Armed the first time the body is not ready (most bodies never wait).
    timer: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    fn new(body: Incoming, limit: Duration) -> Self {
        Self {
            body,
            limit,
            deadline: Instant::now() + limit,
            timer: None,
        }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Some(Err(BodyTimedOut(self.limit).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket, telling [`Activity`] when bytes arrive (TCP_NODELAY is set by
/// the accept loop).
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.bytes_received();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header: Duration::from_millis(100),
        body: Duration::from_secs(30),
        idle: Duration::from_millis(300),
    };

    /// The deadline of `activity` and when, at the earliest and latest, its clock started.
    fn clock_started(activity: &Activity, before: Instant, after: Instant, expected: Ending) {
        let (deadline, ending) = activity.deadline(TIMEOUTS).expect("a deadline");
        assert_eq!(ending, expected);
        let limit = match ending {
            Ending::HeaderTimeout => TIMEOUTS.header,
            _ => TIMEOUTS.idle,
        };
        assert!(
            before + limit <= deadline && deadline <= after + limit,
            "{ending:?}"
        );
    }

    #[test]
    fn a_new_connection_has_the_header_timeout_then_idles_after_its_answer() {
        let before = Instant::now();
        let activity = Arc::new(Activity::new());
        clock_started(&activity, before, Instant::now(), Ending::HeaderTimeout);
        let request = RequestInProgress::start(activity.clone());
        assert_eq!(activity.deadline(TIMEOUTS), None, "no deadline in flight");
        activity.bytes_received();
        assert_eq!(
            activity.deadline(TIMEOUTS),
            None,
            "body bytes change nothing"
        );
        let before = Instant::now();
        drop(request);
        clock_started(&activity, before, Instant::now(), Ending::IdleTimeout);
        let before = Instant::now();
        activity.bytes_received();
        let after = Instant::now();
        // the first byte of the next request starts its header clock, the next ones do not
        activity.bytes_received();
        clock_started(&activity, before, after, Ending::HeaderTimeout);
    }

    #[tokio::test]
    async fn the_watchdog_waits_out_a_request_in_flight_and_then_the_idle_timeout() {
        let activity = Arc::new(Activity::new());
        let request = RequestInProgress::start(activity.clone());
        let watch = tokio::spawn({
            let activity = activity.clone();
            async move { watchdog(&activity, TIMEOUTS).await }
        });
        tokio::time::sleep(TIMEOUTS.idle * 3).await;
        assert!(!watch.is_finished(), "a request in flight never expires");
        let answered = Instant::now();
        drop(request);
        assert_eq!(watch.await.unwrap(), Ending::IdleTimeout);
        assert!(Instant::now() >= answered + TIMEOUTS.idle);
    }
}
