//! Wiring: adapters, the application, background jobs, the HTTP server, and an orderly
//! shutdown (stop taking connections, finish in-flight requests, flush the group commit).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::sync::{mpsc, watch};

use stampede_app::config::Argon2Cost;
use stampede_app::durable_room::DurableRoom;
use stampede_app::ports::{
    EventBus, Gate, OutboxEvent, OutboxSink, PortError, PortResult, SharedRateLimiter,
    ShopWebhooks, Store, WaitingRoom,
};
use stampede_app::{Adapters, App, AppConfig};
use stampede_bus_rabbitmq::{AmqpBus, AmqpConfig, EventHandler};
use stampede_core::{Clock, Timestamp};
use stampede_engine::{LocalBus, MemoryGate, MemoryRoom};
use stampede_gate_redis::{RedisGate, RedisGateConfig, RedisRoom};
use stampede_http::{AppParts, AppState, RateLimitConfig, RateLimits};
use stampede_payments::{SandboxGateway, SandboxTimings, SignedEvent};
use stampede_store_postgres::PgStore;
use stampede_store_sqlite::SqliteStore;
use stampede_webhooks::HttpShopWebhooks;

use crate::config::{LogFormat, Mode, ServeArgs};

/// The operating system's clock: the only place the real time is read.
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(ms)
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STAMPEDE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn open_store(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let store = stampede_store_sqlite::open(&data_dir.join("stampede.db"))
        .await
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    Ok(store)
}

/// Connects to the cluster's PostgreSQL (the judge).
async fn open_postgres(url: &str) -> anyhow::Result<PgStore> {
    stampede_store_postgres::connect(url)
        .await
        .context("connecting to PostgreSQL (--postgres)")
}

/// `stampede migrate`.
pub async fn migrate(data_dir: &Path, postgres: Option<&str>) -> anyhow::Result<()> {
    init_logs(LogFormat::Text);
    if let Some(url) = postgres {
        open_postgres(url)
            .await?
            .migrate()
            .await
            .context("migrating")?;
        tracing::info!("PostgreSQL migrations applied");
        return Ok(());
    }
    let store = open_store(data_dir).await?;
    store.migrate().await.context("migrating")?;
    tracing::info!(data_dir = %data_dir.display(), "migrations applied");
    Ok(())
}

/// The adapters of the chosen mode, and the cluster bus if there is one (it needs the app to
/// start consuming).
async fn adapters(
    args: &ServeArgs,
    data_dir: &Path,
) -> anyhow::Result<(
    Arc<dyn Store>,
    Arc<dyn Gate>,
    Arc<dyn WaitingRoom>,
    Option<Arc<dyn SharedRateLimiter>>,
    Arc<dyn EventBus>,
    Option<Arc<AmqpBus>>,
)> {
    match args.mode()? {
        Mode::Embedded => {
            let gate = Arc::new(MemoryGate::new());
            let store = open_store(data_dir).await?;
            // The room's lines live in memory; their joins and admissions are logged to the
            // store, so a restart gives everyone their place back.
            let room = Arc::new(
                MemoryRoom::with_gate(gate.clone()).with_signing_key(admission_key(data_dir)?),
            );
            Ok((
                Arc::new(store.clone()),
                gate,
                DurableRoom::start(room, Arc::new(store)),
                None,
                Arc::new(LocalBus::default()),
                None,
            ))
        }
        Mode::Cluster {
            postgres,
            redis,
            amqp,
            name,
        } => {
            let store = open_postgres(&postgres).await?;
            let redis_config = RedisGateConfig {
                url: redis,
                namespace: name.clone(),
                timeout: Duration::from_millis(args.redis_timeout_ms.unwrap_or(500)),
            };
            let gate = RedisGate::connect(redis_config.clone())
                .await
                .context("connecting to Redis (--redis)")?
                .with_buyer_quotas(buyer_quotas(args));
            let room = RedisRoom::connect(redis_config)
                .await
                .context("connecting to Redis (--redis)")?;
            let node_id = format!(
                "{}-{}",
                std::process::id(),
                hex::encode(rand::random::<[u8; 4]>())
            );
            let bus = AmqpBus::start(AmqpConfig {
                url: amqp,
                namespace: name.clone(),
                node_id: node_id.clone(),
            })
            .await;
            tracing::info!(cluster = %name, node = %node_id, "cluster mode: PostgreSQL judge, Redis gate, RabbitMQ bus");
            let limits = Arc::new(room.rate_limits()) as Arc<dyn SharedRateLimiter>;
            // Redis is the fast index of the room; PostgreSQL keeps its log, which a line Redis
            // lost is rebuilt from.
            let room = DurableRoom::start(Arc::new(room.durable()), Arc::new(store.clone()));
            Ok((
                Arc::new(store),
                Arc::new(gate),
                room,
                Some(limits),
                bus.clone() as Arc<dyn EventBus>,
                Some(bus),
            ))
        }
    }
}

