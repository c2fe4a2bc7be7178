//! The accept loop of `sightline serve`, for HTTP and HTTPS alike, on hyper's HTTP/1.1 connection
//! builder. It replaces `axum::serve`, which has no connection cap, no timeouts and no deadline on
//! graceful shutdown: one client holding idle sockets could take the server off the air (issue 16).
//!
//! - **Cap.** At most [`ServerLimits::max_connections`] connections are open. At the cap a new
//!   connection *evicts* the one idle longest — idle meaning no request in progress: before its
//!   first request, mid-headers, between keep-alive requests, or mid-TLS-handshake — so idle
//!   sockets, however many, never lock out `/health` or Elasticsearch. Only when every open
//!   connection has a request in progress is the new one refused: accepted and closed at once,
//!   an I/O error that every Elasticsearch service retries (es-contract §1.4), never a hang.
//! - **Timeouts.** The TLS handshake; the headers (from their first byte, so an idle keep-alive
//!   connection is not cut by it); the body (the longest wait between two body frames); an idle
//!   keep-alive connection (from the end of the last response, or from the accept).
//! - **Handshakes.** At most [`HandshakeLimits::max_concurrent`] at once: beyond that the oldest
//!   handshake in progress is dropped, so a flood of silent TLS clients cannot starve a real one.
//! - **Shutdown.** Stop accepting, close idle connections at once, let requests in progress
//!   finish within [`ServerLimits::shutdown_grace`], then close whatever is left.
//! - **Rotation.** Optionally, after N responses or at age D a response carries
//!   `Connection: close`, so clients reconnect and a load balancer can pick another replica.
//!
//! Routing, auth and body limits stay in `http/mod.rs`; the flags are in `cli/serve.rs`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, Request};
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

pub use super::tls::HandshakeLimits;

/// Connection limits and timeouts. [`Default`] holds the CLI's defaults.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Connections open at once (see the module comment for what happens at the cap).
    pub max_connections: usize,
    /// From the first byte of a request's headers to their end.
    pub header_timeout: Duration,
    /// The longest wait for the next frame of a request body; the request then fails.
    pub body_timeout: Duration,
    /// How long a connection may stay open with no request in progress.
    pub idle_timeout: Duration,
    pub handshake: HandshakeLimits,
    /// After the shutdown signal, how long requests in progress may take before being cut.
    pub shutdown_grace: Duration,
    /// Responses on one connection before it is closed after the last one (`None`: no limit).
    pub max_connection_requests: Option<u64>,
    /// Age after which a connection is closed after its current response (`None`: no limit).
    pub max_connection_age: Option<Duration>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            handshake: HandshakeLimits::default(),
            shutdown_grace: Duration::from_secs(30),
            max_connection_requests: None,
            max_connection_age: None,
        }
    }
}

/// What the server did with its connections since it started; read with [`Server::stats`].
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    /// Idle connections closed to make room for a new one at the cap.
    pub evicted: AtomicU64,
    /// New connections closed at once because every open one had a request in progress.
    pub refused: AtomicU64,
    /// Handshakes in progress dropped to make room for a new one at the handshake cap.
    pub handshakes_evicted: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    /// Connections cut when the shutdown grace ran out.
    pub cut_at_shutdown: AtomicU64,
}

/// A copy of [`Stats`] at one moment, plus the connections open then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub open: usize,
    pub accepted: u64,
    pub evicted: u64,
    pub refused: u64,
    pub handshakes_evicted: u64,
    pub handshake_timeouts: u64,
    pub header_timeouts: u64,
    pub idle_timeouts: u64,
    pub cut_at_shutdown: u64,
}

/// A bound listening socket with its application; [`Server::run`] serves it until shutdown.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    shared: Arc<Shared>,
}

/// A handle on a running server's [`Stats`].
#[derive(Clone)]
pub struct StatsHandle(Arc<Shared>);

