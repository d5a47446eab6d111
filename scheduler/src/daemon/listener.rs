//! Accepting API connections without letting clients exhaust the daemon.
//!
//! Every connection costs a file descriptor and a task, so:
//!
//! - they are capped ([`Limits::max_connections`]): at the cap pcq stops
//!   accepting and the kernel's backlog holds newcomers until a slot frees;
//! - a client gets [`Limits::client_timeout`] for its TLS handshake and for
//!   its request headers, and a connection with no request in flight whose
//!   client stays silent that long is closed (a request in flight is
//!   bounded by its own limits: the body's read timeout, the handler's);
//! - a connection lives at most [`Limits::max_connection_age`], and one open
//!   when the CRL changes is closed as well, so a revoked certificate keeps
//!   no connection it made before: gracefully (a request in flight is
//!   answered), and outright [`CLOSING_GRACE`] later whatever the client
//!   does;
//! - HTTP/1 only: what agents and `pcq sync` speak, and no stream
//!   multiplexing to hold a connection open with;
//! - an accept error (no file descriptor left, say) pauses the loop,
//!   doubling from 10 ms to 1 s, with one log line per 10 s rather than one
//!   per attempt.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Semaphore};

use super::metrics::Metrics;
use super::tls::Acceptor;

/// What the listener allows a connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// The longest a client may take for its TLS handshake or its request
    /// headers, or stay silent on an open connection.
    pub client_timeout: Duration,
    /// The longest a connection lives.
    pub max_connection_age: Duration,
}

/// How long a connection told to close may still finish what it is doing
/// before it is dropped.
pub const CLOSING_GRACE: Duration = Duration::from_secs(45);

/// Connections the local admin listeners hold at once.
pub const ADMIN_CONNECTIONS: usize = 64;

/// File descriptors kept for everything but API connections (the store,
/// catalog files, connections to the masters, notifications).
pub const RESERVED_FDS: u64 = 256;

impl Limits {
    /// These limits with the connection cap lowered, if need be, to what
    /// `fd_limit` file descriptors allow (keeping [`RESERVED_FDS`]); the
    /// lowered cap is logged.
    pub fn within(self, fd_limit: u64) -> Limits {
        let room = fd_limit.saturating_sub(RESERVED_FDS).max(1);
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        if self.max_connections <= room {
            return self;
        }
        tracing::warn!(
            "api.max_connections = {} but the process may open {fd_limit} files: at most {room} connections (raise LimitNOFILE)",
            self.max_connections
        );
        Limits {
            max_connections: room,
            ..self
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit; the
/// limit now in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        limit.rlim_cur
    }
}

/// Serves `router` over TLS on `listener` until the process ends, one task
/// per connection, within `limits`. With `admins`, clients must have
/// presented a certificate (the acceptor's verifier checked it); each
/// request carries the [`Caller`](super::identity::Caller) it makes as an
/// extension. Without, no client identity is taken (a stand-in server in
/// tests).
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: Arc<Acceptor>,
    router: axum::Router,
    admins: Option<Arc<Vec<String>>>,
    limits: Limits,
    metrics: Arc<Metrics>,
) {
    let mut gate = AcceptGate::new(limits.max_connections, metrics.clone());
    loop {
        let Some(slot) = gate.slot().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => {
                gate.accepted();
                c
            }
            Err(e) => {
                gate.failed(&e).await;
                continue;
            }
        };
        let (tls_acceptor, crl) = acceptor.current();
        let router = router.clone();
        let admins = admins.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            metrics.connections.inc();
            let tls =
                match tokio::time::timeout(limits.client_timeout, tls_acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => Some(t),
                    Ok(Err(e)) => {
                        tracing::debug!("TLS handshake with {peer} refused: {e}");
                        Metrics::count(&metrics.connections_closed, "handshake_refused");
                        None
                    }
                    Err(_) => {
                        Metrics::count(&metrics.connections_closed, "handshake_timeout");
                        None
                    }
                };
            if let Some(tls) = tls {
                let router = match &admins {
                    Some(admins) => {
                        let caller = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|der| super::identity::caller_of(der, admins));
                        match caller {
                            Some(caller) => {
                                tracing::debug!("{peer}: {caller}");
                                Some(router.layer(axum::Extension(caller)))
                            }
                            None => {
                                tracing::warn!(
                                    "{peer}: client certificate without a usable certname"
                                );
                                None
                            }
                        }
                    }
                    None => Some(router),
                };
                if let Some(router) = router {
                    let why = connection(tls, router, limits, crl).await;
                    Metrics::count(&metrics.connections_closed, why);
                }
            }
            metrics.connections.dec();
        });
    }
}