/// The shared per-buyer and per-device quotas a cluster reserve is counted against inside the
/// gate's one script (the same quotas the node's own limiter uses; see `serve`).
fn buyer_quotas(args: &ServeArgs) -> stampede_gate_redis::BuyerQuotas {
    let burst_factor = RateLimitConfig::default().burst_factor.max(1);
    let user_rate = args.rate_limit_per_sec.unwrap_or(20).max(1);
    let device_rate = args.device_rate_limit_per_sec.unwrap_or(user_rate).max(1);
    stampede_gate_redis::BuyerQuotas {
        user: stampede_gate_redis::Quota {
            per_sec: user_rate,
            burst: user_rate.saturating_mul(burst_factor),
        },
        device: stampede_gate_redis::Quota {
            per_sec: device_rate,
            burst: device_rate.saturating_mul(burst_factor),
        },
    }
}

/// Hands the cluster's durable events to the app: any node (or worker) may apply any event.
struct AppliesEvents(Arc<App>);

#[async_trait::async_trait]
impl EventHandler for AppliesEvents {
    async fn handle(&self, event: OutboxEvent) -> PortResult<()> {
        self.0
            .apply_outbox_event(&event)
            .await
            .map_err(|e| PortError::unavailable_because("", e))
    }
}

/// The webhook secret: given, or generated once and kept in the data dir.
fn webhook_secret(args: &ServeArgs, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(s) = &args.webhook_secret {
        return Ok(s.clone());
    }
    let path = data_dir.join("webhook-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_owned());
        }
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    std::fs::write(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    Ok(secret)
}

/// The seed of the Ed25519 key admission tokens are signed with: generated once and kept in
/// the data dir (owner-only), so the published JWKS and tokens already handed out survive a
/// restart.
fn admission_key(data_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = data_dir.join("admission-key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut seed = [0u8; 32];
        if hex::decode_to_slice(text.trim(), &mut seed).is_ok() {
            return Ok(seed);
        }
        anyhow::bail!(
            "{} is not a 64-digit hex key: fix or remove it (a new key invalidates admissions \
             already handed out)",
            path.display()
        );
    }
    let seed: [u8; 32] = rand::random();
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, hex::encode(seed).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(seed)
}

/// `stampede serve` (with `http`) and `stampede worker` (background jobs only).
pub async fn serve(args: ServeArgs, http: bool) -> anyhow::Result<()> {
    init_logs(args.log_format.unwrap_or(LogFormat::Text));
    stampede_app::crash_points::arm_from_env();
    if !http && args.mode()? == Mode::Embedded {
        anyhow::bail!(
            "stampede worker runs the background jobs of a cluster: give --postgres, --redis \
             and --amqp (the embedded server runs its own jobs)"
        );
    }
    // Checked before anything connects: a half-configured shop webhook stops the start.
    let shop_webhook = args.shop_webhook()?;
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let data_dir = args.data_dir();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let cluster = args.mode()? != Mode::Embedded;
    let (store, gate, room, shared_limits, bus, amqp) = adapters(&args, &data_dir).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let shop_webhooks = match &shop_webhook {
        Some((url, secret)) => {
            let sender = HttpShopWebhooks::new(url, secret, clock.clone())
                .context("--shop-webhook-url / --shop-webhook-secret")?;
            let shown = url.split('?').next().unwrap_or_default();
            tracing::info!(url = %shown, "order events go to the shop's webhook");
            Some(Arc::new(sender) as Arc<dyn ShopWebhooks>)
        }
        None => None,
    };
    let secret = webhook_secret(&args, &data_dir)?;
    let (webhook_tx, webhook_rx) = mpsc::channel::<SignedEvent>(1024);
    let gateway = Arc::new(
        SandboxGateway::new(
            secret.clone(),
            clock.clone(),
            SandboxTimings {
                slow: Duration::from_millis(args.sandbox_slow_ms.unwrap_or(2000)),
                async_confirm: Duration::from_millis(args.sandbox_async_ms.unwrap_or(2000)),
            },
            webhook_tx,
        )
        // The sandbox's charges outlive the process, as a real provider's do: money a crash
        // left half-moved is finished against the same ledger after the restart.
        .with_journal(&data_dir.join("sandbox-ledger.jsonl"))
        .context("opening the sandbox gateway's ledger")?,
    );
    let defaults = AppConfig::default();
    let config = AppConfig {
        webhook_secret: secret,
        argon2: Argon2Cost {
            memory_kib: args.argon2_memory_kib.unwrap_or(defaults.argon2.memory_kib),
            iterations: args.argon2_iterations.unwrap_or(defaults.argon2.iterations),
            parallelism: defaults.argon2.parallelism,
        },
        sweep_interval_ms: args.sweep_interval_ms.unwrap_or(defaults.sweep_interval_ms),
        reconcile_interval_secs: args
            .reconcile_interval_secs
            .unwrap_or(defaults.reconcile_interval_secs),
        max_batch: args.max_batch.unwrap_or(defaults.max_batch),
        payment_reconcile_interval_ms: args
            .payment_reconcile_interval_ms
            .unwrap_or(defaults.payment_reconcile_interval_ms),
        idempotency_lease_ms: args
            .idempotency_lease_ms
            .unwrap_or(defaults.idempotency_lease_ms),
        payment_answer_timeout_secs: args
            .payment_answer_timeout_secs
            .unwrap_or(defaults.payment_answer_timeout_secs),
        hash_concurrency: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        session_key: args.session_key.clone(),
        revocation_refresh_ms: args
            .revocation_refresh_ms
            .unwrap_or(defaults.revocation_refresh_ms),
        read_cache_ms: args.read_cache_ms.unwrap_or(defaults.read_cache_ms),
        hold_warning_secs: args.hold_warning_secs.unwrap_or(defaults.hold_warning_secs),
        admission_tick_ms: args.admission_tick_ms.unwrap_or(defaults.admission_tick_ms),
        admission_ttl_secs: args
            .admission_ttl_secs
            .unwrap_or(defaults.admission_ttl_secs),
        hold_cap: stampede_core::judge::HoldCap {
            per_account: args
                .max_open_holds_per_account
                .unwrap_or(defaults.hold_cap.per_account),
            per_device: args
                .max_open_holds_per_device
                .unwrap_or(defaults.hold_cap.per_device),
        },
        waitlist_claim_secs: args
            .waitlist_claim_secs
            .unwrap_or(defaults.waitlist_claim_secs),
        sold_out_flag_ms: if cluster {
            args.sold_out_flag_ms.unwrap_or(1000)
        } else {
            0
        },
        ..defaults
    };
    let adapters = Adapters {
        // Every call to the judge is counted by operation, so /metrics (and the tests) can
        // hold the request path to the store reads it promises.
        store: Arc::new(stampede_app::counted::CountedStore::new(store)),
        gate,
        room,
        bus,
        gateway,
        clock: clock.clone(),
        outbox: amqp.clone().map(|b| b as Arc<dyn OutboxSink>),
        shop_webhooks,
    };
    let (app, writer) = App::start(adapters, config).await?;
    if let Some(bus) = &amqp {
        bus.consume_events(Arc::new(AppliesEvents(app.clone())));
    }

    if let (Some(email), Some(password)) = (&args.admin_email, &args.admin_password) {
        let admin = app.ensure_admin(email, password).await?;
        tracing::info!(email = %admin.email, "admin account ready");
    }
    if args.demo {
        crate::serve::seed_demo(&app).await?;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut jobs = app.spawn_background(stop_rx.clone());
    jobs.push(spawn_webhook_delivery(app.clone(), webhook_rx, stop_rx));

    if !http {
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "worker running")?;
            out.flush()?;
        }
        shutdown_signal().await;
        tracing::info!("worker stopping");
        let _ = stop_tx.send(true);
        for job in jobs {
            let _ = job.await;
        }
        drop(app);
        let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
        return Ok(());
    }

    let user_rate = args.rate_limit_per_sec.unwrap_or(20);
    let limits = RateLimits::new(RateLimitConfig {
        per_user_per_sec: user_rate,
        per_ip_per_sec: args
            .ip_rate_limit_per_sec
            .or(args.rate_limit_per_sec)
            .unwrap_or(2000),
        per_device_per_sec: args.device_rate_limit_per_sec.unwrap_or(user_rate),
        checkout_per_user_per_sec: args
            .checkout_rate_limit_per_sec
            .unwrap_or((user_rate / 10).max(1)),
        ..RateLimitConfig::default()
    });
    let limits = Arc::new(match shared_limits {
        Some(shared) => limits.with_shared(shared),
        None => limits,
    });
    let janitor = stampede_http::spawn_rate_limit_janitor(limits.clone(), Duration::from_secs(10));
    let (streams_stop_tx, streams_stop) = watch::channel(false);
    let state = AppState::new(AppParts {
        app: app.clone(),
        limits,
        prometheus: Some(prometheus),
        shutdown: streams_stop,
        reserve_stats: Arc::default(),
        request_deadline: args.request_deadline(),
        body_read_timeout: args.body_read_timeout(),
    });
    let router = stampede_http::router(state);
    let listener = tokio::net::TcpListener::bind(args.listen())
        .await
        .with_context(|| format!("binding {}", args.listen()))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %data_dir.display(), "stampede is serving");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    stampede_http::server::serve(listener, router, args.connection_limits(), async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: finishing in-flight requests, closing live streams");
        let _ = streams_stop_tx.send(true);
    })
    .await
    .context("serving")?;

    tracing::info!("shutting down: in-flight requests done, flushing the group commit");
    let _ = stop_tx.send(true);
    janitor.abort();
    for job in jobs {
        let _ = job.await;
    }
    // A retry after the restart then replays what its client was told.
    if !app.store_answers_in_flight(Duration::from_secs(10)).await {
        tracing::warn!("keyed checkout answers still unstored after 10 s; retries will resume");
    }
    drop(app);
    // The writer ends once the last handle to the app is gone and its queue is drained.
    if tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .is_err()
    {
        tracing::warn!("group commit writer did not finish within 10 s");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Delivers the sandbox gateway's webhooks to the webhook use case, as a real gateway would
/// by HTTP: verified, retried with backoff while the server answers with an error.
fn spawn_webhook_delivery(
    app: Arc<App>,
    mut rx: mpsc::Receiver<SignedEvent>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                e = rx.recv() => match e { Some(e) => e, None => break },
                _ = stop.changed() => break,
            };
            let mut delay = Duration::from_millis(100);
            for attempt in 1..=8 {
                match app
                    .payment_webhook(&event.body, Some(&event.signature))
                    .await
                {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(attempt, error = %e, "sandbox webhook delivery failed");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    })
}

