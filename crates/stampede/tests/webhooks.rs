//! Outgoing webhooks to the shop's own systems: every order event reaches the shop's URL at
//! least once, signed, retried with backoff while the shop answers errors, and is never sent
//! again once the shop said 2xx. A shop configured without a secret stops the start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use common::{poll_until, unix_now, TestServer};

const SHOP_SECRET: &str = "shop_whsec_black_box";
/// The shop answers 500 to this many attempts of each event before it answers 200.
const FAILURES_PER_EVENT: usize = 2;

/// One request the shop received.
#[derive(Debug, Clone)]
struct Attempt {
    event_id: Option<String>,
    signature: Option<String>,
    user_agent: Option<String>,
    body: String,
    /// What the shop answered.
    status: u16,
}

impl Attempt {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {}", self.body))
    }
}

/// A tiny shop on 127.0.0.1: fails the first attempts of each event id, then accepts; records
/// every attempt.
struct Shop {
    url: String,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Shop {
    async fn start() -> Shop {
        let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
        let seen = attempts.clone();
        let per_event: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let app = axum::Router::new().route(
            "/hooks/stampede",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let seen = seen.clone();
                let per_event = per_event.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let event_id = header("stampede-event-id");
                    let n = {
                        let mut counts = per_event.lock().unwrap();
                        let n = counts
                            .entry(event_id.clone().unwrap_or_default())
                            .or_insert(0);
                        *n += 1;
                        *n
                    };
                    let status = if n <= FAILURES_PER_EVENT {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    };
                    seen.lock().unwrap().push(Attempt {
                        event_id,
                        signature: header("stampede-signature"),
                        user_agent: header("user-agent"),
                        body,
                        status: status.as_u16(),
                    });
                    status
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Shop {
            url: format!("http://{addr}/hooks/stampede"),
            attempts,
            task,
        }
    }

    /// Every attempt so far whose body is about `order_id`.
    fn attempts_for(&self, order_id: &str) -> Vec<Attempt> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.json()["data"]["order_id"] == order_id)
            .cloned()
            .collect()
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `header` (`t=<secs>,v1=<hex>`) is the HMAC-SHA256 of `"<t>.<body>"` with `secret`,
/// made within five minutes of now: how a shop verifies it.
fn signature_verifies(secret: &str, header: &str, body: &str) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (unix_now() - t).abs() > 300 {
        return false;
    }
    v1.iter().any(|sig| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body.as_bytes());
        mac.verify_slice(sig).is_ok()
    })
}

/// The buyer's notifications of `kind` about `order_id`.
async fn notifications_about(
    server: &TestServer,
    buyer: &str,
    kind: &str,
    order_id: &str,
) -> usize {
    let r = server.get("/api/v1/notifications", Some(buyer)).await;
    r.expect(200)["notifications"]
        .as_array()
        .unwrap_or_else(|| panic!("no notifications array: {}", r.text))
        .iter()
        .filter(|n| n["kind"] == kind && n["data"]["order_id"] == order_id)
        .count()
}

in_both_modes! {
    async fn a_paid_order_reaches_the_shop_once_signed_after_retries(mode) {
        let shop = Shop::start().await;
        let server = TestServer::start_with_in(
            mode,
            &[
                ("STAMPEDE_SHOP_WEBHOOK_URL", shop.url.as_str()),
                ("STAMPEDE_SHOP_WEBHOOK_SECRET", SHOP_SECRET),
            ],
            None,
        )
        .await;
        let admin = server.admin_token().await;
        let sale = server.create_sale(&admin, 10, 2, 300).await;
        let buyer = server.buyer().await;
        let hold = server.hold(&buyer, &sale, 1).await;
        let r = server.order(&buyer, &[&hold], "tok_ok", None).await;
        let order = r.expect(201).clone();
        assert_eq!(order["status"], "confirmed", "{order}");
        let order_id = order["order_id"].as_str().unwrap().to_owned();

        let success = poll_until(
            "the shop to accept the order_confirmed webhook",
            Duration::from_secs(15),
            Duration::from_millis(100),
            || {
                let attempts = shop.attempts_for(&order_id);
                async move { attempts.into_iter().find(|a| a.status == 200) }
            },
        )
        .await;
        let body = success.json();
        assert_eq!(body["type"], "order_confirmed", "{body}");
        let event_id = body["id"].as_str().unwrap().to_owned();
        assert_eq!(success.event_id.as_deref(), Some(event_id.as_str()));
        assert_eq!(success.user_agent.as_deref(), Some("stampede"));
        assert!(body["created_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
        assert_eq!(body["data"]["order_id"], order_id.as_str(), "{body}");
        assert_eq!(body["data"]["total"], "20.00", "{body}");
        assert_eq!(body["data"]["currency"], "EUR", "{body}");

        let check = |attempts: &[Attempt]| {
            let mine: Vec<&Attempt> = attempts
                .iter()
                .filter(|a| a.event_id.as_deref() == Some(event_id.as_str()))
                .collect();
            assert_eq!(
                mine.len(),
                attempts.len(),
                "one event about this order, one id: {attempts:?}"
            );
            let successes = mine.iter().filter(|a| a.status == 200).count();
            assert_eq!(successes, 1, "exactly one accepted delivery: {attempts:?}");
            assert!(
                mine.len() > FAILURES_PER_EVENT,
                "retried after each 500: {attempts:?}"
            );
            for a in &mine {
                let signature = a.signature.as_deref().expect("Stampede-Signature header");
                assert!(
                    signature_verifies(SHOP_SECRET, signature, &a.body),
                    "signature {signature} does not verify for {}",
                    a.body
                );
                assert!(!signature_verifies("wrong secret", signature, &a.body));
                assert_eq!(a.json()["id"], event_id.as_str(), "same event every attempt");
            }
        };
        check(&shop.attempts_for(&order_id));
        assert_eq!(
            notifications_about(&server, &buyer, "order_confirmed", &order_id).await,
            1
        );

        // Nothing more after the shop said yes: no second success, no second notification.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let attempts = shop.attempts_for(&order_id);
        check(&attempts);
        assert_eq!(
            attempts.len(),
            FAILURES_PER_EVENT + 1,
            "no attempt after the 200: {attempts:?}"
        );
        assert_eq!(
            notifications_about(&server, &buyer, "order_confirmed", &order_id).await,
            1
        );
    }
}

/// A shop webhook URL without its secret is a configuration error: the server refuses to
/// start and says which setting is missing.
#[tokio::test]
async fn a_shop_webhook_url_without_a_secret_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(common::binary());
    cmd.arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in common::default_env() {
        cmd.env(k, v);
    }
    cmd.env("STAMPEDE_SHOP_WEBHOOK_URL", "http://127.0.0.1:9/hooks")
        .env_remove("STAMPEDE_SHOP_WEBHOOK_SECRET");
    let mut child = cmd.spawn().expect("spawn the stampede binary");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "stampede kept running without a shop webhook secret; stdout:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(
        !stdout.contains("listening on"),
        "it must not serve: {stdout}"
    );
    assert!(
        stderr.contains("STAMPEDE_SHOP_WEBHOOK_SECRET") && stderr.contains("--shop-webhook-secret"),
        "stderr should name the missing setting:\n{stderr}"
    );
}
