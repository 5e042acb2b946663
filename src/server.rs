//! The HTTP(S) server: one accept loop that hands every connection to hyper with the warp
//! route tree as its service, over TLS when a certificate store is given. warp 0.4 has
//! no TLS of its own; running the routes through `warp::service` is what lets HTTPS and
//! plain HTTP share every route, error mapping and limit.
//!
//! No connection is held open by a client that sends nothing. Each connection's socket is
//! wrapped in [`Guarded`], which knows (from the service wrapper) whether a request is
//! being handled:
//! - between requests (and before the first), the client has `idle_timeout` to start
//!   one, and once its first byte arrives, `header_timeout` to finish the header;
//! - while a request is handled, nothing times out here: the handler reads the body
//!   within `body_timeout` (see `api::read_body`), and long polls may wait;
//! - a response the client stops reading for `body_timeout` is abandoned.
//!
//! At most `max_connections` are open; it is lowered to what the open-file limit leaves
//! room for. At the cap the longest-idle connection is closed to make room, and if none
//! is idle the new one is answered 503 and closed, so an idle crowd can neither starve the
//! accept loop nor exhaust file descriptors.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use guarded::Guarded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use warp::filters::BoxedFilter;
use warp::reply::Response;

mod guarded;
mod linger;
pub mod streamed;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new connection at the cap waits for an evicted idle one to make room.
const EVICT_WAIT: Duration = Duration::from_secs(1);
/// Connections past the cap that may wait for room at once; more are refused at once.
const MAX_WAITING: usize = 16;
/// A connection idle for less than this is not closed to make room: it may be a client
/// that has just connected and is about to send its request.
const MIN_IDLE_TO_EVICT: Duration = Duration::from_millis(250);
/// What a connection past the cap is told on plain HTTP before it is closed.
fn busy_response() -> Vec<u8> {
    let body = r#"{"success":false,"data":null,"error":{"code":"too_many_connections","message":"the server has too many open connections; try again","field":null}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The connection limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
}

impl Limits {
    /// The limits `server.*` configures.
    pub fn from_config(c: &crate::config::ServerConfig) -> Limits {
        Limits {
            max_connections: c.max_connections,
            header_timeout: Duration::from_secs(c.header_timeout_seconds),
            idle_timeout: Duration::from_secs(c.idle_timeout_seconds),
            body_timeout: Duration::from_secs(c.body_timeout_seconds),
        }
    }
}

/// Live counts of one listener's connections, for readiness and metrics.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections holding a slot.
    pub open: AtomicUsize,
    /// Requests being handled.
    pub busy: AtomicUsize,
    /// The cap in force (after the open-file limit lowered it).
    pub max: AtomicUsize,
    /// Connections closed to make room, and connections refused at the cap, since start.
    pub evicted: AtomicU64,
    pub refused: AtomicU64,
}

/// What the socket wrapper and the service wrapper of one connection share.
struct Conn {
    /// Requests being handled (HTTP/2 may have several).
    in_flight: AtomicUsize,
    /// Milliseconds since `opened` when the connection last became idle.
    idle_since: AtomicU64,
    /// How many times it became idle: a new idle period starts a new header wait.
    epoch: AtomicU64,
    /// Set to close the connection at its next idle moment (eviction at the cap).
    evict: AtomicBool,
    /// The reader waiting on the socket, woken for an eviction.
    reader: AtomicWaker,
    /// The last request's body was not read to its end: the client may still be
    /// sending it when the connection closes (see [`linger`]).
    unread: AtomicBool,
    opened: Instant,
    stats: Arc<ConnStats>,
}