/// `--demo`: one live sale and one that starts in a few minutes, unless already seeded.
pub async fn seed_demo(app: &Arc<App>) -> anyhow::Result<()> {
    use stampede_app::sales::SaleDraft;
    let existing = app.list_sales(None).await?;
    if existing.iter().any(|s| s.name.starts_with("Demo:")) {
        return Ok(());
    }
    let admin = app
        .ensure_admin(
            "demo-admin@stampede.local",
            &hex::encode(rand::random::<[u8; 16]>()),
        )
        .await?;
    let who = stampede_app::Principal {
        user_id: admin.id,
        role: stampede_app::ports::Role::Admin,
        expires_at: Timestamp(i64::MAX),
        session_id: String::new(),
    };
    let now = app.clock.now();
    for (name, desc, starts_in_secs, stock, price, was) in [
        (
            "Demo: Aurora running shoes",
            "Limited run, 80% off.",
            -60_i64,
            1000_i64,
            "24.00",
            "120.00",
        ),
        (
            "Demo: Nebula headphones",
            "Starts in five minutes.",
            300,
            500,
            "59.00",
            "199.00",
        ),
    ] {
        app.create_sale(
            &who,
            SaleDraft {
                name: name.into(),
                description: desc.into(),
                original_price: was.into(),
                sale_price: price.into(),
                discount_percent: None,
                currency: "EUR".into(),
                total_stock: stock,
                starts_at: Some(now.plus_secs(starts_in_secs)),
                ends_at: Some(now.plus_secs(24 * 3600)),
                per_user_limit: 2,
                queue_required: false,
                hold_seconds: Some(300),
                product_id: None,
                drop_id: None,
                category: None,
            },
        )
        .await?;
    }
    tracing::info!("demo catalogue seeded");
    Ok(())
}
