//! Configuration: flags, then environment variables, then an optional TOML file, then
//! defaults. `stampede serve --help` lists every setting with its variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Settings of `stampede serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the address in use is printed).
    #[arg(long, env = "STAMPEDE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where the embedded store keeps its files.
    #[arg(long, env = "STAMPEDE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Seed a demo catalogue: one live sale and one that starts in a few minutes.
    #[arg(long, env = "STAMPEDE_DEMO")]
    pub demo: bool,
    /// Optional TOML file with any of these settings (snake_case keys).
    #[arg(long, env = "STAMPEDE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, env = "STAMPEDE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Email of an admin to create (or reset) at start.
    #[arg(long, env = "STAMPEDE_ADMIN_EMAIL")]
    pub admin_email: Option<String>,
    /// Password of that admin (prefer the environment variable over the flag).
    #[arg(long, env = "STAMPEDE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Shared secret of payment webhooks; by default one is generated and kept in the data dir.
    #[arg(long, env = "STAMPEDE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Requests per second allowed per user (bursts of twice that). Also the per-IP rate unless
    /// that is set. Default 20.
    #[arg(long, env = "STAMPEDE_RATE_LIMIT_PER_SEC")]
    pub rate_limit_per_sec: Option<u32>,
    /// Requests per second allowed per client IP. Default 2000 (many buyers share an address).
    #[arg(long, env = "STAMPEDE_IP_RATE_LIMIT_PER_SEC")]
    pub ip_rate_limit_per_sec: Option<u32>,
    /// Requests per second allowed per device (`X-Device-Id`). Default: the per-user rate.
    #[arg(long, env = "STAMPEDE_DEVICE_RATE_LIMIT_PER_SEC")]
    pub device_rate_limit_per_sec: Option<u32>,
    /// Orders per second allowed per user (checkout moves money, so it is stricter).
    /// Default: a tenth of the per-user rate, at least 1.
    #[arg(long, env = "STAMPEDE_CHECKOUT_RATE_LIMIT_PER_SEC")]
    pub checkout_rate_limit_per_sec: Option<u32>,
    /// How often the waiting room admits the next buyers, in ms. Default 100.
    #[arg(long, env = "STAMPEDE_ADMISSION_TICK_MS")]
    pub admission_tick_ms: Option<u64>,
    /// How long an admission token lasts, in seconds. Default 120.
    #[arg(long, env = "STAMPEDE_ADMISSION_TTL_SECS")]
    pub admission_ttl_secs: Option<i64>,
    /// Unpaid holds one account may have open at once, across all sales (the
    /// denial-of-inventory guard; 0: no cap). Default 10.
    #[arg(long, env = "STAMPEDE_MAX_OPEN_HOLDS_PER_ACCOUNT")]
    pub max_open_holds_per_account: Option<u32>,
    /// Unpaid holds one device (`X-Device-Id`) may have open at once across its accounts and
    /// all sales (0: no cap). Default 20.
    #[arg(long, env = "STAMPEDE_MAX_OPEN_HOLDS_PER_DEVICE")]
    pub max_open_holds_per_device: Option<u32>,
    /// How long a waitlist offer lasts, in seconds: after a sale sold out, a unit that comes
    /// back goes to the next in line, who has this long to reserve it before it passes on.
    /// Default 300.
    #[arg(long, env = "STAMPEDE_WAITLIST_CLAIM_SECS")]
    pub waitlist_claim_secs: Option<i64>,
    /// argon2id memory cost in KiB (default 19456, OWASP). Lower only for tests.
    #[arg(long, env = "STAMPEDE_ARGON2_MEMORY_KIB")]
    pub argon2_memory_kib: Option<u32>,
    /// argon2id iterations (default 2, OWASP). Lower only for tests.
    #[arg(long, env = "STAMPEDE_ARGON2_ITERATIONS")]
    pub argon2_iterations: Option<u32>,
    /// How often lapsed holds are swept, in milliseconds. Default 250.
    #[arg(long, env = "STAMPEDE_SWEEP_INTERVAL_MS")]
    pub sweep_interval_ms: Option<u64>,
    /// How often the gate is reconciled with the store, in seconds. Default 30.
    #[arg(long, env = "STAMPEDE_RECONCILE_INTERVAL_SECS")]
    pub reconcile_interval_secs: Option<u64>,
    /// Most reservations committed in one store transaction. Default 512.
    #[arg(long, env = "STAMPEDE_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Delay of the sandbox token `tok_slow`, in milliseconds. Default 2000.
    #[arg(long, env = "STAMPEDE_SANDBOX_SLOW_MS")]
    pub sandbox_slow_ms: Option<u64>,
    /// Delay before the sandbox confirms a `tok_async` payment by webhook, in ms. Default 2000.
    #[arg(long, env = "STAMPEDE_SANDBOX_ASYNC_MS")]
    pub sandbox_async_ms: Option<u64>,
    /// How often captures, voids and refunds a crash left unfinished are finished at the
    /// gateway (and stuck pending orders resolved), in ms. Also done at start. Default 5000.
    #[arg(long, env = "STAMPEDE_PAYMENT_RECONCILE_INTERVAL_MS")]
    pub payment_reconcile_interval_ms: Option<u64>,
    /// How long an unanswered `Idempotency-Key` claim holds off retries (409
    /// `idempotency_in_progress`) before a retry takes it over and resumes the checkout, in ms.
    /// Embedded mode lets go of every claim at start anyway (one process owns the data).
    /// Default 60000.
    #[arg(long, env = "STAMPEDE_IDEMPOTENCY_LEASE_MS")]
    pub idempotency_lease_ms: Option<i64>,
    /// A pending order whose authorization's answer was never recorded (its checkout died
    /// with its process) is failed and any authorization voided after this many seconds.
    /// Default 120.
    #[arg(long, env = "STAMPEDE_PAYMENT_ANSWER_TIMEOUT_SECS")]
    pub payment_answer_timeout_secs: Option<i64>,
    /// Cluster mode: PostgreSQL judges and keeps everything (e.g.
    /// postgres://user:pass@db:5432/stampede). Needs --redis and --amqp too.
    #[arg(long, env = "STAMPEDE_POSTGRES_URL", hide_env_values = true)]
    pub postgres: Option<String>,
    /// Cluster mode: Redis holds the shared gate (e.g. redis://cache:6379/0).
    #[arg(long, env = "STAMPEDE_REDIS_URL", hide_env_values = true)]
    pub redis: Option<String>,
    /// Cluster mode: RabbitMQ carries events between nodes (e.g.
    /// amqp://user:pass@mq:5672/%2f).
    #[arg(long, env = "STAMPEDE_AMQP_URL", hide_env_values = true)]
    pub amqp: Option<String>,
    /// Cluster mode: a name shared by every node of one deployment; prefixes its Redis keys and
    /// RabbitMQ queues, so several deployments can share the services. Default "stampede".
    #[arg(long, env = "STAMPEDE_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Cluster mode: how long a node answers "sold out" from memory before asking Redis again
    /// (a stock-returned event clears it sooner), in ms. Default 1000.
    #[arg(long, env = "STAMPEDE_SOLD_OUT_FLAG_MS")]
    pub sold_out_flag_ms: Option<u64>,
    /// Cluster mode: deadline of one call to Redis, in ms; past it the buyer gets a fast 503.
    /// Default 500.
    #[arg(long, env = "STAMPEDE_REDIS_TIMEOUT_MS")]
    pub redis_timeout_ms: Option<u64>,
    /// Longest a request may take, in ms: past it the buyer gets a fast 503 `unavailable`
    /// with `Retry-After` (the work itself finishes in the background), so a hung PostgreSQL
    /// or RabbitMQ never hangs buyers. 0 turns it off. Default 10000.
    #[arg(long, env = "STAMPEDE_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// A request's head (request line and headers) must arrive whole within this many ms of
    /// its first byte, or the connection is cut: a client trickling headers (slowloris) holds
    /// nothing for long. Default 10000.
    #[arg(long, env = "STAMPEDE_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// A keep-alive connection with no request in flight and no byte moving for this many ms
    /// is closed. Default 60000.
    #[arg(long, env = "STAMPEDE_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// A request body that stops arriving for this many ms is answered 408
    /// `request_timeout`. 0 turns it off. Default 10000.
    #[arg(long, env = "STAMPEDE_BODY_READ_TIMEOUT_MS")]
    pub body_read_timeout_ms: Option<u64>,
    /// Connections served at once; past it a new connection is answered 503 and closed while
    /// the open ones are served. Keep it under the process's file limit. Default 10000.
    #[arg(long, env = "STAMPEDE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How stale the sale list and detail shown to viewers may be, in ms: they are served from
    /// a per-node cache refreshed by one read at a time, and sent with
    /// `Cache-Control: max-age` so a CDN can take most of them. 0 turns it off. Default 1000.
    #[arg(long, env = "STAMPEDE_READ_CACHE_MS")]
    pub read_cache_ms: Option<u64>,
    /// Warn buyers (in-app notification, shop webhook) when a hold has this many seconds
    /// left; 0 turns it off. Default 60.
    #[arg(long, env = "STAMPEDE_HOLD_WARNING_SECS")]
    pub hold_warning_secs: Option<u64>,
    /// The shop's own endpoint for order events (e.g. https://shop.example/hooks/stampede):
    /// every buyer event (`order_confirmed`, `payment_failed`, `hold_expiring`) is POSTed there
    /// at least once, signed, retried with backoff. Needs --shop-webhook-secret. In a cluster, give it to every node
    /// and worker.
    #[arg(long, env = "STAMPEDE_SHOP_WEBHOOK_URL")]
    pub shop_webhook_url: Option<String>,
    /// The secret the shop verifies `Stampede-Signature` with (prefer the environment
    /// variable over the flag).
    #[arg(long, env = "STAMPEDE_SHOP_WEBHOOK_SECRET", hide_env_values = true)]
    pub shop_webhook_secret: Option<String>,
    /// The key session tokens are signed with, 64 hex digits, the same on every node. By
    /// default the first node to start makes one and keeps it in the store (embedded: the
    /// data dir's database), where every other node finds it.
    #[arg(long, env = "STAMPEDE_SESSION_KEY", hide_env_values = true)]
    pub session_key: Option<String>,
    /// How often a node reloads revoked sessions from the store, in ms (a revocation also
    /// reaches every node at once as an event; this bounds a lost event). Default 1000.
    #[arg(long, env = "STAMPEDE_REVOCATION_REFRESH_MS")]
    pub revocation_refresh_ms: Option<u64>,
}

