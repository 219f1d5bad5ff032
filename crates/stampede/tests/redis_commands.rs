//! A cluster reserve that reaches Redis is exactly one command: the gate's script, which also
//! counts the buyer's and the device's shared rate quotas. Counted by Redis itself
//! (`INFO commandstats`) on a Redis server of the test's own, so no other client's commands
//! can blur the count.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;

use common::{Mode, TestServer};

/// A `redis-server` on a free port, killed on drop.
struct PrivateRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    async fn start() -> Option<PrivateRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let dir = tempfile::tempdir().ok()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
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
                return Some(redis);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Calls per command since the server started.
    async fn commandstats(&self) -> HashMap<String, u64> {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the private redis");
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .expect("INFO commandstats");
        info.lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .filter_map(|l| {
                let (name, rest) = l.split_once(':')?;
                let calls = rest
                    .split(',')
                    .find_map(|f| f.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_string(), calls))
            })
            .collect()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Commands the gate's take script runs inside Redis (one round trip, however many there are).
const INSIDE_THE_SCRIPT: &[&str] = &["get", "hget", "time", "set", "decrby", "hincrby", "incr"];

/// What Redis counted between two readings, less the test's own `INFO` calls.
fn moved(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut d: Vec<(String, u64)> = after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    d.sort();
    d
}

/// Round trips: every command Redis counted that did not run inside a script.
fn round_trips(moved: &[(String, u64)]) -> u64 {
    moved
        .iter()
        .filter(|(name, _)| !INSIDE_THE_SCRIPT.contains(&name.as_str()))
        .map(|(_, n)| n)
        .sum()
}

/// 1,000 reserves that reach Redis — accepted, refused over the buyer's limit, refused sold
/// out — cost exactly one command each, `EVALSHA` of the gate's script, with the per-buyer
/// and per-device rate quotas counted inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_command_per_reserve_accepted_and_refused_alike() {
    let Some(Mode::Cluster(env)) = Mode::cluster().await else {
        return;
    };
    let redis = PrivateRedis::start()
        .await
        .expect("start a private redis-server (redis-server on PATH)");
    let url = redis.url();
    let server = TestServer::start_with_in(
        Mode::Cluster(env),
        &[
            ("STAMPEDE_REDIS_URL", url.as_str()),
            // No reconciliation pass inside the measured window, and every sold-out refusal
            // asks the gate (the flag would answer them from memory, with no command at all).
            ("STAMPEDE_RECONCILE_INTERVAL_SECS", "3600"),
            ("STAMPEDE_SOLD_OUT_FLAG_MS", "0"),
        ],
        None,
    )
    .await;
    let admin = server.admin_token().await;
    let plenty = server.create_sale(&admin, 10_000, 1, 300).await;
    let scarce = server.create_sale(&admin, 1, 1, 300).await;
    let buyers = server.buyers(300, 8).await;
    // Warm up: both sales seeded in the gate, the script loaded, the last unit of `scarce`
    // taken.
    server.reserve(&buyers[0], &plenty, 1).await.expect(201);
    server.reserve(&buyers[0], &scarce, 1).await.expect(201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_before = redis.commandstats().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = redis.commandstats().await;
    let idle = moved(&idle_before, &before);
    assert!(
        idle.is_empty(),
        "nothing else may talk to this Redis during the count: {idle:?}"
    );

    // On `plenty`: 299 accepted, and 301 refused over the limit of one (the warm-up buyer
    // twice, everybody's second try). On `scarce`: 398 refused sold out, and 2 over the limit
    // (the warm-up buyer, who holds its last unit). 1,000 reserves.
    let api = server.api();
    let mut plan = Vec::new();
    for (i, b) in buyers.iter().enumerate() {
        plan.push((b.clone(), plenty.clone(), i));
    }
    for (i, b) in buyers.iter().enumerate() {
        plan.push((b.clone(), plenty.clone(), i));
    }
    for i in 0..400 {
        plan.push((buyers[i % buyers.len()].clone(), scarce.clone(), i));
    }
    let outcomes: Vec<(u16, String)> = futures::stream::iter(plan)
        .map(|(token, sale, i)| {
            let api = api.clone();
            async move {
                let rb = api
                    .request(reqwest::Method::POST, "/api/v1/cart/items", Some(&token))
                    .header("x-device-id", format!("device-{}", i % 50))
                    .header("content-type", "application/json")
                    .body(serde_json::json!({"sale_id": sale, "quantity": 1}).to_string());
                let r = api.send(rb).await;
                (r.status, r.code().to_string())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let after = redis.commandstats().await;
    let mut tally: HashMap<(u16, String), u64> = HashMap::new();
    for o in &outcomes {
        *tally.entry(o.clone()).or_default() += 1;
    }
    let reserves = outcomes.len() as u64;
    let moved = moved(&before, &after);
    eprintln!("outcomes: {tally:?}\nRedis commands for {reserves} reserves: {moved:?}");
    assert_eq!(reserves, 1000);
    assert_eq!(
        tally.get(&(201, String::new())).copied(),
        Some(299),
        "{tally:?}"
    );
    assert_eq!(
        tally.get(&(422, "limit_exceeded".into())).copied(),
        Some(303),
        "{tally:?}"
    );
    assert_eq!(
        tally.get(&(409, "sold_out".into())).copied(),
        Some(398),
        "{tally:?}"
    );
    let evalsha = moved
        .iter()
        .find(|(n, _)| n == "evalsha")
        .map_or(0, |(_, n)| *n);
    assert_eq!(
        (round_trips(&moved), evalsha),
        (reserves, reserves),
        "one EVALSHA per reserve and nothing else outside a script: {moved:?}"
    );
}
