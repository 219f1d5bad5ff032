//! The listener: accepts connections and serves the router on them, with the limits a public
//! service needs against slow and idle clients (slowloris and its kin):
//!
//! - **header read timeout**: a request's head must arrive whole within it, counted from its
//!   first byte; a client that trickles headers is disconnected;
//! - **idle timeout**: a keep-alive connection with no request in flight and no byte moved for
//!   this long is closed;
//! - **body read timeout**: a body that stops arriving fails the request (`408`), applied as a
//!   layer on the router (see [`crate::router`]);
//! - **connection cap**: past it, a new connection is answered `503` and closed at once, while
//!   the connections already open are served as before.
//!
//! Each connection is watched by the task that serves it (no task per request, no shared lock):
//! the request count and the clock readings live in atomics the service and the socket update.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// The connection limits (see the module's doc). Every one is a setting of `stampede serve`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A request head must arrive whole within this, from its first byte.
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight and no byte moved for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; past it new ones get `503` and are closed.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// What a refused connection reads before it is closed: a complete answer, so a client (or a
/// load balancer) sees a clean `503` and may retry, not a reset.
fn over_capacity() -> Vec<u8> {
    let body = r#"{"type":"/problems/unavailable","title":"Service unavailable","status":503,"detail":"too many open connections; retry shortly","code":"unavailable","retry_after":1}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets every
/// open connection finish what it is doing (closing idle ones at once), and returns when the
/// last has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = http1::Builder::new();
    // The header timeout is kept here, from a head's first byte; hyper's own would also count
    // the idle time before it, which is the idle timeout's to judge.
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("stampede_connections_refused_total").increment(1);
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let builder = builder.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            serve_connection(&builder, stream, peer, router, limits, stop).await;
            drop(slot);
        });
    }
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it closes: when all are back, all have closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(())
}

/// Answers 503 and closes. The answer goes out at once; the client's request (if it sent one)
/// is read and dropped for up to a second before the socket closes, because closing with
/// unread input resets the connection, and a reset can destroy the answer before it is read.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if stream.write_all(&over_capacity()).await.is_err() {
            return;
        }
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 1024];
        let mut budget: usize = 64 * 1024;
        while budget > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    })
    .await;
}

/// One connection's clock: what the serving task needs to judge the timeouts, kept up to date
/// by the socket (bytes moved) and the service (requests started and finished).
#[derive(Default)]
struct Watch {
    /// Milliseconds since the connection opened when a byte last moved either way.
    last_activity_ms: AtomicU64,
    /// Milliseconds since the connection opened when the first byte of a request head that
    /// has not yet reached the service arrived; `u64::MAX` when none is on its way.
    head_started_ms: AtomicU64,
    /// Requests handed to the service and not yet answered.
    in_flight: AtomicUsize,
}

impl Watch {
    fn new() -> Self {
        Self {
            last_activity_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(u64::MAX),
            in_flight: AtomicUsize::new(0),
        }
    }
}