/// The same settings as read from a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub demo: Option<bool>,
    pub log_format: Option<LogFormat>,
    pub admin_email: Option<String>,
    pub admin_password: Option<String>,
    pub webhook_secret: Option<String>,
    pub rate_limit_per_sec: Option<u32>,
    pub ip_rate_limit_per_sec: Option<u32>,
    pub device_rate_limit_per_sec: Option<u32>,
    pub checkout_rate_limit_per_sec: Option<u32>,
    pub admission_tick_ms: Option<u64>,
    pub admission_ttl_secs: Option<i64>,
    pub max_open_holds_per_account: Option<u32>,
    pub max_open_holds_per_device: Option<u32>,
    pub waitlist_claim_secs: Option<i64>,
    pub argon2_memory_kib: Option<u32>,
    pub argon2_iterations: Option<u32>,
    pub sweep_interval_ms: Option<u64>,
    pub reconcile_interval_secs: Option<u64>,
    pub max_batch: Option<usize>,
    pub sandbox_slow_ms: Option<u64>,
    pub sandbox_async_ms: Option<u64>,
    pub payment_reconcile_interval_ms: Option<u64>,
    pub payment_answer_timeout_secs: Option<i64>,
    pub postgres: Option<String>,
    pub redis: Option<String>,
    pub amqp: Option<String>,
    pub cluster_name: Option<String>,
    pub sold_out_flag_ms: Option<u64>,
    pub redis_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub body_read_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub read_cache_ms: Option<u64>,
    pub hold_warning_secs: Option<u64>,
    pub shop_webhook_url: Option<String>,
    pub shop_webhook_secret: Option<String>,
    pub session_key: Option<String>,
    pub revocation_refresh_ms: Option<u64>,
}

