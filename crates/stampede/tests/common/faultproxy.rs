//! A fault-injecting TCP proxy for outage drills: it listens on 127.0.0.1 (a free port),
//! forwards every connection to one upstream address, and can be switched at any moment to
//!
//! * [`Fault::Pass`] — forward bytes as they come (the default);
//! * [`Fault::Cut`] — close every live connection now and close new ones as soon as they are
//!   accepted (what a client sees when the service is stopped);
//! * [`Fault::Blackhole`] — accept, but deliver nothing in either direction: the bytes stop
//!   somewhere in the network and every call hangs (a partition, a frozen server). Nothing is
//!   dropped from the stream: when the fault ends, the held bytes flow again, as after a
//!   partition heals and TCP retransmits;
//! * [`Fault::Delay`] — deliver every chunk that much later, in each direction, in order.
//!
//! The drills point a node at the proxy instead of the service, so a fault touches only that
//! node's connections and never the shared service itself.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the proxy does to the traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Cut,
    Blackhole,
    Delay(Duration),
}

/// Chunks in flight per direction before the reader waits for the writer: a bound, so a
/// blackholed connection holds at most this much.
const QUEUED_CHUNKS: usize = 64;
const CHUNK_BYTES: usize = 16 * 1024;

/// One proxy; stops accepting (and closes its connections) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: String,
    /// The current fault; every connection task watches it. Dropping it ends them all.
    fault: watch::Sender<Fault>,
    /// Connections accepted since the start (refused ones included).
    accepted: Arc<AtomicUsize>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (fault, watch) = watch::channel(Fault::Pass);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let target = upstream.to_owned();
        let acceptor = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                if *watch.borrow() == Fault::Cut {
                    drop(inbound); // refused: closed at once
                    continue;
                }
                let _ = inbound.set_nodelay(true);
                tokio::spawn(connection(inbound, target.clone(), watch.clone()));
            }
        });
        FaultProxy {
            addr,
            upstream: upstream.to_owned(),
            fault,
            accepted,
            acceptor,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Switches to `fault` now.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    pub fn cut(&self) {
        self.set(Fault::Cut);
    }

    pub fn blackhole(&self) {
        self.set(Fault::Blackhole);
    }

    pub fn delay(&self, by: Duration) {
        self.set(Fault::Delay(by));
    }

    /// Back to passing traffic through.
    pub fn restore(&self) {
        self.set(Fault::Pass);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        // Closes every live connection: they all wait on this channel.
        self.fault.send_replace(Fault::Cut);
    }
}

/// Resolves when the fault becomes `Cut` (or the proxy is gone).
async fn cut_off(mut watch: watch::Receiver<Fault>) {
    let _ = watch.wait_for(|f| *f == Fault::Cut).await;
}

/// Waits while the traffic is blackholed; false if the connection is to be closed instead.
async fn may_flow(watch: &mut watch::Receiver<Fault>) -> bool {
    match watch.wait_for(|f| *f != Fault::Blackhole).await {
        Ok(f) => *f != Fault::Cut,
        Err(_) => false,
    }
}

async fn connection(inbound: TcpStream, upstream: String, mut watch: watch::Receiver<Fault>) {
    // A connection opened into a blackhole is accepted and then hangs: the upstream is only
    // dialled once traffic may flow.
    let outbound = tokio::select! {
        _ = cut_off(watch.clone()) => return,
        flows = may_flow(&mut watch) => {
            if !flows {
                return;
            }
            match TcpStream::connect(&upstream).await {
                Ok(s) => s,
                Err(_) => return,
            }
        }
    };
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::select! {
        _ = cut_off(watch.clone()) => {}
        _ = async {
            tokio::join!(
                pipe(in_read, out_write, watch.clone()),
                pipe(out_read, in_write, watch.clone()),
            )
        } => {}
    }
}

/// One direction: a reader stamps each chunk with the time it may be delivered, a writer
/// delivers the chunks in order, waiting out delays and blackholes. EOF is passed on as a
/// half-close.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, watch: watch::Receiver<Fault>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUED_CHUNKS);
    let reader = {
        let watch = watch.clone();
        async move {
            let mut buf = vec![0u8; CHUNK_BYTES];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let due = match *watch.borrow() {
                    Fault::Delay(by) => Instant::now() + by,
                    _ => Instant::now(),
                };
                if tx.send((due, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    };
    let writer = {
        let mut watch = watch.clone();
        async move {
            while let Some((due, chunk)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                if !may_flow(&mut watch).await {
                    return;
                }
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = to.shutdown().await;
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every byte back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn proxied_echo() -> FaultProxy {
        FaultProxy::start(&echo_server().await.to_string()).await
    }

    /// Reads until EOF or error; true if the stream was closed.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(within, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn passes_bytes_through_intact_both_ways() {
        let proxy = proxied_echo().await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let (mut r, mut w) = s.split();
        let write = async {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let read = r.read_to_end(&mut got);
        let (_, n) = tokio::join!(write, read);
        assert_eq!(
            n.unwrap(),
            sent.len(),
            "the half-close came back after every byte"
        );
        assert!(got == sent, "bytes arrive intact and in order");
    }

    #[tokio::test]
    async fn cut_closes_live_connections_and_refuses_new_ones_until_restored() {
        let proxy = proxied_echo().await;
        let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
        live.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        live.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        proxy.cut();
        assert!(
            closed_within(&mut live, Duration::from_secs(5)).await,
            "a live connection is closed by the cut"
        );
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        let _ = fresh.write_all(b"hello").await;
        assert!(
            closed_within(&mut fresh, Duration::from_secs(5)).await,
            "a new connection is closed at once while cut"
        );

        proxy.restore();
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        again.write_all(b"back").await.unwrap();
        again.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"back", "traffic flows again after the restore");
    }

    #[tokio::test]
    async fn blackhole_holds_the_bytes_until_restored() {
        let proxy = proxied_echo().await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"one").await.unwrap();
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).await.unwrap();

        proxy.blackhole();
        s.write_all(b"two").await.unwrap();
        let hung = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await;
        assert!(hung.is_err(), "nothing comes back through a blackhole");
        // A connection opened into the blackhole is accepted and hangs too.
        let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
        late.write_all(b"three").await.unwrap();

        proxy.restore();
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"two", "held bytes flow once the blackhole ends");
        let mut five = [0u8; 5];
        late.read_exact(&mut five).await.unwrap();
        assert_eq!(&five, b"three");
    }

    #[tokio::test]
    async fn delay_delivers_later_and_in_order() {
        let proxy = proxied_echo().await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let by = Duration::from_millis(150);
        proxy.delay(by);
        let started = Instant::now();
        for word in [&b"a"[..], b"b", b"c", b"d"] {
            s.write_all(word).await.unwrap();
        }
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcd", "order is kept");
        // A lower bound only: each direction waits at least the delay.
        assert!(
            started.elapsed() >= by * 2,
            "the round trip took at least twice the delay: {:?}",
            started.elapsed()
        );
        proxy.restore();
        s.write_all(b"e").await.unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"e");
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections() {
        let proxy = proxied_echo().await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
        drop(proxy);
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    }
}
