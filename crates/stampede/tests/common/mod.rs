//! Black-box harness for the `stampede` binary: spawns `stampede serve` on a free port with a
//! fresh data directory, talks HTTP to it, kills it (gracefully on drop, or with SIGKILL on
//! demand) and restarts it on the same data directory.
//!
//! Every test file includes this module; not every file uses every helper.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::future::Future;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use sha2::Sha256;

pub const ADMIN_EMAIL: &str = "admin@stampede.test";
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
pub const WEBHOOK_SECRET: &str = "whsec_stampede_black_box_tests";
pub const PASSWORD: &str = "correct-horse-battery-staple";
pub const SLOW_MS: u64 = 300;
pub const ASYNC_MS: u64 = 300;

/// The binary under test. The brief names it `stampede`; while the package
/// `stampede-stampede` has no `[[bin]] name = "stampede"`, Cargo calls it after the package.
pub fn binary() -> &'static str {
    option_env!("CARGO_BIN_EXE_stampede")
        .or(option_env!("CARGO_BIN_EXE_stampede-stampede"))
        .expect("Cargo builds the stampede binary for integration tests")
}

/// How long the server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment every test server gets unless the test overrides a variable.
pub fn default_env() -> Vec<(String, String)> {
    [
        ("STAMPEDE_ADMIN_EMAIL", ADMIN_EMAIL.to_string()),
        ("STAMPEDE_ADMIN_PASSWORD", ADMIN_PASSWORD.to_string()),
        ("STAMPEDE_WEBHOOK_SECRET", WEBHOOK_SECRET.to_string()),
        ("STAMPEDE_ARGON2_MEMORY_KIB", "256".to_string()),
        ("STAMPEDE_ARGON2_ITERATIONS", "1".to_string()),
        ("STAMPEDE_SWEEP_INTERVAL_MS", "100".to_string()),
        ("STAMPEDE_SANDBOX_SLOW_MS", SLOW_MS.to_string()),
        ("STAMPEDE_SANDBOX_ASYNC_MS", ASYNC_MS.to_string()),
        ("STAMPEDE_RATE_LIMIT_PER_SEC", "100000".to_string()),
        ("STAMPEDE_IP_RATE_LIMIT_PER_SEC", "100000".to_string()),
        // Tests read stock right after changing it; the viewers' cache (1 s by default) has
        // tests of its own (reads.rs).
        ("STAMPEDE_READ_CACHE_MS", "0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

// ---------------------------------------------------------------------------------------------
// Deployment modes
// ---------------------------------------------------------------------------------------------

pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The local three-master Redis Cluster `scripts/redis-cluster` starts.
pub const REDIS_CLUSTER_NODES: [&str; 3] = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"];
pub const REDIS_CLUSTER_URL: &str = "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

/// Which deployment a test server runs as.
#[derive(Debug, Clone)]
pub enum Mode {
    /// SQLite in the data dir, in-process gate and bus.
    Embedded,
    /// PostgreSQL, Redis and RabbitMQ on this machine, in a scratch namespace shared by every
    /// node started with this value (one schema, one key prefix, one set of queues).
    Cluster(std::sync::Arc<ClusterEnv>),
}

impl Mode {
    /// A fresh cluster namespace, or `None` (with a message saying which suite is skipped and
    /// why) when the services are not reachable. Under CI that is a failure, never a skip.
    pub async fn cluster() -> Option<Mode> {
        Self::cluster_with(REDIS_URL, &[("Redis", "127.0.0.1:6379")]).await
    }

    /// Like [`Mode::cluster`], with the gate on the local three-master Redis Cluster
    /// (`scripts/redis-cluster` starts it; `.ci/run` does).
    pub async fn redis_cluster() -> Option<Mode> {
        Self::cluster_with(
            REDIS_CLUSTER_URL,
            &[
                ("Redis Cluster node", REDIS_CLUSTER_NODES[0]),
                ("Redis Cluster node", REDIS_CLUSTER_NODES[1]),
                ("Redis Cluster node", REDIS_CLUSTER_NODES[2]),
            ],
        )
        .await
    }

    async fn cluster_with(redis_url: &str, redis: &[(&str, &str)]) -> Option<Mode> {
        let mut down = Vec::new();
        let mut services = vec![
            ("PostgreSQL", "127.0.0.1:5432"),
            ("RabbitMQ", "127.0.0.1:5672"),
        ];
        services.extend_from_slice(redis);
        for (name, addr) in services {
            let reachable =
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                    .await
                    .is_ok_and(|r| r.is_ok());
            if !reachable {
                down.push(format!("{name} at {addr}"));
            }
        }
        if !down.is_empty() {
            let msg = format!(
                "cluster-mode test skipped: {} not reachable (start them to run the cluster suite)",
                down.join(", ")
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg}; CI must run the cluster suite");
            }
            eprintln!("{msg}");
            return None;
        }
        Some(Mode::Cluster(std::sync::Arc::new(
            ClusterEnv::create(redis_url).await,
        )))
    }

    /// Empties the gate's Redis (every master of a Redis Cluster), as a crash of it would.
    pub async fn flush_redis(&self) {
        let Mode::Cluster(c) = self else {
            return;
        };
        let nodes: Vec<String> = if c.redis_url == REDIS_CLUSTER_URL {
            REDIS_CLUSTER_NODES
                .iter()
                .map(|n| format!("redis://{n}/"))
                .collect()
        } else {
            vec![c.redis_url.clone()]
        };
        for url in nodes {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        }
    }

    /// The environment a server of this mode gets on top of the defaults.
    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            Mode::Embedded => vec![],
            Mode::Cluster(c) => vec![
                ("STAMPEDE_POSTGRES_URL".into(), c.postgres_url()),
                ("STAMPEDE_REDIS_URL".into(), c.redis_url.clone()),
                ("STAMPEDE_AMQP_URL".into(), AMQP_URL.into()),
                ("STAMPEDE_CLUSTER_NAME".into(), c.name.clone()),
                ("STAMPEDE_RECONCILE_INTERVAL_SECS".into(), "1".into()),
            ],
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Mode::Cluster(_))
    }
}

