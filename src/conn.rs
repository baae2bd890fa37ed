//! Client connections on the HTTPS port, before and around HTTP: the PROXY protocol header of
//! a trusted proxy (see [`crate::client`]), the per-address connection cap, the TLS handshake
//! (with a deadline, and a readable 400 for plain HTTP; skipped when `[tls] enabled = false`),
//! and the deadline on each request's header block.
//!
//! pingora's own TLS listener allows 60 s for a handshake and times header reads per read, so a
//! client trickling a byte every few seconds keeps a connection forever, and nothing limits how
//! many connections one address holds. So the HTTPS port is a plain TCP listener whose
//! connections go through [`Guard`]: it counts the connection against its address (refusing it
//! over the cap), runs the handshake itself under a deadline, and hands the TLS stream, wrapped
//! in [`Guarded`], to the HTTP proxy. [`Guarded`] fails a read once a request's header block has
//! taken longer than its deadline; the proxy disarms it when the header is complete
//! ([`header_done`]) and re-arms it when the request ends ([`request_done`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::metrics;

/// Set when the edge drains before it exits (SIGTERM): new connections are closed at once and
/// answered requests end their connection, while requests in flight finish.
pub static DRAINING: AtomicBool = AtomicBool::new(false);

/// Set when the listening sockets went to a new process (a binary upgrade): connections this
/// process already accepted are still served, but each ends after its current request.
pub static HANDED_OVER: AtomicBool = AtomicBool::new(false);

/// HTTP/1 connections accepted whose first request header has not arrived yet. Shutting the
/// HTTP layer down drops connections that wait for a request, which is right for idle
/// keep-alive ones but not for a connection accepted a moment ago for a request: [`Guard`]'s
/// cleanup waits for these first (see [`crate::lifecycle`]).
static AWAITING_FIRST: AtomicUsize = AtomicUsize::new(0);

/// How long the HTTP layer's shutdown waits for connections to reach their first request.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// When the last HTTP/2 connection was set up (millis since [`EPOCH`]). An HTTP/2 client sends its
/// request right after the connection preface, but the shutdown's GOAWAY can overtake it; a
/// client such as hyper's then sees the connection closed and does not retry. So the shutdown
/// also waits until no HTTP/2 connection is younger than [`H2_FIRST_REQUEST_WINDOW`].
static LAST_H2_SETUP_MS: AtomicU64 = AtomicU64::new(0);
const H2_FIRST_REQUEST_WINDOW: Duration = Duration::from_millis(250);
static EPOCH: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

fn since_epoch_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64 + 1
}

/// Whether an HTTP/2 connection was set up so recently that its first request may be on its way.
fn h2_just_set_up() -> bool {
    let last = LAST_H2_SETUP_MS.load(Ordering::Acquire);
    last != 0 && since_epoch_ms().saturating_sub(last) < H2_FIRST_REQUEST_WINDOW.as_millis() as u64
}

/// One connection counted in [`AWAITING_FIRST`] until dropped or handed to its [`Guarded`].
struct AwaitingFirst;

impl AwaitingFirst {
    fn new() -> AwaitingFirst {
        AWAITING_FIRST.fetch_add(1, Ordering::AcqRel);
        AwaitingFirst
    }

    /// Moves the count into `g`, which ends it at its first header or when dropped.
    fn hand_to(self, g: &Guarded) {
        g.awaiting_first.store(true, Ordering::Release);
        std::mem::forget(self);
    }
}

impl Drop for AwaitingFirst {
    fn drop(&mut self) {
        AWAITING_FIRST.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether the request being answered is its connection's last.
pub fn last_request() -> bool {
    DRAINING.load(Ordering::Relaxed) || HANDED_OVER.load(Ordering::Relaxed)
}

/// Limits on client connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections one client address may have open at once (0: no cap).
    pub per_address: u32,
    /// Time from accepting a connection to the end of its TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a request's header block may take, from its first byte (for a new connection, from
    /// the end of the handshake).
    pub header_timeout: Duration,
}

/// Open connections per client address.
#[derive(Default)]
pub struct Counts {
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One open connection, counted against its address until dropped.
pub struct Permit {
    counts: Arc<Counts>,
    ip: Option<IpAddr>,
}

impl Counts {
    /// Counts a new connection from `ip`, or `None` when it already has `cap` open.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>, cap: u32) -> Option<Permit> {
        if let Some(ip) = ip {
            let mut m = self.open.lock().expect("connection counts lock");
            let n = m.entry(ip).or_insert(0);
            if cap > 0 && *n >= cap {
                return None;
            }
            *n += 1;
        }
        metrics::CONNECTIONS.inc();
        Some(Permit {
            counts: self.clone(),
            ip,
        })
    }