impl ServeArgs {
    /// Fills every setting not given by flag or environment from the file.
    pub fn merge_file(mut self) -> anyhow::Result<Self> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading config file {}: {e}", path.display()))?;
        let f: FileConfig = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        macro_rules! fill {
            ($($field:ident),*) => { $( if self.$field.is_none() { self.$field = f.$field; } )* };
        }
        fill!(
            listen,
            data_dir,
            log_format,
            admin_email,
            admin_password,
            webhook_secret,
            rate_limit_per_sec,
            ip_rate_limit_per_sec,
            device_rate_limit_per_sec,
            checkout_rate_limit_per_sec,
            admission_tick_ms,
            admission_ttl_secs,
            max_open_holds_per_account,
            max_open_holds_per_device,
            waitlist_claim_secs,
            argon2_memory_kib,
            argon2_iterations,
            sweep_interval_ms,
            reconcile_interval_secs,
            max_batch,
            sandbox_slow_ms,
            sandbox_async_ms,
            payment_reconcile_interval_ms,
            payment_answer_timeout_secs,
            postgres,
            redis,
            amqp,
            cluster_name,
            sold_out_flag_ms,
            redis_timeout_ms,
            request_timeout_ms,
            header_read_timeout_ms,
            idle_timeout_ms,
            body_read_timeout_ms,
            max_connections,
            read_cache_ms,
            hold_warning_secs,
            shop_webhook_url,
            shop_webhook_secret,
            session_key,
            revocation_refresh_ms
        );
        self.demo = self.demo || f.demo.unwrap_or(false);
        Ok(self)
    }

    /// The listen address (default 127.0.0.1:8080).
    pub fn listen(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    /// Which deployment the settings ask for: embedded, or cluster with all three services.
    pub fn mode(&self) -> anyhow::Result<Mode> {
        match (&self.postgres, &self.redis, &self.amqp) {
            (None, None, None) => Ok(Mode::Embedded),
            (Some(postgres), Some(redis), Some(amqp)) => Ok(Mode::Cluster {
                postgres: postgres.clone(),
                redis: redis.clone(),
                amqp: amqp.clone(),
                name: self
                    .cluster_name
                    .clone()
                    .unwrap_or_else(|| "stampede".to_owned()),
            }),
            _ => anyhow::bail!(
                "cluster mode needs all of --postgres, --redis and --amqp \
                 (STAMPEDE_POSTGRES_URL, STAMPEDE_REDIS_URL, STAMPEDE_AMQP_URL); \
                 give none of them for the embedded mode"
            ),
        }
    }

    /// The shop's webhook URL and secret, if a URL is set. A URL without a secret is refused
    /// (unsigned events would let anyone forge them to the shop); a secret alone is ignored.
    pub fn shop_webhook(&self) -> anyhow::Result<Option<(String, String)>> {
        let url = match self.shop_webhook_url.as_deref().map(str::trim) {
            None | Some("") => return Ok(None),
            Some(url) => url.to_owned(),
        };
        match self.shop_webhook_secret.as_deref() {
            Some(secret) if !secret.is_empty() => Ok(Some((url, secret.to_owned()))),
            _ => anyhow::bail!(
                "--shop-webhook-url (STAMPEDE_SHOP_WEBHOOK_URL) is set but \
                 --shop-webhook-secret (STAMPEDE_SHOP_WEBHOOK_SECRET) is not: the shop's \
                 webhooks are always signed; give the secret the shop verifies them with"
            ),
        }
    }

    /// The request deadline (default 10 s); `None` when set to 0.
    pub fn request_deadline(&self) -> Option<std::time::Duration> {
        match self.request_timeout_ms.unwrap_or(10_000) {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        }
    }

    /// The listener's limits on slow and idle clients (defaults in
    /// [`stampede_http::server::ConnectionLimits`]; a 0 timeout is taken as 1 ms, not "off").
    pub fn connection_limits(&self) -> stampede_http::server::ConnectionLimits {
        let defaults = stampede_http::server::ConnectionLimits::default();
        let ms = |v: Option<u64>, d: std::time::Duration| {
            v.map_or(d, |ms| std::time::Duration::from_millis(ms.max(1)))
        };
        stampede_http::server::ConnectionLimits {
            header_read_timeout: ms(self.header_read_timeout_ms, defaults.header_read_timeout),
            idle_timeout: ms(self.idle_timeout_ms, defaults.idle_timeout),
            max_connections: self
                .max_connections
                .unwrap_or(defaults.max_connections)
                .max(1),
        }
    }

    /// How long a request body may stall (default 10 s); `None` when set to 0.
    pub fn body_read_timeout(&self) -> Option<std::time::Duration> {
        match self.body_read_timeout_ms.unwrap_or(10_000) {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        }
    }

    /// The data directory (default ./stampede-data).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("stampede-data"))
    }
}