/// A scratch namespace on the machine's services: a PostgreSQL schema and the Redis/RabbitMQ
/// prefix of the same name. Dropped (schema, queues) when the last server using it is gone.
#[derive(Debug)]
pub struct ClusterEnv {
    pub name: String,
    /// The gate's Redis: one server, or the local Redis Cluster.
    pub redis_url: String,
}

impl ClusterEnv {
    async fn create(redis_url: &str) -> ClusterEnv {
        let name = format!("stampede_bb_{:016x}", rand_u64());
        let pool = sqlx::PgPool::connect(POSTGRES_URL)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&pool)
            .await
            .expect("create a scratch schema");
        pool.close().await;
        ClusterEnv {
            name,
            redis_url: redis_url.to_string(),
        }
    }

    /// The URL a node connects with: the scratch schema first on its search path.
    pub fn postgres_url(&self) -> String {
        format!("{POSTGRES_URL}?options[search_path]={}", self.name)
    }

    /// A connection to the scratch schema, for checks against the judge itself.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.postgres_url())
            .await
            .expect("connect to the scratch schema")
    }
}

impl Drop for ClusterEnv {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: clean up from a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(pool) = sqlx::PgPool::connect(POSTGRES_URL).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .execute(&pool)
                        .await;
                }
                let bus =
                    stampede_bus_rabbitmq::AmqpBus::start(stampede_bus_rabbitmq::AmqpConfig {
                        url: AMQP_URL.into(),
                        namespace: name.clone(),
                        node_id: "cleanup".into(),
                    })
                    .await;
                for _ in 0..50 {
                    if bus.connected() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = bus.delete_topology().await;
            });
        })
        .join();
    }
}

fn rand_u64() -> u64 {
    rand::random()
}

/// Declares black-box tests that run once per deployment mode, from one body: for each
/// `async fn name(mode) { … }` it generates `embedded::name` and `cluster::name` (the latter
/// skipped with a message when the services are down, failed under CI).
#[macro_export]
macro_rules! in_both_modes {
    ($( $(#[$meta:meta])* async fn $name:ident($mode:ident) $body:block )*) => {
        $( $(#[$meta])* async fn $name($mode: common::Mode) $body )*

        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Mode::Embedded).await
                }
            )*
        }

        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(mode) = super::common::Mode::cluster().await {
                        super::$name(mode).await
                    }
                }
            )*
        }
    };
}

