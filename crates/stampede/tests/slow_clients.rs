//! Slow and idle clients against the real server: a client trickling its headers is cut at the
//! header timeout while others are answered throughout, and at the connection cap a new
//! connection gets a clean 503 while the open ones keep being served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(server: &TestServer) -> String {
    server
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// One keep-alive `GET /healthz` on an open connection; the status line.
async fn healthz_on(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: stampede\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_a_header_byte_a_second_is_cut_while_others_are_answered() {
    let server = TestServer::start_with(&[("STAMPEDE_HEADER_READ_TIMEOUT_MS", "2000")], None).await;
    let mut slow = TcpStream::connect(addr(&server)).await.unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let head =
            b"GET /healthz HTTP/1.1\r\nhost: stampede\r\nx-padding: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for byte in head {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            // The server closing is seen as a read of 0 (or an error) within the second.
            let mut probe = [0u8; 64];
            match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => panic!("the server answered a request whose head never finished"),
                Err(_) => {} // still open: send the next byte
            }
        }
        started.elapsed()
    });
    // Other clients are answered throughout, on new connections and on a kept-alive one.
    let mut kept = TcpStream::connect(addr(&server)).await.unwrap();
    let mut answered = 0;
    while !trickle.is_finished() && started.elapsed() < Duration::from_secs(20) {
        assert_eq!(healthz_on(&mut kept).await, "HTTP/1.1 200 OK");
        server.get("/healthz", None).await.expect(200);
        answered += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cut_after = trickle.await.unwrap();
    assert!(
        cut_after < Duration::from_secs(5),
        "the trickling client was held for {cut_after:?} (header timeout 2 s)"
    );
    assert!(answered >= 4, "others were answered {answered} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_connections_get_503_and_open_ones_are_served() {
    // The test client keeps a pool of its own; all of this test's connections are raw.
    let cap = 8;
    let server =
        TestServer::start_with(&[("STAMPEDE_MAX_CONNECTIONS", &cap.to_string())], None).await;
    // Let the harness's own connections (readiness probes, the admin login) close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut open = Vec::new();
    let mut refused = None;
    for _ in 0..cap + 8 {
        let mut c = TcpStream::connect(addr(&server)).await.unwrap();
        let status = healthz_on(&mut c).await;
        if status.starts_with("HTTP/1.1 503") {
            refused = Some(status);
            break;
        }
        assert_eq!(status, "HTTP/1.1 200 OK");
        open.push(c);
    }
    let refused = refused.expect("a connection past the cap is refused");
    assert!(refused.contains("503"), "{refused}");
    assert!(
        open.len() <= cap,
        "{} connections were served at once, cap {cap}",
        open.len()
    );
    // Every connection already open is still served.
    for c in &mut open {
        assert_eq!(healthz_on(c).await, "HTTP/1.1 200 OK");
    }
    // One closes: its slot serves the next newcomer.
    drop(open.pop());
    let mut served = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut c = TcpStream::connect(addr(&server)).await.unwrap();
        if healthz_on(&mut c).await == "HTTP/1.1 200 OK" {
            served = true;
            break;
        }
    }
    assert!(served, "a freed slot was not given to a new connection");
}