impl Conn {
    fn new(stats: Arc<ConnStats>) -> Conn {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Conn {
            stats,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            evict: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            unread: AtomicBool::new(false),
            opened: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn begin(conn: &Arc<Conn>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.stats.busy.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(conn))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let c = &self.0;
        c.idle_since.store(c.now(), Ordering::Release);
        c.epoch.fetch_add(1, Ordering::AcqRel);
        c.in_flight.fetch_sub(1, Ordering::AcqRel);
        c.stats.busy.fetch_sub(1, Ordering::Relaxed);
        // The reader may be parked without a timer (it was busy); let it arm one.
        c.reader.wake();
    }
}

/// The open connections, so the longest-idle one can be closed when the cap is reached.
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn add(self: &Arc<Self>, conn: &Arc<Conn>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut open) = self.open.lock() {
            open.insert(id, Arc::clone(conn));
        }
        Registered(Arc::clone(self), id)
    }

    /// Asks the connection idle the longest to close; false when none is idle.
    fn evict_one(&self) -> bool {
        let Ok(open) = self.open.lock() else {
            return false;
        };
        let now = Instant::now();
        let victim = open
            .values()
            .filter(|c| c.idle() && !c.evict.load(Ordering::Relaxed))
            // Absolute time it became idle, comparable across connections.
            .map(|c| {
                (
                    c.opened + Duration::from_millis(c.idle_since.load(Ordering::Acquire)),
                    c,
                )
            })
            .filter(|(since, _)| now.saturating_duration_since(*since) >= MIN_IDLE_TO_EVICT)
            .min_by_key(|(since, _)| *since)
            .map(|(_, c)| c);
        match victim {
            Some(c) => {
                c.stats.evicted.fetch_add(1, Ordering::Relaxed);
                c.evict.store(true, Ordering::Release);
                c.reader.wake();
                true
            }
            None => false,
        }
    }
}

/// Removes a connection from the registry when it ends.
struct Registered(Arc<Registry>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut open) = self.0.open.lock() {
            open.remove(&self.1);
        }
    }
}

/// The address of the client, put in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub std::net::SocketAddr);

/// Most header fields a request may carry, and most bytes their names and values may
/// take. Past either the request is marked [`LargeHead`] and answered 431 with the error
/// envelope. The HTTP layer's own limits sit above these ([`HTTP_MAX_HEADERS`] fields,
/// and its read buffer of about 400 KB) and answer a bare 431 as the last guard.
pub const MAX_HEADERS: usize = 100;
/// See [`MAX_HEADERS`].
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
const HTTP_MAX_HEADERS: usize = 256;

/// Put in the extensions of a request whose headers are over [`MAX_HEADERS`] or
/// [`MAX_HEADER_BYTES`]; the routes refuse it before anything else.
#[derive(Debug, Clone, Copy)]
pub struct LargeHead;

fn is_large_head(h: &http::HeaderMap) -> bool {
    h.len() > MAX_HEADERS
        || h.iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
            > MAX_HEADER_BYTES
}

/// The route service with each request counted in flight on its connection.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    conn: Arc<Conn>,
    remote: std::net::SocketAddr,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// The id a request is known by in the logs and in its answer's `X-Request-Id`: the
/// client's own when it sent a short plain one, else a new one.
fn request_id(headers: &http::HeaderMap) -> http::HeaderValue {
    if let Some(v) = headers.get("x-request-id") {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
        {
            return v.clone();
        }
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    http::HeaderValue::from_str(&id).unwrap_or(http::HeaderValue::from_static("unknown"))
}

impl<S, B, R> hyper::service::Service<http::Request<B>> for Counted<S>
where
    B: hyper::body::Body + Unpin,
    S: hyper::service::Service<http::Request<linger::Tracked<B>>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<http_body_util::Either<R, streamed::Streamed>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, mut req: http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let started = Instant::now();
        req.extensions_mut().insert(RemoteAddr(self.remote));
        if is_large_head(req.headers()) {
            req.extensions_mut().insert(LargeHead);
        }
        let busy = InFlight::begin(&self.conn);
        let has_body = has_body(req.headers());
        let id = request_id(req.headers());
        let method = req.method().clone();
        let route = match &self.metrics {
            Some(m) => m.route_of(req.uri().path()),
            None => "",
        };
        // `partner` is filled in by authentication, `status` once answered.
        let span = tracing::info_span!(
            "request",
            id = %id.to_str().unwrap_or_default(),
            method = %method,
            route,
            partner = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        self.conn.unread.store(has_body, Ordering::Release);
        let req = req.map(|body| linger::Tracked::new(body, Arc::clone(&self.conn)));
        let fut = self.inner.call(req).instrument(span.clone());
        let metrics = self.metrics.clone();
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            let mut out = fut.await;
            if let Ok(res) = &mut out {
                let status = res.status();
                // An answer may come before the body was read (credentials are checked
                // first; some routes ignore a body). The connection then closes after it,
                // and says so, so that the client does not send its next request after a
                // body nobody read.
                let unread = conn.unread.load(Ordering::Acquire);
                if unread || (has_body && (status.is_client_error() || status.is_server_error())) {
                    res.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                res.headers_mut().insert("x-request-id", id);
                let took = started.elapsed();
                if let Some(m) = &metrics {
                    m.request(&method, route, status.as_u16(), took);
                }
                span.record("status", status.as_u16());
                let ms = took.as_secs_f64() * 1000.0;
                if status.is_server_error() {
                    tracing::warn!(parent: &span, ms, "answered");
                } else {
                    tracing::debug!(parent: &span, ms, "answered");
                }
            }
            // A streamed body keeps the request in flight until it is sent.
            out.map(|res| streamed::attach(res, Box::new(busy)))
        })
    }
}