/// Several nodes sharing one cluster namespace (started in parallel).
pub async fn cluster_nodes(mode: &Mode, n: usize) -> Vec<TestServer> {
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(TestServer::start_in(mode.clone()).await);
    }
    nodes
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// A running `stampede serve`. Dereferences to [`Api`] for requests.
pub struct TestServer {
    child: Option<Child>,
    api: Api,
    data_dir: PathBuf,
    /// Holds the data dir (unless the caller gave one) and the stdout/stderr logs of each run.
    root: tempfile::TempDir,
    env: Vec<(String, String)>,
    runs: u32,
    /// Which deployment this server is (keeps its cluster namespace alive).
    pub mode: Mode,
}

impl Deref for TestServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestServer {
    /// A server with the default test environment and a fresh data directory.
    pub async fn start() -> TestServer {
        Self::start_with(&[], None).await
    }

    /// A server of this mode with the default test environment.
    pub async fn start_in(mode: Mode) -> TestServer {
        Self::start_with_in(mode, &[], None).await
    }

    /// A server with `env` on top of the defaults, on `data_dir` (or a fresh one).
    pub async fn start_with(env: &[(&str, &str)], data_dir: Option<PathBuf>) -> TestServer {
        Self::start_with_in(Mode::Embedded, env, data_dir).await
    }

    /// A server of `mode` with `env` on top of the defaults, on `data_dir` (or a fresh one).
    pub async fn start_with_in(
        mode: Mode,
        env: &[(&str, &str)],
        data_dir: Option<PathBuf>,
    ) -> TestServer {
        let root = tempfile::Builder::new()
            .prefix("stampede-test-")
            .tempdir()
            .expect("create a temp dir");
        let data_dir = data_dir.unwrap_or_else(|| root.path().join("data"));
        std::fs::create_dir_all(&data_dir).expect("create the data dir");
        let mut all = default_env();
        for (k, v) in mode.env() {
            all.retain(|(key, _)| *key != k);
            all.push((k, v));
        }
        for (k, v) in env {
            all.retain(|(key, _)| key != k);
            all.push((k.to_string(), v.to_string()));
        }
        let mut server = TestServer {
            child: None,
            api: Api::new(String::new()),
            data_dir,
            root,
            env: all,
            runs: 0,
            mode,
        };
        server.spawn().await;
        server
    }

    /// The data directory (kept across restarts).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A handle for requests that can move into spawned tasks.
    pub fn api(&self) -> Api {
        self.api.clone()
    }

    fn log_path(&self, stream: &str, run: u32) -> PathBuf {
        self.root.path().join(format!("{stream}-{run}.log"))
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        self.runs += 1;
        let run = self.runs;
        let stdout_path = self.log_path("stdout", run);
        let stderr_path = self.log_path("stderr", run);
        let stdout = std::fs::File::create(&stdout_path).expect("create stdout log");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn the stampede binary");
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let base = loop {
            let out = std::fs::read_to_string(&stdout_path).unwrap_or_default();
            if let Some(base) = out
                .lines()
                .find_map(|l| l.trim().strip_prefix("listening on "))
                .filter(|b| b.starts_with("http://"))
            {
                break base.trim_end_matches('/').to_string();
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "stampede exited before listening ({status}); stdout:\n{out}\nstderr tail:\n{}",
                        self.stderr_tail(60)
                    );
                }
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!(
                    "stampede did not print its listening line within {START_TIMEOUT:?}; stdout:\n{out}\nstderr tail:\n{}",
                    self.stderr_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.api = Api::new(base);
    }

    /// SIGTERM, then waits (up to `within`) for the process to exit on its own; returns its
    /// exit status, or `None` if it had to be killed.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets (or, with `None`, removes) a variable of the environment the next start gets.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_owned(), v.to_owned()));
        }
    }

    /// Waits (up to `within`) for the process to exit on its own; its exit status, or `None`
    /// if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts the server again on the same data directory after it stopped.
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    /// SIGKILL: no shutdown hooks, no flush. Safe to call when already dead.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data directory and environment (kills it first if
    /// it is still running). The base URL changes (a new free port).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// The last `n` lines the current (or last) run wrote to stderr.
    /// The server's log lines (both streams, this run) that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        ["stdout", "stderr"]
            .iter()
            .flat_map(|s| {
                std::fs::read_to_string(self.log_path(s, self.runs))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_path("stderr", self.runs)).unwrap_or_default();
        let mut tail: VecDeque<&str> = VecDeque::with_capacity(n);
        for line in text.lines() {
            if tail.len() == n {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail.into_iter().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "---- stampede stderr (last 40 lines, run {}) ----\n{}\n----",
                self.runs,
                self.stderr_tail(40)
            );
        }
        self.kill9();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// One answer, fully read.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    /// The body parsed as JSON, or `Null` if it is not JSON.
    pub json: Value,
}