impl StatsHandle {
    pub fn snapshot(&self) -> StatsSnapshot {
        let s = &self.0.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            open: self.0.table().conns.len(),
            accepted: get(&s.accepted),
            evicted: get(&s.evicted),
            refused: get(&s.refused),
            handshakes_evicted: get(&s.handshakes_evicted),
            handshake_timeouts: get(&s.handshake_timeouts),
            header_timeouts: get(&s.header_timeouts),
            idle_timeouts: get(&s.idle_timeouts),
            cut_at_shutdown: get(&s.cut_at_shutdown),
        }
    }
}

impl Server {
    /// `tls`: serve HTTPS with these settings (`tls::load_config`), else plain HTTP.
    pub fn new(
        listener: TcpListener,
        tls: Option<Arc<ServerConfig>>,
        app: Router,
        limits: ServerLimits,
    ) -> Server {
        Server {
            listener,
            tls: tls.map(TlsAcceptor::from),
            app,
            shared: Arc::new(Shared {
                limits,
                epoch: Instant::now(),
                table: Mutex::new(Table::default()),
                stats: Stats::default(),
            }),
        }
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stats(&self) -> StatsHandle {
        StatsHandle(self.shared.clone())
    }

    /// Serves until `shutdown` resolves, then drains (module comment) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listener,
            tls,
            app,
            shared,
        } = self;
        let (draining, drain_signal) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = listener.accept() => {
                    let tcp = match accepted {
                        Ok((tcp, _peer)) => tcp,
                        Err(e) => {
                            if accept_error_needs_pause(&e) {
                                // Out of descriptors: retrying at once would spin.
                                tokio::select! {
                                    () = &mut shutdown => break,
                                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                                }
                            }
                            continue;
                        }
                    };
                    shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let Some(conn) = shared.admit(tls.is_some()) else {
                        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("connection refused: every open connection has a request in progress (`--max-connections`)");
                        drop(tcp);
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    tasks.spawn(connection(
                        shared.clone(),
                        conn,
                        tcp,
                        tls.clone(),
                        app.clone(),
                        drain_signal.clone(),
                    ));
                }
            }
        }
        // New connections are refused by the kernel from here on.
        drop(listener);
        let _ = draining.send(true);
        let grace = shared.limits.shutdown_grace;
        if !tasks.is_empty() {
            tracing::info!(
                connections = tasks.len(),
                grace = %humantime::format_duration(grace),
                "closing idle connections; requests in progress may finish within the grace (`--shutdown-grace`)"
            );
        }
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            let left = tasks.len();
            shared
                .stats
                .cut_at_shutdown
                .fetch_add(left as u64, Ordering::Relaxed);
            tracing::warn!(
                connections = left,
                "shutdown grace (`--shutdown-grace`) over: closing the connections still open"
            );
            tasks.shutdown().await;
        }
    }
}

const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Connection-level errors are the peer's problem; anything else (out of descriptors) is ours.
fn accept_error_needs_pause(e: &io::Error) -> bool {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return false;
    }
    tracing::error!(error = %e, "accept error");
    true
}

// ---------------------------------------------------------------------------------------------
// The connection table

struct Shared {
    limits: ServerLimits,
    /// Times are stored as milliseconds since this instant, so they fit in atomics.
    epoch: Instant,
    table: Mutex<Table>,
    stats: Stats,
}

/// Every open connection, with the idle ones (and those in a TLS handshake) in the order they
/// became so: the first entry of `idle` is the one to evict.
#[derive(Default)]
struct Table {
    next_id: u64,
    next_seq: u64,
    conns: HashMap<u64, Slot>,
    idle: BTreeMap<u64, u64>,
    handshakes: BTreeMap<u64, u64>,
}

struct Slot {
    conn: Arc<Conn>,
    idle_seq: Option<u64>,
    handshake_seq: Option<u64>,
}