/// Where the state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// One node: SQLite under the data directory, gate and bus in process.
    Embedded,
    /// Many nodes: PostgreSQL judges, Redis gates, RabbitMQ carries events.
    Cluster {
        postgres: String,
        redis: String,
        amqp: String,
        /// Prefix of the deployment's Redis keys and RabbitMQ names.
        name: String,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn args(flags: &[&str]) -> ServeArgs {
        let mut argv = vec!["stampede"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn the_request_deadline_defaults_to_ten_seconds_and_zero_turns_it_off() {
        use std::time::Duration;
        assert_eq!(args(&[]).request_deadline(), Some(Duration::from_secs(10)));
        assert_eq!(
            args(&["--request-timeout-ms", "2000"]).request_deadline(),
            Some(Duration::from_millis(2000))
        );
        assert_eq!(
            args(&["--request-timeout-ms", "0"]).request_deadline(),
            None
        );
    }

    #[test]
    fn a_shop_webhook_url_needs_its_secret() {
        assert_eq!(args(&[]).shop_webhook().unwrap(), None);
        // A secret alone turns nothing on.
        assert_eq!(
            args(&["--shop-webhook-secret", "s"])
                .shop_webhook()
                .unwrap(),
            None
        );
        let missing = args(&["--shop-webhook-url", "https://shop.example/h"])
            .shop_webhook()
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("STAMPEDE_SHOP_WEBHOOK_SECRET"),
            "{missing}"
        );
        let empty = args(&[
            "--shop-webhook-url",
            "https://shop.example/h",
            "--shop-webhook-secret",
            "",
        ]);
        assert!(empty.shop_webhook().is_err());
        let both = args(&[
            "--shop-webhook-url",
            "https://shop.example/h",
            "--shop-webhook-secret",
            "s",
        ]);
        assert_eq!(
            both.shop_webhook().unwrap(),
            Some(("https://shop.example/h".to_owned(), "s".to_owned()))
        );
    }

    #[test]
    fn the_config_file_sets_the_shop_webhook_unless_a_flag_did() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stampede.toml");
        std::fs::write(
            &path,
            "shop_webhook_url = \"https://file.example/h\"\nshop_webhook_secret = \"from-file\"\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let from_file = args(&["--config", path]).merge_file().unwrap();
        assert_eq!(
            from_file.shop_webhook().unwrap(),
            Some(("https://file.example/h".to_owned(), "from-file".to_owned()))
        );
        let flag_wins = args(&[
            "--config",
            path,
            "--shop-webhook-url",
            "https://flag.example/h",
        ])
        .merge_file()
        .unwrap();
        assert_eq!(
            flag_wins.shop_webhook().unwrap(),
            Some(("https://flag.example/h".to_owned(), "from-file".to_owned()))
        );
    }
}