impl Resp {
    pub fn content_type(&self) -> String {
        self.headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// The problem's `code`, or "" when there is none.
    pub fn code(&self) -> &str {
        self.json["code"].as_str().unwrap_or("")
    }

    /// Asserts the status and returns the JSON body. (Content types of successful answers are
    /// checked once, by `api.rs::answers_declare_their_content_type`.)
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(
            self.status, status,
            "expected HTTP {status}, got {} with body {}",
            self.status, self.text
        );
        &self.json
    }

    /// What is wrong with the content type of a successful JSON answer, if anything.
    pub fn json_content_type_error(&self) -> Option<String> {
        let ct = self.content_type();
        (!ct.starts_with("application/json")).then(|| {
            format!(
                "HTTP {} answer should be application/json, content-type was {ct:?}",
                self.status
            )
        })
    }

    /// Asserts an RFC 9457 problem with this status and code, content type included.
    #[track_caller]
    pub fn expect_problem(&self, status: u16, code: &str) {
        self.expect_error(status, code);
        self.expect_problem_shape();
    }

    /// Asserts the status and the problem's `code` and fields, but not the content type: for
    /// tests about behaviour, so that one wrong header does not hide what else they check.
    /// `bad_input.rs` and `api.rs::answers_declare_their_content_type` check content types.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_ne!(self.status, 500, "server error: {}", self.text);
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "expected HTTP {status} `{code}`, got {} with body {}",
            self.status,
            self.text
        );
        assert_eq!(
            self.json["status"].as_u64(),
            Some(u64::from(self.status)),
            "problem `status` field should match the HTTP status: {}",
            self.text
        );
        for field in ["type", "title", "detail"] {
            assert!(
                self.json[field].is_string(),
                "problem lacks string field `{field}`: {}",
                self.text
            );
        }
    }

    /// Asserts a problem (fields, not content type) whose status is one of `statuses`.
    #[track_caller]
    pub fn expect_status_in(&self, statuses: &[u16]) {
        assert!(
            statuses.contains(&self.status),
            "expected HTTP one of {statuses:?}, got {} with body {}",
            self.status,
            self.text
        );
        let code = self.code().to_string();
        assert!(!code.is_empty(), "problem without a code: {}", self.text);
        self.expect_error(self.status, &code);
    }

    /// Asserts the content type and the fields of an RFC 9457 problem.
    #[track_caller]
    pub fn expect_problem_shape(&self) {
        if let Some(e) = self.problem_shape_error() {
            panic!("{e}");
        }
    }

    /// What is wrong with this answer as an RFC 9457 problem, if anything.
    pub fn problem_shape_error(&self) -> Option<String> {
        let ct = self.content_type();
        if !ct.starts_with("application/problem+json") {
            return Some(format!(
                "HTTP {} should be application/problem+json, content-type was {ct:?}, body {}",
                self.status, self.text
            ));
        }
        if self.json["status"].as_u64() != Some(u64::from(self.status)) {
            return Some(format!(
                "problem `status` field should match the HTTP status {}: {}",
                self.status, self.text
            ));
        }
        for field in ["type", "title", "detail", "code"] {
            if !self.json[field].is_string() {
                return Some(format!(
                    "problem lacks string field `{field}`: {}",
                    self.text
                ));
            }
        }
        None
    }
}