/// Serves HTTP on one accepted connection within `limits`, closing it when
/// `crl` changes; why it ended (a `pcq_api_connections_closed_total`
/// reason).
pub async fn connection<I>(
    io: I,
    router: axum::Router,
    limits: Limits,
    mut crl: watch::Receiver<u64>,
) -> &'static str
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let heard = Heard::new();
    let io = Watched {
        inner: io,
        heard: heard.clone(),
    };
    let in_flight = Arc::new(AtomicU64::new(0));
    let counted = in_flight.clone();
    let router = router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let counted = counted.clone();
            async move {
                let _busy = Busy::new(counted);
                next.run(request).await
            }
        },
    ));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.client_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(conn);
    let age = tokio::time::sleep(limits.max_connection_age);
    tokio::pin!(age);
    let mut tick =
        tokio::time::interval((limits.client_timeout / 4).max(Duration::from_millis(10)));
    let mut crl_open = true;
    let mut closing: Option<(&'static str, Instant)> = None;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                let Err(e) = ended else {
                    return closing.map_or("client", |c| c.0);
                };
                tracing::debug!("connection: {e}");
                return match closing {
                    Some((why, _)) => why,
                    // hyper's own header read timeout
                    None if e.is_timeout() => "client_timeout",
                    None => "client",
                };
            }
            _ = &mut age, if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(("max_age", Instant::now()));
            }
            changed = crl.changed(), if closing.is_none() && crl_open => {
                match changed {
                    Ok(()) => {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(("crl_changed", Instant::now()));
                    }
                    Err(_) => crl_open = false,
                }
            }
            _ = tick.tick() => {
                if let Some((why, since)) = closing {
                    if since.elapsed() >= CLOSING_GRACE {
                        return why;
                    }
                } else if heard.silent_for() >= limits.client_timeout
                    && in_flight.load(Ordering::Relaxed) == 0
                {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(("client_timeout", Instant::now()));
                }
            }
        }
    }
}

/// A request in flight on a connection, counted while it lives.
struct Busy(Arc<AtomicU64>);