async fn serve_connection(
    builder: &http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let opened = Instant::now();
    let watch = Arc::new(Watch::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        opened,
        watch: watch.clone(),
    });
    let service_watch = watch.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let watch = service_watch.clone();
        watch.head_started_ms.store(u64::MAX, Ordering::Relaxed);
        watch.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight(watch);
        let router = router.clone();
        async move {
            let res = match router.oneshot(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            };
            // Answered once the body has gone out (or was dropped): a live stream is a
            // request in flight, never an idle connection.
            Ok::<_, Infallible>(res.map(|body| Body::new(Answering { body, in_flight })))
        }
    });
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let tick = limits
        .header_read_timeout
        .min(limits.idle_timeout)
        .div_f32(4.0)
        .max(Duration::from_millis(10));
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !closing => {
                if changed.is_err() || *stop.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep(tick) => {
                let now_ms = millis_since(opened);
                let head = watch.head_started_ms.load(Ordering::Relaxed);
                if head != u64::MAX
                    && now_ms.saturating_sub(head) > millis(limits.header_read_timeout)
                {
                    metrics::counter!("stampede_connections_cut_total", "reason" => "header_timeout")
                        .increment(1);
                    tracing::debug!(%peer, "request head not received in time: connection cut");
                    return; // dropping the connection closes the socket
                }
                let idle_for = now_ms.saturating_sub(watch.last_activity_ms.load(Ordering::Relaxed));
                if !closing
                    && head == u64::MAX
                    && watch.in_flight.load(Ordering::Relaxed) == 0
                    && idle_for > millis(limits.idle_timeout)
                {
                    metrics::counter!("stampede_connections_cut_total", "reason" => "idle")
                        .increment(1);
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn millis_since(t: Instant) -> u64 {
    millis(t.elapsed())
}

/// Marks a request answered when dropped: with its response body, or with the service's
/// future if that ends first (a hang-up mid-handler).
struct InFlight(Arc<Watch>);

/// A response body that keeps its request counted as in flight until it is done.
struct Answering {
    body: Body,
    in_flight: InFlight,
}

impl HttpBody for Answering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let _ = &self.in_flight;
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The socket, reporting to the connection's [`Watch`] when bytes move.
struct Watched {
    inner: TcpStream,
    opened: Instant,
    watch: Arc<Watch>,
}

impl Watched {
    fn touched(&self, read: bool) {
        let now = millis_since(self.opened);
        self.watch.last_activity_ms.store(now, Ordering::Relaxed);
        // Bytes that arrive while nothing is in flight start a request head: its clock runs
        // until the service gets the request.
        if read && self.watch.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = self.watch.head_started_ms.compare_exchange(
                u64::MAX,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touched(true);
        }
        res
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.touched(false);
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.touched(false);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use axum::routing::get;

    use super::*;

    async fn start(limits: ConnectionLimits) -> (SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/healthz", get(|| async { "ok" }));
        let (tx, mut rx) = watch::channel(false);
        tokio::spawn(serve(listener, router, limits, async move {
            let _ = rx.changed().await;
        }));
        (addr, tx)
    }

    async fn get_on(stream: &mut TcpStream) -> String {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Reads until the peer closes; the time it took.
    async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout_at(started + limit, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                Ok(Ok(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    #[tokio::test]
    async fn a_trickled_head_is_cut_at_the_header_timeout_while_others_are_served() {
        let (addr, _stop) = start(ConnectionLimits {
            header_read_timeout: Duration::from_millis(400),
            idle_timeout: Duration::from_secs(60),
            max_connections: 100,
        })
        .await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        let trickle = tokio::spawn(async move {
            let head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-a: b\r\nx-c: d\r\n\r\n";
            for byte in head {
                if slow.write_all(&[*byte]).await.is_err() {
                    return (slow, true);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (slow, false)
        });
        // Meanwhile another client is answered.
        let mut other = TcpStream::connect(addr).await.unwrap();
        for _ in 0..3 {
            assert!(get_on(&mut other).await.starts_with("HTTP/1.1 200"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (mut slow, write_failed) = trickle.await.unwrap();
        let closed = write_failed
            || closed_within(&mut slow, Duration::from_secs(2))
                .await
                .is_some();
        assert!(closed, "the trickling client is still connected");
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed() {
        let (addr, _stop) = start(ConnectionLimits {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_millis(300),
            max_connections: 100,
        })
        .await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut idle).await.starts_with("HTTP/1.1 200"));
        let took = closed_within(&mut idle, Duration::from_secs(3)).await;
        assert!(took.is_some(), "the idle connection was kept open");
    }

    #[tokio::test]
    async fn past_the_cap_new_connections_get_503_and_open_ones_are_served() {
        let (addr, _stop) = start(ConnectionLimits {
            max_connections: 2,
            ..ConnectionLimits::default()
        })
        .await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut first).await.starts_with("HTTP/1.1 200"));
        assert!(get_on(&mut second).await.starts_with("HTTP/1.1 200"));
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut answer = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), third.read_to_string(&mut answer))
            .await
            .expect("the refused connection is closed");
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("\"code\":\"unavailable\""), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(
            answer
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap(),
            body.len().to_string()
        );
        // The open connections are served throughout.
        assert!(get_on(&mut first).await.starts_with("HTTP/1.1 200"));
        assert!(get_on(&mut second).await.starts_with("HTTP/1.1 200"));
        // A slot freed is a slot for the next.
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut fourth).await.starts_with("HTTP/1.1 200"));
    }
}