/// A cheap, cloneable handle to one server's HTTP API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build the HTTP client")
}

async fn read(resp: reqwest::Response) -> Result<Resp, reqwest::Error> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await?;
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Resp {
        status,
        headers,
        text,
        json,
    })
}

impl Api {
    pub fn new(base: String) -> Api {
        Api {
            base,
            client: http_client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let mut rb = self.client.request(method, self.url(path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    /// Sends and reads; transport errors are returned (for crash tests).
    pub async fn try_send(&self, rb: RequestBuilder) -> Result<Resp, reqwest::Error> {
        read(rb.send().await?).await
    }

    /// Sends and reads; panics on transport errors.
    pub async fn send(&self, rb: RequestBuilder) -> Resp {
        match self.try_send(rb).await {
            Ok(r) => r,
            Err(e) => panic!("request to {} failed: {e}", self.base),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut rb = self.request(method, path, token);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        self.send(rb).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// POST without a body.
    pub async fn post_empty(&self, path: &str, token: Option<&str>) -> Resp {
        self.call(Method::POST, path, token, None).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.call(Method::PATCH, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.call(Method::DELETE, path, token, None).await
    }

    /// POST with a raw body and `content-type: application/json`.
    pub async fn post_raw(&self, path: &str, token: Option<&str>, body: impl Into<String>) -> Resp {
        let rb = self
            .request(Method::POST, path, token)
            .header("content-type", "application/json")
            .body(body.into());
        self.send(rb).await
    }

    // ---- accounts ----------------------------------------------------------------------------

    pub async fn register(&self, email: &str, password: &str, name: &str) -> Resp {
        self.post(
            "/api/v1/auth/register",
            None,
            &json!({"email": email, "password": password, "name": name}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Resp {
        self.post(
            "/api/v1/auth/login",
            None,
            &json!({"email": email, "password": password}),
        )
        .await
    }

    /// Registers `email` with [`PASSWORD`] and logs in; returns the bearer token.
    pub async fn register_and_login(&self, email: &str) -> String {
        let r = self.register(email, PASSWORD, "Test Buyer").await;
        let body = r.expect(201);
        assert!(
            body["user_id"].as_str().is_some_and(|s| !s.is_empty()),
            "register should answer a user_id: {}",
            r.text
        );
        self.login_token(email, PASSWORD).await
    }

    /// Logs in and returns the token.
    pub async fn login_token(&self, email: &str, password: &str) -> String {
        let r = self.login(email, password).await;
        r.expect(200);
        r.json["token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("login answered no token: {}", r.text))
            .to_string()
    }

    /// A fresh buyer's token.
    pub async fn buyer(&self) -> String {
        self.register_and_login(&unique_email("buyer")).await
    }

    /// `n` fresh buyers' tokens, registered at most `parallel` at a time.
    pub async fn buyers(&self, n: usize, parallel: usize) -> Vec<String> {
        use futures::StreamExt;
        futures::stream::iter(0..n)
            .map(|_| {
                let api = self.clone();
                async move { api.buyer().await }
            })
            .buffer_unordered(parallel)
            .collect()
            .await
    }

    /// The user id behind a token (`GET /api/v1/me`).
    pub async fn user_id_of(&self, token: &str) -> String {
        let r = self.get("/api/v1/me", Some(token)).await;
        r.expect(200)["user_id"]
            .as_str()
            .unwrap_or_else(|| panic!("me has no user_id: {}", r.text))
            .to_owned()
    }

    pub async fn admin_token(&self) -> String {
        let r = self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        r.expect(200);
        assert_eq!(
            r.json["role"], "admin",
            "the env-created admin should log in with role admin: {}",
            r.text
        );
        r.json["token"].as_str().expect("admin token").to_string()
    }

    // ---- sales --------------------------------------------------------------------------------

    /// Creates a sale from a full body; the answer is returned as is.
    pub async fn create_sale_with(&self, admin: &str, body: &Value) -> Resp {
        self.post("/api/v1/admin/sales", Some(admin), body).await
    }

    /// Creates a sale that is live now (started a minute ago, ends in an hour); returns its id.
    pub async fn create_sale(
        &self,
        admin: &str,
        total: u64,
        per_user_limit: u64,
        hold_seconds: u64,
    ) -> String {
        let r = self
            .create_sale_with(admin, &sale_body(total, per_user_limit, hold_seconds))
            .await;
        let body = r.expect(201);
        assert_eq!(body["total_stock"], total, "created sale: {}", r.text);
        body["sale_id"]
            .as_str()
            .unwrap_or_else(|| panic!("created sale has no sale_id: {}", r.text))
            .to_string()
    }

    pub async fn sale(&self, sale_id: &str) -> Value {
        let r = self.get(&format!("/api/v1/sales/{sale_id}"), None).await;
        r.expect(200).clone()
    }

    pub async fn metrics(&self, admin: &str, sale_id: &str) -> Value {
        let r = self
            .get(
                &format!("/api/v1/admin/sales/{sale_id}/metrics"),
                Some(admin),
            )
            .await;
        r.expect(200).clone()
    }

    pub async fn admin_action(&self, admin: &str, sale_id: &str, action: &str) -> Resp {
        self.post_empty(
            &format!("/api/v1/admin/sales/{sale_id}/{action}"),
            Some(admin),
        )
        .await
    }

    // ---- cart and orders ----------------------------------------------------------------------

    pub async fn reserve(&self, token: &str, sale_id: &str, quantity: i64) -> Resp {
        self.post(
            "/api/v1/cart/items",
            Some(token),
            &json!({"sale_id": sale_id, "quantity": quantity}),
        )
        .await
    }

    /// Reserves and asserts 201; returns the hold id.
    pub async fn hold(&self, token: &str, sale_id: &str, quantity: i64) -> String {
        let r = self.reserve(token, sale_id, quantity).await;
        r.expect(201);
        assert_eq!(r.json["quantity"], quantity, "hold: {}", r.text);
        assert_eq!(r.json["sale_id"], sale_id, "hold: {}", r.text);
        r.json["hold_id"].as_str().expect("hold_id").to_string()
    }

    pub async fn cart(&self, token: &str) -> Value {
        let r = self.get("/api/v1/cart", Some(token)).await;
        r.expect(200).clone()
    }

    /// Places an order for `hold_ids` paid with the sandbox `payment_token`.
    pub async fn order(
        &self,
        token: &str,
        hold_ids: &[&str],
        payment_token: &str,
        idempotency_key: Option<&str>,
    ) -> Resp {
        let mut rb = self
            .request(Method::POST, "/api/v1/orders", Some(token))
            .json(&order_body(hold_ids, payment_token));
        if let Some(k) = idempotency_key {
            rb = rb.header("Idempotency-Key", k);
        }
        self.send(rb).await
    }

    pub async fn orders(&self, token: &str) -> Vec<Value> {
        let r = self.get("/api/v1/orders", Some(token)).await;
        r.expect(200);
        r.json["orders"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /orders has no `orders` array: {}", r.text))
            .clone()
    }

    pub async fn post_webhook(&self, body: &str, signature: Option<&str>) -> Resp {
        let mut rb = self
            .request(Method::POST, "/api/v1/payments/webhook", None)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(s) = signature {
            rb = rb.header("Stampede-Signature", s);
        }
        self.send(rb).await
    }
}

pub fn sale_body(total: u64, per_user_limit: u64, hold_seconds: u64) -> Value {
    let now = unix_now();
    json!({
        "name": format!("Test sale {}", unique_suffix()),
        "description": "A sale made by the black-box tests",
        "original_price": "100.00",
        "sale_price": "20.00",
        "currency": "EUR",
        "total_stock": total,
        "starts_at": rfc3339(now - 60),
        "ends_at": rfc3339(now + 3600),
        "per_user_limit": per_user_limit,
        "queue_required": false,
        "hold_seconds": hold_seconds,
    })
}

pub fn order_body(hold_ids: &[&str], payment_token: &str) -> Value {
    json!({"hold_ids": hold_ids, "payment": {"method": "card", "token": payment_token}})
}

// ---------------------------------------------------------------------------------------------
// Assertions and small tools
// ---------------------------------------------------------------------------------------------

/// The stock invariant of the contract, on an admin metrics answer.
#[track_caller]
pub fn assert_invariant(m: &Value) {
    let n = |k: &str| {
        m[k].as_i64()
            .unwrap_or_else(|| panic!("metrics field `{k}` is not an integer: {m}"))
    };
    for k in ["available", "held", "sold"] {
        assert!(n(k) >= 0, "metrics `{k}` is negative: {m}");
    }
    assert_eq!(
        n("available") + n("held") + n("sold"),
        n("total_stock"),
        "available + held + sold must equal total_stock: {m}"
    );
    assert_eq!(
        m["invariant_ok"], true,
        "metrics report invariant_ok false: {m}"
    );
}

/// A money string as cents ("20.00" → 2000); panics if it is not a decimal string.
#[track_caller]
pub fn cents(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("money must be a decimal string, got {v}"));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    assert!(
        frac.len() <= 2 || frac[2..].chars().all(|c| c == '0'),
        "bad money {s:?}"
    );
    let mut frac: String = frac.chars().take(2).collect();
    while frac.len() < 2 {
        frac.push('0');
    }
    let i: i64 = int.parse().unwrap_or_else(|_| panic!("bad money {s:?}"));
    let f: i64 = frac.parse().unwrap_or_else(|_| panic!("bad money {s:?}"));
    i * 100 + if i < 0 { -f } else { f }
}

/// Polls `f` every `every` until it yields `Some`, or panics with `what` after `timeout`.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, every: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Unique within this test process and across processes.
pub fn unique_suffix() -> String {
    format!(
        "{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        unix_now_millis() % 1_000_000
    )
}

pub fn unique_email(prefix: &str) -> String {
    format!("{prefix}-{}@example.test", unique_suffix())
}

/// Wall-clock Unix time in milliseconds. The server runs on the real clock, so black-box
/// tests must use it too (to build `starts_at`, sign webhooks, compare `server_time`).
#[allow(clippy::disallowed_methods)]
pub fn unix_now_millis() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(d.as_millis()).expect("millis fit i64")
}

pub fn unix_now() -> i64 {
    unix_now_millis() / 1000
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Unix seconds as RFC 3339 UTC (`2026-01-02T03:04:05Z`).
pub fn rfc3339(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`) to Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        let ms: String = frac.chars().chain("000".chars()).take(3).collect();
        millis = ms.parse::<i64>().ok()?;
    }
    let offset_secs = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 => {
            let sign = match &tz[0..1] {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            sign * (tz[1..3].parse::<i64>().ok()? * 3600 + tz[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset_secs;
    Some(secs * 1000 + millis)
}

/// `Stampede-Signature` for `body`, signed now with `secret`.
pub fn sign_webhook(secret: &str, body: &[u8]) -> String {
    sign_webhook_at(secret, unix_now(), body)
}

/// `Stampede-Signature` for `body` as if signed at Unix second `t`.
pub fn sign_webhook_at(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A small deterministic-per-seed PRNG (xorshift64*), enough to jitter tests.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let seed = (unix_now_millis() as u64)
            ^ (u64::from(std::process::id()) << 32)
            ^ COUNTER
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Rng(seed | 1)
    }

    pub fn with_seed(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// Reads a server-sent-events stream until `pick` returns something, or panics after `within`.
pub async fn watch_until<T>(
    mut resp: reqwest::Response,
    within: Duration,
    mut pick: impl FnMut(&str, &Value) -> Option<T>,
) -> T {
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("the awaited event did not come in time")
            .expect("the stream broke")
            .expect("the stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim());
                }
            }
            let json: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            if let Some(found) = pick(event, &json) {
                return found;
            }
        }
    }
}

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        for secs in [0, 951_782_400, 1_700_000_000, 1_709_164_800, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs * 1000));
        }
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.5+01:00"),
            Some(1_700_000_000_500)
        );
    }

    #[test]
    fn money_strings_parse_to_cents() {
        assert_eq!(cents(&json!("20.00")), 2000);
        assert_eq!(cents(&json!("19.9")), 1990);
        assert_eq!(cents(&json!("40")), 4000);
    }
}