impl Busy {
    fn new(count: Arc<AtomicU64>) -> Busy {
        count.fetch_add(1, Ordering::Relaxed);
        Busy(count)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listener the local admin API is served on (TCP on loopback, or the
/// Unix socket): no TLS, the same limits.
pub trait Accept: Send + 'static {
    /// A connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection.
    fn next(&self) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Serves `router` without TLS on a local admin `listener`, at most
/// [`ADMIN_CONNECTIONS`] at once, each within `limits`.
pub async fn serve_plain<A: Accept>(
    listener: A,
    router: axum::Router,
    limits: Limits,
    metrics: Arc<Metrics>,
) {
    let mut gate = AcceptGate::new(ADMIN_CONNECTIONS, metrics);
    // nothing to revoke here: a generation that never changes
    let (_never, crl) = watch::channel(0u64);
    loop {
        let Some(slot) = gate.slot().await else {
            return;
        };
        let stream = match listener.next().await {
            Ok(s) => {
                gate.accepted();
                s
            }
            Err(e) => {
                gate.failed(&e).await;
                continue;
            }
        };
        let (router, crl) = (router.clone(), crl.clone());
        tokio::spawn(async move {
            let _slot = slot;
            connection(stream, router, limits, crl).await;
        });
    }
}

/// The accept loop's cap and its pause after errors.
struct AcceptGate {
    slots: Arc<Semaphore>,
    cap: usize,
    pause: AcceptPause,
    metrics: Arc<Metrics>,
}

impl AcceptGate {
    fn new(cap: usize, metrics: Arc<Metrics>) -> AcceptGate {
        AcceptGate {
            slots: Arc::new(Semaphore::new(cap)),
            cap,
            pause: AcceptPause::default(),
            metrics,
        }
    }

    /// A free slot, waiting (counted and logged) at the cap.
    async fn slot(&mut self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        self.metrics.connection_cap_reached.inc();
        self.pause.cap_reached(self.cap);
        self.slots.clone().acquire_owned().await.ok()
    }

    fn accepted(&mut self) {
        self.pause.accepted();
    }

    /// Counts a failed accept and pauses.
    async fn failed(&mut self, e: &std::io::Error) {
        self.metrics.accept_errors.inc();
        tokio::time::sleep(self.pause.failed(e)).await;
    }
}

/// When a connection last moved a byte.
#[derive(Clone)]
struct Heard {
    since: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Heard {
    fn new() -> Heard {
        Heard {
            since: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last)
    }
}

/// A stream that notes each byte read or written in its [`Heard`].
struct Watched<I> {
    inner: I,
    heard: Heard,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.heard.now();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.heard.now();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The accept loop's pause after errors, and its rate-limited log.
#[derive(Default)]
struct AcceptPause {
    next: Option<Duration>,
    failed_since_log: u64,
    logged: Option<Instant>,
}

impl AcceptPause {
    const FIRST: Duration = Duration::from_millis(10);
    const LONGEST: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

    /// The pause after `e`.
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.failed_since_log += 1;
        if self.logged.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY) {
            tracing::warn!(
                "accepting connections: {e} ({} failures since the last line; pausing up to {:?} between attempts)",
                self.failed_since_log,
                Self::LONGEST
            );
            self.failed_since_log = 0;
            self.logged = Some(Instant::now());
        }
        let pause = self.next.unwrap_or(Self::FIRST);
        self.next = Some((pause * 2).min(Self::LONGEST));
        pause
    }

    fn accepted(&mut self) {
        self.next = None;
    }

    fn cap_reached(&mut self, cap: usize) {
        if self.logged.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY) {
            tracing::warn!(
                "{cap} connections open (api.max_connections): new ones wait in the kernel's backlog"
            );
            self.logged = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(client_timeout_ms: u64, age_ms: u64) -> Limits {
        Limits {
            max_connections: 16,
            client_timeout: Duration::from_millis(client_timeout_ms),
            max_connection_age: Duration::from_millis(age_ms),
        }
    }

    /// A plain-TCP server running [`connection`] on each accepted stream,
    /// with a route that answers after `handler_ms`; its address and the
    /// CRL generation sender.
    async fn server(limits: Limits, handler_ms: u64) -> (std::net::SocketAddr, watch::Sender<u64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (crl_tx, crl_rx) = watch::channel(0u64);
        let router = axum::Router::new().route(
            "/",
            axum::routing::get(move || async move {
                tokio::time::sleep(Duration::from_millis(handler_ms)).await;
                "ok"
            }),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(connection(tcp, router.clone(), limits, crl_rx.clone()));
            }
        });
        (addr, crl_tx)
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

    /// Reads until the peer closes or `limit` passes; whether it closed.
    async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 4096];
        let t = Instant::now();
        while t.elapsed() < limit {
            match tokio::time::timeout(limit - t.elapsed(), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
        false
    }

    #[tokio::test]
    async fn a_silent_client_is_closed_after_the_timeout_and_not_before() {
        let (addr, _crl) = server(limits(300, 60_000), 0).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(GET).await.expect("request");
        // answered, then idle on a kept-alive connection
        assert!(!closed_within(&mut s, Duration::from_millis(150)).await);
        assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    }

    #[tokio::test]
    async fn headers_sent_a_byte_at_a_time_do_not_hold_the_connection() {
        let (addr, _crl) = server(limits(400, 60_000), 0).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let t = Instant::now();
        // one byte every 100 ms: never silent, but the headers never end
        let mut closed = false;
        for b in b"GET / HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if s.write_all(&[*b]).await.is_err() {
                closed = true;
                break;
            }
            let mut buf = [0u8; 512];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
            {
                closed = true;
                break;
            }
        }
        assert!(closed, "the slow headers kept the connection");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn a_busy_connection_ends_at_its_max_age_after_its_answer() {
        let (addr, _crl) = server(limits(2_000, 600), 300).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let t = Instant::now();
        let mut answers = 0;
        loop {
            if s.write_all(GET).await.is_err() {
                break;
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    assert!(
                        buf[..n].starts_with(b"HTTP/1.1 200"),
                        "a request in flight is answered"
                    );
                    answers += 1;
                }
                _ => break,
            }
        }
        assert!(answers >= 2, "{answers} answers");
        let lived = t.elapsed();
        assert!(
            lived >= Duration::from_millis(600) && lived < Duration::from_secs(2),
            "{lived:?}"
        );
    }

    #[tokio::test]
    async fn a_handler_slower_than_the_client_timeout_is_still_answered() {
        let (addr, _crl) = server(limits(200, 60_000), 1_000).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(GET).await.expect("request");
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    }

    #[tokio::test]
    async fn a_new_crl_closes_open_connections() {
        let (addr, crl) = server(limits(5_000, 60_000), 0).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(GET).await.expect("request");
        assert!(!closed_within(&mut s, Duration::from_millis(200)).await);
        crl.send_modify(|g| *g += 1);
        assert!(closed_within(&mut s, Duration::from_secs(1)).await);
    }

    #[test]
    fn accept_errors_pause_doubling_to_a_second_and_success_resets() {
        let mut pause = AcceptPause::default();
        let e = std::io::Error::from_raw_os_error(24);
        let pauses: Vec<_> = (0..9).map(|_| pause.failed(&e)).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert_eq!(pauses[8], Duration::from_secs(1));
        pause.accepted();
        assert_eq!(pause.failed(&e), Duration::from_millis(10));
    }

    #[test]
    fn the_cap_fits_the_file_limit() {
        let l = limits(1_000, 1_000);
        let l = Limits {
            max_connections: 8192,
            ..l
        };
        assert_eq!(l.within(1024).max_connections, 768);
        assert_eq!(l.within(1 << 20).max_connections, 8192);
    }
}
