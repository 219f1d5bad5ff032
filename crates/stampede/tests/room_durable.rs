//! The waiting room survives losing its memory: 10,000 buyers queued and 100 admitted, then
//! the embedded server is killed with SIGKILL and started again (or, in cluster mode, the
//! room's Redis is emptied with FLUSHALL): every buyer is at the place they had, and the
//! admitted buyers reserve with the admissions they were handed before.
//!
//! The 10,000 join through the real path (HTTP, session check, the room, the log's group
//! commit) with session tokens the test signs itself with the deployment's session key, so no
//! password is hashed 10,000 times; the 100 admitted are registered accounts (a hold needs
//! one).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use common::{sale_body, Api, Mode, TestServer};
use stampede_core::session::{sign, SessionClaims};
use stampede_core::{Timestamp, UserId};

const QUEUED: usize = 10_000;
const ADMITTED: usize = 100;
const IN_FLIGHT: usize = 64;
/// The deployment's session key (hex), given to the server so the test can sign sessions.
const SESSION_KEY: &str = "5e55104b5e55104b5e55104b5e55104b5e55104b5e55104b5e55104b5e55104b";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("STAMPEDE_SESSION_KEY", SESSION_KEY),
        // Admissions outlive the test: the admitted buyers use theirs after the crash.
        ("STAMPEDE_ADMISSION_TTL_SECS", "3600"),
    ]
}

/// A session for a buyer who never registered: enough to queue (a join needs a signed
/// session, not an account row).
fn synthetic_session(i: usize) -> String {
    let mut key = [0u8; 32];
    hex::decode_to_slice(SESSION_KEY, &mut key).unwrap();
    let now_ms = common::unix_now_millis();
    sign(
        &key,
        &SessionClaims {
            user_id: UserId::generate(now_ms, 0x5eed_0000_0000 + i as u128),
            admin: false,
            session_id: format!("synthetic{i}"),
            expires_at: Timestamp(now_ms + 3_600_000),
        },
    )
}

async fn join(api: &Api, token: &str, sale: &str, device: &str) -> Value {
    let r = api
        .post(
            &format!("/api/v1/sales/{sale}/queue"),
            Some(token),
            &json!({ "device_id": device }),
        )
        .await;
    r.expect(202).clone()
}

async fn me(api: &Api, token: &str, sale: &str) -> Value {
    let r = api
        .get(&format!("/api/v1/sales/{sale}/queue/me"), Some(token))
        .await;
    r.expect(200).clone()
}