    /// Open connections from `ip`.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        let m = self.open.lock().expect("connection counts lock");
        m.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        metrics::CONNECTIONS.dec();
        if let Some(ip) = self.ip {
            let mut m = self.counts.open.lock().expect("connection counts lock");
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

/// The header deadline's state, shared between the stream and the proxy.
#[derive(Debug)]
struct Armed {
    armed: AtomicBool,
    /// Bumped whenever the deadline is disarmed or re-armed, so the stream starts afresh.
    generation: AtomicU64,
}

/// The deadline of one connection's current request header. No timer exists while the client
/// keeps up: one is made only when a read has to wait in the middle of a header.
#[derive(Debug)]
struct Deadline {
    limit: Duration,
    shared: Arc<Armed>,
    /// When the current header block began (its first byte; a new connection's first request:
    /// the end of the handshake).
    started: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    generation: u64,
    /// Bytes read of the current header block.
    header_bytes: usize,
}

impl Deadline {
    fn expired() -> std::io::Error {
        metrics::CONNECTIONS_REFUSED
            .with_label_values(&["header_timeout"])
            .inc();
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "request header not complete in time",
        )
    }
}

/// A client connection: the stream pingora reads and writes, with the header deadline and the
/// connection's place in the per-address count.
pub struct Guarded {
    inner: Stream,
    deadline: Option<Deadline>,
    _permit: Option<Permit>,
    oversize: Oversize,
    /// Counted in [`AWAITING_FIRST`] until its first request header is complete.
    awaiting_first: AtomicBool,
}

/// A header block over pingora's limit: pingora answers a bare 400, which the stream turns into
/// a 431 that says why (RFC 6585), with a body.
enum Oversize {
    No,
    Detected,
    /// The 431 going out in place of pingora's 400.
    Replacing(Vec<u8>, usize),
    /// Sent: the rest of pingora's answer is dropped, and the connection closes.
    Sent,
}

/// pingora's header block limit (`MAX_HEADER_SIZE` in its HTTP/1 code).
pub const MAX_HEADER_BLOCK: usize = 1024 * 1024 - 1;

fn header_too_large_answer() -> Vec<u8> {
    let body = crate::proxy::error_body("UNSUPPORTED", "request header block larger than 1 MiB");
    let mut out = format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\nContent-Length: {}\r\nDocker-Distribution-Api-Version: registry/2.0\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.first_request_arrived();
    }
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Guarded {
    fn raw(inner: Stream) -> Guarded {
        Guarded {
            inner,
            deadline: None,
            _permit: None,
            oversize: Oversize::No,
            awaiting_first: AtomicBool::new(false),
        }
    }

    /// A connection whose first request header must be complete within `limit` from now.
    fn new(inner: Stream, limit: Option<Duration>, permit: Permit) -> Guarded {
        let deadline = limit.map(|limit| Deadline {
            limit,
            shared: Arc::new(Armed {
                armed: AtomicBool::new(true),
                generation: AtomicU64::new(0),
            }),
            started: Some(tokio::time::Instant::now()),
            timer: None,
            generation: 0,
            header_bytes: 0,
        });
        Guarded {
            inner,
            deadline,
            _permit: Some(permit),
            oversize: Oversize::No,
            awaiting_first: AtomicBool::new(false),
        }
    }

    fn first_request_arrived(&self) {
        if self.awaiting_first.swap(false, Ordering::AcqRel) {
            AWAITING_FIRST.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn set_armed(&self, armed: bool) {
        if let Some(d) = &self.deadline {
            d.shared.armed.store(armed, Ordering::Release);
            d.shared.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The [`Guarded`] stream under a downstream session, if any (HTTP/1 only).
fn guarded(session: &ServerSession) -> Option<&Guarded> {
    session.stream()?.as_any().downcast_ref::<Guarded>()
}

/// The request's header block is complete: its deadline no longer applies.
pub fn header_done(session: &ServerSession) {
    if let Some(g) = guarded(session) {
        g.set_armed(false);
        g.first_request_arrived();
    }
}

/// The request is over: the next one's header block gets the deadline, from its first byte.
pub fn request_done(session: &ServerSession) {
    if let Some(g) = guarded(session) {
        g.set_armed(true);
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let Some(d) = this.deadline.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let generation = d.shared.generation.load(Ordering::Acquire);
        if generation != d.generation {
            // Disarmed or re-armed since the last read: a new header block (or none) begins.
            d.generation = generation;
            d.started = None;
            d.timer = None;
            d.header_bytes = 0;
        }
        let armed = d.shared.armed.load(Ordering::Acquire);
        if armed {
            if let Some(t) = d.timer.as_mut() {
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(Deadline::expired()));
                }
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !armed {
            return r;
        }
        if let Poll::Ready(Ok(())) = &r {
            d.header_bytes += buf.filled().len() - before;
            if d.header_bytes > MAX_HEADER_BLOCK && matches!(this.oversize, Oversize::No) {
                this.oversize = Oversize::Detected;
                metrics::CONNECTIONS_REFUSED
                    .with_label_values(&["header_too_large"])
                    .inc();
            }
        }
        match &r {
            Poll::Ready(Ok(())) if buf.filled().len() > before && d.started.is_none() => {
                // The first byte of a request: its header block has `limit` from now.
                d.started = Some(tokio::time::Instant::now());
            }
            Poll::Pending => {
                if let Some(started) = d.started {
                    // Waiting in the middle of a header block: now the deadline needs a timer.
                    let t = d.timer.get_or_insert_with(|| {
                        Box::pin(tokio::time::sleep_until(started + d.limit))
                    });
                    if t.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(Deadline::expired()));
                    }
                }
            }
            _ => {}
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if matches!(this.oversize, Oversize::Detected) && buf.starts_with(b"HTTP/1.1 400") {
            this.oversize = Oversize::Replacing(header_too_large_answer(), 0);
        }
        match &mut this.oversize {
            Oversize::Replacing(out, pos) => {
                while *pos < out.len() {
                    match Pin::new(&mut this.inner).poll_write(cx, &out[*pos..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                        }
                        Poll::Ready(Ok(n)) => *pos += n,
                        other => return other,
                    }
                }
                this.oversize = Oversize::Sent;
                Poll::Ready(Ok(buf.len()))
            }
            Oversize::Sent => Poll::Ready(Ok(buf.len())),
            _ => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if !matches!(self.oversize, Oversize::No) {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(self.inner.as_mut()).await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// What a plain-HTTP client on the HTTPS port is told (Go's words, as nginx says it too).
const PLAIN_HTTP_ANSWER: &str = "Client sent an HTTP request to an HTTPS server.\n";

/// The HTTPS port's connection handler: the per-address cap, the TLS handshake, then the HTTP
/// application `A` (the proxy) on the guarded stream.
pub struct Guard<A> {
    pub app: Arc<A>,
    /// `None`: plain HTTP (`[tls] enabled = false`, behind another TLS terminator).
    pub acceptor: Option<Acceptor>,
    pub limits: Limits,
    pub counts: Arc<Counts>,
    pub trusted: Arc<crate::client::Trusted>,
}

impl<A> Guard<A> {
    /// The TLS stream of a new connection, or `None` when it was refused or failed.
    async fn handshake(&self, acceptor: &Acceptor, mut stream: Stream) -> Option<Stream> {
        let mut first = [0u8; 1];
        match stream.try_peek(&mut first).await {
            Ok(true) if first[0] != 0x16 && first[0].is_ascii_alphabetic() => {
                // Not a TLS record but a request line: answer it in HTTP, readably.
                let answer = format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PLAIN_HTTP_ANSWER}",
                    PLAIN_HTTP_ANSWER.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.flush().await;
                metrics::CONNECTIONS_REFUSED
                    .with_label_values(&["plain_http"])
                    .inc();
                return None;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "connection closed before its TLS handshake");
                metrics::CONNECTIONS_REFUSED
                    .with_label_values(&["handshake_failed"])
                    .inc();
                return None;
            }
        }
        match acceptor.tls_handshake(Guarded::raw(stream)).await {
            Ok(tls) => {
                use pingora::protocols::Ssl as _;
                let version = tls
                    .get_ssl_digest()
                    .map_or_else(|| "unknown".to_owned(), |d| d.version.to_string());
                metrics::TLS_HANDSHAKES
                    .with_label_values(&["ok", &version])
                    .inc();
                if let Some(ALPN::Custom(p)) = tls.selected_alpn_proto() {
                    if p.protocol() == crate::tls::acme::ACME_TLS_ALPN {
                        // A CA validating tls-alpn-01: the handshake was the whole answer
                        // (RFC 8737 3); nothing follows.
                        return None;
                    }
                }
                Some(Box::new(tls))
            }
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                metrics::CONNECTIONS_REFUSED
                    .with_label_values(&["handshake_failed"])
                    .inc();
                None
            }
        }
    }
}

/// Makes `client` the address the HTTP layer (and so the lockout and the logs) sees for this
/// connection.
fn set_client(stream: &mut Stream, client: std::net::SocketAddr) {
    let local = stream
        .get_socket_digest()
        .and_then(|d| d.local_addr().cloned());
    // A digest with no descriptor: the edge reads only its addresses, and socket queries (TCP
    // info) on it fail harmlessly.
    let digest = SocketDigest::from_raw_fd(-1);
    let _ = digest
        .peer_addr
        .set(Some(pingora::protocols::l4::socket::SocketAddr::Inet(
            client,
        )));
    let _ = digest.local_addr.set(local);
    stream.set_socket_digest(digest);
}

impl<A> Guard<A> {
    /// Everything between accepting a connection and its first request: the PROXY protocol
    /// header of a trusted proxy, the per-address cap (`counted`: already applied to an
    /// untrusted peer), the TLS handshake.
    async fn open(
        &self,
        mut stream: Stream,
        peer: Option<IpAddr>,
        counted: Option<Permit>,
    ) -> Option<(Stream, Permit)> {
        let permit = match counted {
            Some(p) => p,
            None => {
                // A proxy's connections carry many clients: they are counted per client when
                // the PROXY protocol names it, and not capped otherwise.
                let mut client = None;
                if self.trusted.proxy_protocol {
                    match crate::client::read_proxy_header(&mut stream).await {
                        Ok(Some(addr)) => {
                            set_client(&mut stream, addr);
                            client = Some(addr.ip());
                        }
                        Ok(None) => {}
                        Err(e) => {
                            metrics::CONNECTIONS_REFUSED
                                .with_label_values(&["proxy_protocol"])
                                .inc();
                            tracing::debug!(proxy = ?peer, error = %e, "connection from a trusted proxy dropped");
                            return None;
                        }
                    }
                }
                self.admit(client)?
            }
        };
        let stream = match &self.acceptor {
            Some(acceptor) => self.handshake(acceptor, stream).await?,
            None => stream,
        };
        Some((stream, permit))
    }

    fn admit(&self, client: Option<IpAddr>) -> Option<Permit> {
        let permit = self.counts.admit(client, self.limits.per_address);
        if permit.is_none() {
            metrics::CONNECTIONS_REFUSED
                .with_label_values(&["per_address"])
                .inc();
            tracing::debug!(client = ?client, "connection refused: the address has too many open");
        }
        permit
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guard<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        if DRAINING.load(Ordering::Relaxed) {
            metrics::CONNECTIONS_REFUSED
                .with_label_values(&["draining"])
                .inc();
            return None;
        }
        let awaiting = AwaitingFirst::new();
        // An untrusted client is counted before anything is read from it.
        let counted = match peer {
            Some(p) if self.trusted.contains(p) => None,
            _ => Some(self.admit(peer)?),
        };
        let opened = self.open(stream, peer, counted);
        let (stream, permit) =
            match tokio::time::timeout(self.limits.handshake_timeout, opened).await {
                Ok(Some(opened)) => opened,
                Ok(None) => return None,
                Err(_) => {
                    metrics::CONNECTIONS_REFUSED
                        .with_label_values(&["handshake_timeout"])
                        .inc();
                    tracing::debug!(client = ?peer, "TLS handshake not complete in time");
                    return None;
                }
            };
        // HTTP/2 frames its own requests; the header deadline is for HTTP/1's.
        let limit =
            (stream.selected_alpn_proto() != Some(ALPN::H2)).then_some(self.limits.header_timeout);
        let guarded = Guarded::new(stream, limit, permit);
        if limit.is_some() {
            awaiting.hand_to(&guarded);
        } else {
            // HTTP/2 has no header deadline here: its first request is awaited by time instead
            // (see `cleanup`).
            LAST_H2_SETUP_MS.store(since_epoch_ms(), Ordering::Release);
            drop(awaiting);
        }
        let mut stream: Stream = Box::new(guarded);
        // Every request on this connection is served here (the permit lives as long as it).
        loop {
            stream = self.app.process_new(stream, shutdown).await?;
        }
    }

    /// The HTTP layer's shutdown, after the listener stopped accepting. Connections accepted
    /// just before are let reach their first request (for up to a second), which the shutdown
    /// would otherwise drop unanswered: in a binary upgrade their clients never reach the new
    /// process.
    async fn cleanup(&self) {
        // A client that has just connected sends its request at once; one that does not within
        // this bound is treated as idle.
        let deadline = tokio::time::Instant::now() + FIRST_REQUEST_GRACE;
        while (AWAITING_FIRST.load(Ordering::Acquire) > 0 || h2_just_set_up())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.app.cleanup().await
    }
}

/// Raises the soft limit on open files to the hard limit, so that connections, not file
/// descriptors, are what the limits above ration. Returns the limit in force.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::warn!(error = %e, "could not raise the open-files limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address() {
        let c = Arc::new(Counts::default());
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let a = c.admit(Some(ip), 2).unwrap();
        let _b = c.admit(Some(ip), 2).unwrap();
        assert!(c.admit(Some(ip), 2).is_none());
        assert!(c.admit(Some("127.0.0.3".parse().unwrap()), 2).is_some());
        drop(a);
        assert_eq!(c.open(ip), 1);
        assert!(c.admit(Some(ip), 2).is_some());
        assert!(c.admit(Some(ip), 0).is_some(), "0: no cap");
    }
}