/// One connection's state, shared by its task, its I/O wrapper and its requests.
struct Conn {
    id: u64,
    opened: Instant,
    busy: AtomicBool,
    /// When the connection last became idle (ms since the epoch).
    idle_since: AtomicU64,
    /// When the first byte after becoming idle arrived (ms since the epoch, plus 1; 0: none).
    first_byte: AtomicU64,
    responses: AtomicU64,
    /// Wakes the task to recompute its deadline.
    rearm: Notify,
    /// Tells the task to close the connection (eviction).
    evicted: Notify,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves the table consistent (every edit is one call).
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Registers a new connection, evicting the longest-idle one at the cap; `None` when every
    /// open connection is busy.
    fn admit(&self, tls: bool) -> Option<Arc<Conn>> {
        let mut table = self.table();
        if table.conns.len() >= self.limits.max_connections.max(1) {
            let victim = table.idle.first_key_value().map(|(_, id)| *id)?;
            table.evict(victim);
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        if tls && table.handshakes.len() >= self.limits.handshake.max_concurrent.max(1) {
            if let Some((_, victim)) = table.handshakes.first_key_value().map(|(s, id)| (*s, *id)) {
                table.evict(victim);
                self.stats
                    .handshakes_evicted
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let conn = Arc::new(Conn {
            id,
            opened: Instant::now(),
            busy: AtomicBool::new(false),
            idle_since: AtomicU64::new(self.now_ms()),
            first_byte: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            rearm: Notify::new(),
            evicted: Notify::new(),
        });
        let idle_seq = table.seq();
        table.idle.insert(idle_seq, id);
        let handshake_seq = tls.then(|| {
            let seq = table.seq();
            table.handshakes.insert(seq, id);
            seq
        });
        table.conns.insert(
            id,
            Slot {
                conn: conn.clone(),
                idle_seq: Some(idle_seq),
                handshake_seq,
            },
        );
        Some(conn)
    }

    fn handshake_done(&self, conn: &Conn) {
        let mut table = self.table();
        if let Some(seq) = table
            .conns
            .get_mut(&conn.id)
            .and_then(|s| s.handshake_seq.take())
        {
            table.handshakes.remove(&seq);
        }
        conn.idle_since.store(self.now_ms(), Ordering::Relaxed);
        conn.first_byte.store(0, Ordering::Relaxed);
    }

    fn begin_request(&self, conn: &Conn) {
        let mut table = self.table();
        conn.busy.store(true, Ordering::Relaxed);
        if let Some(seq) = table
            .conns
            .get_mut(&conn.id)
            .and_then(|s| s.idle_seq.take())
        {
            table.idle.remove(&seq);
        }
    }

    fn end_request(&self, conn: &Conn) {
        let mut table = self.table();
        conn.idle_since.store(self.now_ms(), Ordering::Relaxed);
        conn.first_byte.store(0, Ordering::Relaxed);
        conn.busy.store(false, Ordering::Relaxed);
        let seq = table.seq();
        if let Some(slot) = table.conns.get_mut(&conn.id) {
            slot.idle_seq = Some(seq);
            table.idle.insert(seq, conn.id);
        }
        drop(table);
        conn.rearm.notify_one();
    }

    fn remove(&self, id: u64) {
        let mut table = self.table();
        if let Some(slot) = table.conns.remove(&id) {
            table.forget(&slot);
        }
    }

    /// When the connection must close if nothing changes, and why; `None` while a request is in
    /// progress (its body has its own timeout).
    fn deadline(&self, conn: &Conn) -> Option<(Instant, Expiry)> {
        if conn.busy.load(Ordering::Relaxed) {
            return None;
        }
        match conn.first_byte.load(Ordering::Relaxed) {
            0 => Some((
                self.at(conn.idle_since.load(Ordering::Relaxed)) + self.limits.idle_timeout,
                Expiry::Idle,
            )),
            first => Some((
                self.at(first - 1) + self.limits.header_timeout,
                Expiry::Header,
            )),
        }
    }

    /// Whether the response now being sent should be the connection's last.
    fn last_response(&self, conn: &Conn) -> bool {
        let served = conn.responses.fetch_add(1, Ordering::Relaxed) + 1;
        self.limits
            .max_connection_requests
            .is_some_and(|n| served >= n)
            || self
                .limits
                .max_connection_age
                .is_some_and(|age| conn.opened.elapsed() >= age)
    }
}

#[derive(Debug, Clone, Copy)]
enum Expiry {
    Idle,
    Header,
}

impl Table {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Removes a connection at once, so its place is free, and tells its task to close it.
    fn evict(&mut self, id: u64) {
        if let Some(slot) = self.conns.remove(&id) {
            self.forget(&slot);
            slot.conn.evicted.notify_one();
        }
    }

    fn forget(&mut self, slot: &Slot) {
        if let Some(seq) = slot.idle_seq {
            self.idle.remove(&seq);
        }
        if let Some(seq) = slot.handshake_seq {
            self.handshakes.remove(&seq);
        }
    }
}

/// Removes the connection from the table when its task ends, however it ends.
struct Registered(Arc<Shared>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

// ---------------------------------------------------------------------------------------------
// One connection

async fn connection(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    app: Router,
    mut drain_signal: watch::Receiver<bool>,
) {
    let _registered = Registered(shared.clone(), conn.id);
    let io = Tracked {
        inner: tcp,
        conn: conn.clone(),
        shared: shared.clone(),
    };
    let Some(acceptor) = tls else {
        return http(shared, conn, io, app, drain_signal).await;
    };
    let timeout = shared.limits.handshake.timeout;
    let handshake = tokio::select! {
        done = tokio::time::timeout(timeout, acceptor.accept(io)) => done,
        () = conn.evicted.notified() => return,
        _ = drain_signal.wait_for(|draining| *draining) => return,
    };
    match handshake {
        Ok(Ok(stream)) => {
            shared.handshake_done(&conn);
            http(shared, conn, stream, app, drain_signal).await;
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => {
            shared
                .stats
                .handshake_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("TLS handshake timed out (`--tls-handshake-timeout`)");
        }
    }
}

/// Serves HTTP/1.1 on one connection until it closes, times out, is evicted or shutdown ends it.
async fn http<I>(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    io: I,
    app: Router,
    mut drain_signal: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let (shared, conn) = (shared.clone(), conn.clone());
        let app = TowerToHyperService::new(app);
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = RequestGuard::begin(shared.clone(), conn.clone());
            let body_timeout = shared.limits.body_timeout;
            let req = req.map(|body| Body::new(StallTimeout::new(body, body_timeout)));
            let answer = hyper::service::Service::call(&app, req);
            async move {
                let mut response = match answer.await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                if guard.shared.last_response(&guard.conn) {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response.map(|inner| {
                    Body::new(Guarded {
                        inner,
                        _guard: guard,
                    })
                }))
            }
        })
    };
    // hyper's own header timeout runs from the moment it waits for a request, idle time
    // included; ours runs from the first byte (`Tracked`), so the idle timeout can be longer.
    let connection = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        if !draining && *drain_signal.borrow_and_update() {
            draining = true;
            if !conn.busy.load(Ordering::Relaxed) {
                return;
            }
            // Finishes the response in progress, then closes.
            connection.as_mut().graceful_shutdown();
        }
        let deadline = shared.deadline(&conn);
        let expiry = async {
            match deadline {
                Some((at, why)) => {
                    tokio::time::sleep_until(at.into()).await;
                    why
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = conn.evicted.notified() => return,
            () = conn.rearm.notified() => {}
            changed = drain_signal.changed(), if !draining => {
                if changed.is_err() {
                    // The server is gone: nothing will ever drain this connection.
                    return;
                }
            }
            why = expiry => {
                // Recheck: the connection may have become busy as the timer fired.
                if shared.deadline(&conn).is_some_and(|(at, _)| at <= Instant::now()) {
                    let counter = match why {
                        Expiry::Idle => &shared.stats.idle_timeouts,
                        Expiry::Header => &shared.stats.header_timeouts,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(?why, "closing a connection past its timeout");
                    return;
                }
            }
        }
    }
}

/// Marks the connection busy from the moment a request's headers are read until its response
/// body is finished (or dropped).
struct RequestGuard {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
}

impl RequestGuard {
    fn begin(shared: Arc<Shared>, conn: Arc<Conn>) -> RequestGuard {
        shared.begin_request(&conn);
        RequestGuard { shared, conn }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.shared.end_request(&self.conn);
    }
}

/// The response body, holding the request's [`RequestGuard`] until hyper drops it.
struct Guarded {
    inner: Body,
    _guard: RequestGuard,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    // Keeps the exact length of a full body, so hyper still sends `Content-Length`.
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails when no frame arrives for `timeout` (`--body-timeout`).
struct StallTimeout {
    inner: Incoming,
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl StallTimeout {
    fn new(inner: Incoming, timeout: Duration) -> StallTimeout {
        StallTimeout {
            inner,
            timeout,
            timer: None,
        }
    }
}

/// The error a stalled body ends with; the handler's message quotes it.
#[derive(Debug)]
struct BodyStalled(Duration);

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no body data for {} (`--body-timeout`)",
            humantime::format_duration(self.0)
        )
    }
}

impl std::error::Error for BodyStalled {}

impl http_body::Body for StallTimeout {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.timer = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyStalled(timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when the first byte of the next request arrives (the header timeout's
/// start).
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let conn = &this.conn;
        if buf.filled().len() > before
            && !conn.busy.load(Ordering::Relaxed)
            && conn.first_byte.load(Ordering::Relaxed) == 0
        {
            conn.first_byte
                .store(this.shared.now_ms() + 1, Ordering::Relaxed);
            conn.rearm.notify_one();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(max_connections: usize, max_handshakes: usize) -> Shared {
        Shared {
            limits: ServerLimits {
                max_connections,
                handshake: HandshakeLimits {
                    max_concurrent: max_handshakes,
                    timeout: Duration::from_secs(1),
                },
                ..ServerLimits::default()
            },
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
            stats: Stats::default(),
        }
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_is_evicted_and_busy_ones_never_are() {
        let s = shared(3, 10);
        let a = s.admit(false).unwrap();
        let b = s.admit(false).unwrap();
        let c = s.admit(false).unwrap();
        s.begin_request(&a);
        // b is the longest idle now that a is busy.
        let d = s.admit(false).unwrap();
        assert!(!s.table().conns.contains_key(&b.id));
        assert_eq!(s.stats.evicted.load(Ordering::Relaxed), 1);
        // c became busy and then idle again: d is now the longest idle.
        s.begin_request(&c);
        s.end_request(&c);
        let _e = s.admit(false).unwrap();
        assert!(!s.table().conns.contains_key(&d.id));
        assert!(s.table().conns.contains_key(&c.id));
        // All busy: refused.
        let ids: Vec<_> = s.table().conns.values().map(|s| s.conn.clone()).collect();
        for conn in &ids {
            s.begin_request(conn);
        }
        assert!(s.admit(false).is_none());
        assert_eq!(s.table().conns.len(), 3);
        assert!(s.table().conns.contains_key(&a.id));
    }

    #[test]
    fn over_the_handshake_cap_the_oldest_handshake_is_dropped() {
        let s = shared(100, 2);
        let a = s.admit(true).unwrap();
        let b = s.admit(true).unwrap();
        s.handshake_done(&a);
        let c = s.admit(true).unwrap();
        assert_eq!(s.table().handshakes.len(), 2);
        let _d = s.admit(true).unwrap();
        assert!(
            !s.table().conns.contains_key(&b.id),
            "b was the oldest handshake"
        );
        assert!(s.table().conns.contains_key(&a.id) && s.table().conns.contains_key(&c.id));
        assert_eq!(s.stats.handshakes_evicted.load(Ordering::Relaxed), 1);
        s.remove(c.id);
        assert_eq!(s.table().handshakes.len(), 1);
        assert_eq!(s.table().idle.len(), s.table().conns.len());
    }

    #[test]
    fn requests_and_age_end_a_connection_after_its_response() {
        let mut s = shared(10, 10);
        s.limits.max_connection_requests = Some(2);
        let a = s.admit(false).unwrap();
        assert!(!s.last_response(&a));
        assert!(s.last_response(&a));
        s.limits.max_connection_requests = None;
        s.limits.max_connection_age = Some(Duration::ZERO);
        let b = s.admit(false).unwrap();
        assert!(s.last_response(&b));
    }
}