/// Everyone's place (`queue/me`), `IN_FLIGHT` requests at a time.
async fn places(api: &Api, tokens: &[String], sale: &str) -> Vec<(u64, String)> {
    futures::stream::iter(tokens.iter().cloned())
        .map(|t| {
            let api = api.clone();
            let sale = sale.to_owned();
            async move {
                let v = me(&api, &t, &sale).await;
                (
                    v["position"].as_u64().unwrap(),
                    v["status"].as_str().unwrap().to_owned(),
                )
            }
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await
}

/// What the test holds on to across the crash.
struct Queue {
    sale: String,
    waiting: Vec<String>,
    places: Vec<(u64, String)>,
    /// (session token, admission token, device) of the admitted buyers.
    admitted: Vec<(String, String, String)>,
}

/// A live sale of 100 units behind its room; 100 registered buyers join first and are
/// admitted, then 10,000 join and wait.
async fn fill(server: &TestServer) -> Queue {
    let api = server.api();
    let admin = api.admin_token().await;
    let mut body = sale_body(ADMITTED as u64, 1, 300);
    body["queue_required"] = json!(true);
    let sale = api.create_sale_with(&admin, &body).await.expect(201)["sale_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let buyers = api.buyers(ADMITTED, 16).await;
    for (i, b) in buyers.iter().enumerate() {
        join(&api, b, &sale, &format!("admitted-{i}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut admitted = Vec::new();
    for (i, b) in buyers.iter().enumerate() {
        loop {
            let v = me(&api, b, &sale).await;
            if let Some(token) = v["admission_token"].as_str() {
                admitted.push((b.clone(), token.to_owned(), format!("admitted-{i}")));
                break;
            }
            assert!(Instant::now() < deadline, "buyer {i} was not admitted: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let waiting: Vec<String> = (0..QUEUED).map(synthetic_session).collect();
    let joined: Vec<Value> = futures::stream::iter(waiting.iter().cloned().enumerate())
        .map(|(i, t)| {
            let api = api.clone();
            let sale = sale.clone();
            async move { join(&api, &t, &sale, &format!("waiting-{i}")).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    assert!(
        joined.iter().all(|v| v["status"] == "waiting"),
        "nobody past the stock is admitted"
    );

    let places = places(&api, &waiting, &sale).await;
    let mut positions: Vec<u64> = places.iter().map(|p| p.0).collect();
    positions.sort_unstable();
    assert_eq!(
        positions,
        (1..=QUEUED as u64).collect::<Vec<_>>(),
        "the waiting hold places 1..=10,000"
    );
    assert!(places.iter().all(|p| p.1 == "waiting"));
    Queue {
        sale,
        waiting,
        places,
        admitted,
    }
}

/// After the room lost its memory: same places, and the admissions still buy.
async fn check_after(api: &Api, q: &Queue) {
    let after = places(api, &q.waiting, &q.sale).await;
    let moved: Vec<String> = q
        .places
        .iter()
        .zip(&after)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| format!("buyer {i}: {a:?} then {b:?}"))
        .take(5)
        .collect();
    assert!(
        moved.is_empty(),
        "every waiting buyer keeps their place (first differences: {moved:?})"
    );
    let mut holds = 0;
    for (session, admission, device) in &q.admitted {
        let rb = api
            .request(reqwest::Method::POST, "/api/v1/cart/items", Some(session))
            .header("X-Admission-Token", admission)
            .header("X-Device-Id", device)
            .json(&json!({ "sale_id": q.sale, "quantity": 1 }));
        let r = api.send(rb).await;
        assert_eq!(r.status, 201, "an admission handed out before: {}", r.text);
        holds += 1;
    }
    assert_eq!(holds, ADMITTED);
    // Nobody waiting was admitted meanwhile: the 100 outstanding admissions held the stock.
    let status: HashMap<String, usize> =
        places(api, &q.waiting, &q.sale)
            .await
            .into_iter()
            .fold(HashMap::new(), |mut m, (_, s)| {
                *m.entry(s).or_default() += 1;
                m
            });
    assert_eq!(status.get("admitted"), None, "{status:?}");
}

/// kill -9 of the embedded server with 10,000 queued and 100 admitted: after the restart every
/// buyer's place is what it was, and the admitted buyers reserve with their admissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_kill9_keeps_every_place_and_admission() {
    let mut server = TestServer::start_with(&env(), None).await;
    let q = fill(&server).await;
    server.kill9();
    server.start_again().await;
    check_after(&server.api(), &q).await;
}

/// A `redis-server` of the test's own (FLUSHALL would empty the machine's shared one).
struct PrivateRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    async fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a private redis-server (redis-server on PATH)");
        // Owned at once: dropped (killed and waited for) whatever happens next.
        let redis = PrivateRedis {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..250 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the private redis-server did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn flushall(&self) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cluster mode, the same queue, then FLUSHALL of the room's Redis: the room is rebuilt from
/// PostgreSQL's log of joins, everyone's place comes back, and the admissions still buy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_flushall_keeps_every_place_and_admission() {
    let Some(Mode::Cluster(cluster)) = Mode::cluster().await else {
        return;
    };
    let redis = PrivateRedis::start().await;
    let url = redis.url();
    let mut vars = env();
    vars.push(("STAMPEDE_REDIS_URL", url.as_str()));
    let server = TestServer::start_with_in(Mode::Cluster(cluster), &vars, None).await;
    let q = fill(&server).await;
    redis.flushall().await;
    check_after(&server.api(), &q).await;
}