/// Whether a request carries a body (a non-zero length, or chunked).
fn has_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// Most connections the open-file limit leaves room for, after raising the soft limit to
/// the hard one: what is open now, the delivery engine's outbound calls and a margin.
pub fn connection_room(outbound: usize) -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-parameter for getrlimit/setrlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let open = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count());
    let reserve = open + outbound + MAX_WAITING + 32;
    Some((lim.rlim_cur as usize).saturating_sub(reserve).max(8))
}

/// Serves `routes` on `listener` until `shutdown` completes, then stops accepting, lets
/// open connections finish their requests (up to 30 s) and returns.
pub async fn serve(
    routes: BoxedFilter<(Response,)>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    stats: Arc<ConnStats>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    shutdown: impl Future<Output = ()>,
) {
    stats.max.store(limits.max_connections, Ordering::Relaxed);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let service = warp::service(routes);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let registry = Arc::new(Registry::default());
    let mut shutdown = std::pin::pin!(shutdown);
    let waiting = Arc::new(AtomicUsize::new(0));
    let mut out_of_files: Option<Instant> = None;
    let mut last_full_warning: Option<Instant> = None;
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    let raw = e.raw_os_error();
                    if raw == Some(libc::EMFILE) || raw == Some(libc::ENFILE) {
                        // Said once a minute at most; new connections wait in the backlog
                        // meanwhile instead of the loop spinning on the error.
                        if out_of_files.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                            tracing::warn!(error = %e, "out of file descriptors; new connections wait");
                            out_of_files = Some(Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    } else {
                        tracing::debug!(error = %e, "accept failed");
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                if last_full_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        max = limits.max_connections,
                        "connection limit reached; closing idle connections to make room"
                    );
                    last_full_warning = Some(Instant::now());
                }
                // Counted here, not in the task: a burst is accepted before any task runs.
                if waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
                    waiting.fetch_sub(1, Ordering::AcqRel);
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    if acceptor.is_none() {
                        let _ = stream.try_write(&busy_response());
                    }
                    continue;
                }
                None
            }
        };
        let service = service.clone();
        let metrics = metrics.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let slots = Arc::clone(&slots);
        let registry = Arc::clone(&registry);
        let waiting = Arc::clone(&waiting);
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let _permit = match permit {
                Some(p) => p,
                None => {
                    // Until EVICT_WAIT: close the longest-idle connection and wait for its
                    // slot; when none is idle long enough, wait a little for one to be.
                    let wait = async {
                        loop {
                            let step = if registry.evict_one() { 100 } else { 50 };
                            if let Ok(Ok(p)) = tokio::time::timeout(
                                Duration::from_millis(step),
                                Arc::clone(&slots).acquire_owned(),
                            )
                            .await
                            {
                                return p;
                            }
                        }
                    };
                    let got = tokio::time::timeout(EVICT_WAIT, wait).await;
                    waiting.fetch_sub(1, Ordering::AcqRel);
                    match got {
                        Ok(p) => p,
                        _ => {
                            stats.refused.fetch_add(1, Ordering::Relaxed);
                            if acceptor.is_none() {
                                let _ = stream.try_write(&busy_response());
                            }
                            return;
                        }
                    }
                }
            };
            let conn = Arc::new(Conn::new(stats));
            let _registered = registry.add(&conn);
            let service = Counted {
                inner: TowerToHyperService::new(service),
                conn: Arc::clone(&conn),
                remote,
                metrics: metrics.clone(),
            };
            let mut builder = Builder::new(TokioExecutor::new());
            builder.http1().max_headers(HTTP_MAX_HEADERS);
            let result = match acceptor {
                None => {
                    let io = TokioIo::new(Guarded::new(stream, conn, limits));
                    watcher
                        .watch(builder.serve_connection_with_upgrades(io, service))
                        .await
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    let io = TokioIo::new(Guarded::new(tls, conn, limits));
                    watcher
                        .watch(builder.serve_connection_with_upgrades(io, service))
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open after the drain timeout");
    }
}
