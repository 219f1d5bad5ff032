//! The drill: a flash sale rehearsed end to end, then proven.
//!
//! `stampede drill` sets up a sale and a crowd of virtual buyers (each with an account), lets
//! them loose under an open-model load (arrivals on a schedule that does not wait for the
//! server), records what every buyer saw, then audits the invariants from the admin API and,
//! where it can read it, the store itself. Any violation makes the drill fail: a rehearsal
//! whose report says "held" has to be evidence, not a hope. The same driver measures the
//! project's own speed (see `bench/`), so its latencies count from the scheduled arrival.
//!
//! Layout: [`plan`] draws the crowd from a seed, [`driver`] runs it, [`stats`] records it,
//! [`audit`] judges the end state, [`store`] reads the judge directly, [`report`] writes it up,
//! [`server`] starts an embedded server when no target is given.

pub mod audit;
pub mod client;
pub mod driver;
pub mod plan;
pub mod report;
pub mod server;
pub mod stats;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stampede_core::Clock;

use crate::audit::Snapshot;
use crate::client::Api;
use crate::plan::{Arrival, Mix};
use crate::store::{SeededAccount, StoreUrl};

/// What can stop a drill before its audit (a failed audit is not an error: it is a verdict).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("setting up: {0}")]
    Setup(String),
    #[error("the embedded server: {0}")]
    Server(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("audit: {0}")]
    Audit(String),
    #[error("report: {0}")]
    Report(String),
}

/// How buyers get their accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Signup {
    /// Straight into the store for the drill's own embedded server, over HTTP otherwise.
    Auto,
    /// `POST /api/v1/auth/register` then `/login` for every buyer.
    Http,
    /// Written into the embedded server's fresh store before it starts (embedded only).
    Store,
}

/// `stampede drill`: rehearse a flash sale, prove it held.
#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {
    /// A running server to drill (e.g. http://127.0.0.1:8080). Default: start an embedded
    /// server in a temporary data dir and drill that.
    #[arg(long)]
    pub target: Option<String>,
    /// Virtual buyers (each with an account of their own).
    #[arg(long, default_value_t = 100_000)]
    pub buyers: usize,
    /// Units on sale.
    #[arg(long, default_value_t = 1_000)]
    pub stock: i64,
    /// Accounts the buyers share, round robin (default: one per buyer). Fewer accounts make
    /// benchmarks quick to set up; the per-user limit then applies to each shared account.
    #[arg(long)]
    pub accounts: Option<usize>,
    /// Most units one buyer may hold or own.
    #[arg(long, default_value_t = 1)]
    pub per_user_limit: i64,
    /// How arrivals spread: t0 (everyone at once), ramp (rate rising to the end of the
    /// duration) or steady (a constant rate over the duration).
    #[arg(long, value_enum, default_value_t = Arrival::T0)]
    pub arrival: Arrival,
    /// Behaviour mix, relative weights: refresh (only reads), queue (joins the waiting room,
    /// then buys), pay (reserves and pays), abandon (reserves, walks away), decline (card
    /// declined), reserve (reserves only), healthz (a bare health check: a baseline).
    #[arg(
        long,
        default_value = "refresh=20,queue=5,pay=55,abandon=10,decline=10"
    )]
    pub mix: Mix,
    /// Arrival window in seconds for ramp and steady (t0 ignores it).
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Seed of the crowd (arrivals, behaviours, accounts).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Most buyers in flight at once (open connections).
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    /// How long a hold lasts in the drill's sale (abandoned and declined holds lapse after it).
    #[arg(long, default_value_t = 15)]
    pub hold_seconds: i64,
    /// Whether the sale requires admission through the waiting room.
    #[arg(long)]
    pub queue_required: bool,
    /// How many times a refresher reads the sale page.
    #[arg(long, default_value_t = 3)]
    pub refreshes: u32,
    /// Longest wait for the last holds to end before the audit, in seconds (default: the
    /// hold time plus 10 s).
    #[arg(long)]
    pub settle_secs: Option<u64>,
    /// Skip the wait for holds to end (benchmarks): the audit then checks the sale as it is.
    #[arg(long)]
    pub no_settle: bool,
    /// The store of --target, read (read-only) by the audit: a PostgreSQL URL or a SQLite
    /// file. The embedded server's store is always read.
    #[arg(long)]
    pub store: Option<String>,
    /// Admin account on --target (the embedded server gets one of its own).
    #[arg(long, env = "STAMPEDE_ADMIN_EMAIL")]
    pub admin_email: Option<String>,
    /// That admin's password (prefer the environment variable over the flag).
    #[arg(long, env = "STAMPEDE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// How buyers get accounts.
    #[arg(long, value_enum, default_value_t = Signup::Auto)]
    pub signup: Signup,
    /// CPUs for the embedded server (`taskset -c` list, e.g. 0), to keep it off the load.
    #[arg(long)]
    pub server_cpus: Option<String>,
    /// Keep the embedded server's data dir afterwards.
    #[arg(long)]
    pub keep_data: bool,
    /// Where the report (report.md and its SVG charts) goes.
    #[arg(long, default_value = "drill-report")]
    pub report_dir: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The result of a drill.
#[derive(Debug)]
pub struct Outcome {
    pub audit: audit::Audit,
    pub report: PathBuf,
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Parses an RFC 3339 time into milliseconds since the epoch.
fn rfc3339_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// `n` buyers with session tokens signed by `key` (the key the drill seeds into the server's
/// store), valid for a week from `now_ms`.
fn accounts(n: usize, seed: u64, now_ms: i64, key: &[u8; 32]) -> Vec<SeededAccount> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_acc0_u64);
    let base = u64::try_from(now_ms).unwrap_or(0);
    let expires_at = stampede_core::Timestamp(now_ms + 7 * 24 * 3600 * 1000);
    (0..n)
        .map(|_| {
            let user_id = stampede_core::UserId::from_trusted(
                ulid::Ulid::from_parts(base, rng.gen()).to_string(),
            );
            let session_id = stampede_core::session::session_id(rng.gen());
            let token = stampede_core::session::sign(
                key,
                &stampede_core::session::SessionClaims {
                    user_id: user_id.clone(),
                    admin: false,
                    session_id: session_id.clone(),
                    expires_at,
                },
            );
            SeededAccount {
                user_id: user_id.to_string(),
                session_id,
                token,
            }
        })
        .collect()
}

/// Signs up and logs in `n` buyers over HTTP, `connections` at a time.
async fn http_accounts(
    api: &Api,
    n: usize,
    seed: u64,
    connections: usize,
    quiet: bool,
) -> Result<Vec<String>, DrillError> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(n as u64);
        bar.set_message("accounts");
        bar
    };
    let password = format!("drill-password-{seed}");
    let mut tokens = vec![String::new(); n];
    let slots = Arc::new(tokio::sync::Semaphore::new(connections.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| DrillError::Setup(e.to_string()))?;
        let api = api.clone();
        let password = password.clone();
        let bar = bar.clone();
        tasks.spawn(async move {
            let email = format!("drill-{seed}-{i}@example.com");
            api.register(&email, &password, "drill buyer").await?;
            let token = api.login(&email, &password).await?;
            bar.inc(1);
            drop(permit);
            Ok::<_, DrillError>((i, token))
        });
        while let Some(done) = tasks.try_join_next() {
            let (i, token) = done.map_err(|e| DrillError::Setup(e.to_string()))??;
            tokens[i] = token;
        }
    }
    while let Some(done) = tasks.join_next().await {
        let (i, token) = done.map_err(|e| DrillError::Setup(e.to_string()))??;
        tokens[i] = token;
    }
    bar.finish_and_clear();
    Ok(tokens)
}

/// Runs a drill. `exe` is the `stampede` binary (to start an embedded server); `clock` gives
/// the time accounts are created at.
pub async fn run(
    args: DrillArgs,
    exe: &Path,
    clock: Arc<dyn Clock>,
) -> Result<Outcome, DrillError> {
    let command = std::env::args()
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    let setup_started = Instant::now();
    let duration = Duration::from_secs_f64(args.duration_secs.max(0.0));
    let plan = plan::plan(args.buyers, args.arrival, duration, &args.mix, args.seed);
    let needs_accounts = plan.iter().any(|p| p.behaviour != plan::Behaviour::Healthz);
    let n_accounts = args
        .accounts
        .unwrap_or(args.buyers)
        .clamp(1, args.buyers.max(1));

    // The server: given, or our own.
    let admin_password_own = hex::encode(StdRng::seed_from_u64(args.seed).gen::<[u8; 12]>());
    let mut embedded = None;
    let mut seeded_tokens = None;
    let (base, admin_email, admin_password, store_url) = match &args.target {
        Some(t) => {
            if args.signup == Signup::Store {
                return Err(DrillError::Setup(
                    "--signup store needs the drill's own embedded server (no --target)".into(),
                ));
            }
            let email = args.admin_email.clone().ok_or_else(|| {
                DrillError::Setup("--target needs --admin-email (or STAMPEDE_ADMIN_EMAIL)".into())
            })?;
            let password = args.admin_password.clone().ok_or_else(|| {
                DrillError::Setup(
                    "--target needs --admin-password (or STAMPEDE_ADMIN_PASSWORD)".into(),
                )
            })?;
            (
                t.clone(),
                email,
                password,
                args.store.as_deref().map(StoreUrl::parse),
            )
        }
        None => {
            let email = "drill-admin@example.com".to_owned();
            let launch = server::Launch {
                exe,
                admin_email: &email,
                admin_password: &admin_password_own,
                cpus: args.server_cpus.as_deref(),
                keep_data: args.keep_data,
            };
            let (dir, data) = launch.prepare()?;
            if args.signup != Signup::Http && needs_accounts {
                let key: [u8; 32] = StdRng::seed_from_u64(args.seed ^ 0x5e55_10e5).gen();
                let accounts = accounts(n_accounts, args.seed, clock.now().0, &key);
                store::seed_accounts(&data.join("stampede.db"), &accounts, &key, clock.now().0)
                    .await?;
                seeded_tokens = Some(accounts.into_iter().map(|a| a.token).collect::<Vec<_>>());
            }
            let srv = launch.start(dir, &data)?;
            let out = (
                srv.base.clone(),
                email,
                admin_password_own.clone(),
                Some(StoreUrl::Sqlite(srv.db_path.clone())),
            );
            embedded = Some(srv);
            out
        }
    };
    let api = Api::new(&base, args.connections)?;
    let admin = api.login(&admin_email, &admin_password).await?;
    let sale = api
        .create_sale(
            &admin,
            &format!("drill seed {}", args.seed),
            args.stock,
            args.per_user_limit,
            args.hold_seconds,
            args.queue_required,
        )
        .await?;
    let tokens = match seeded_tokens {
        Some(t) => t,
        None if needs_accounts => {
            http_accounts(&api, n_accounts, args.seed, args.connections, args.quiet).await?
        }
        None => Vec::new(),
    };
    let setup = setup_started.elapsed();

    // The drill itself.
    let start = Instant::now() + Duration::from_millis(200);
    let stats = Arc::new(stats::Stats::new(start));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(driver::sample_stock(
        api.clone(),
        admin.clone(),
        sale.sale_id.clone(),
        stats.clone(),
        Duration::from_millis(250),
        stop_rx,
    ));
    let ctx = Arc::new(driver::Ctx {
        api: api.clone(),
        sale_id: sale.sale_id.clone(),
        tokens,
        stats: stats.clone(),
        refreshes: args.refreshes,
        queue_patience: Duration::from_secs(120),
    });
    let wall = driver::drive(ctx, &plan, args.connections, !args.quiet).await;

    // Let abandoned and declined holds lapse: the audit wants every hold ended.
    let settle_started = Instant::now();
    if !args.no_settle {
        let limit = Duration::from_secs(
            args.settle_secs
                .unwrap_or_else(|| u64::try_from(args.hold_seconds).unwrap_or(0) + 10),
        );
        while settle_started.elapsed() < limit {
            match api.metrics(&admin, &sale.sale_id).await {
                Ok(m) if m.held == 0 => break,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    let settle = settle_started.elapsed();
    let _ = stop_tx.send(true);
    let _ = sampler.await;

    // The audit.
    let metrics = api.metrics(&admin, &sale.sale_id).await.ok();
    let judge_now = api
        .sale(&sale.sale_id)
        .await
        .ok()
        .and_then(|s| s.server_time)
        .and_then(|t| rfc3339_ms(&t))
        .unwrap_or_else(|| clock.now().0);
    let store_facts = match &store_url {
        // A hold may outlive its expiry by a sweep interval or two; two seconds is generous.
        Some(url) => Some(store::facts(url, &sale.sale_id, judge_now, 2_000).await?),
        None => None,
    };
    let summary = stats.summary();
    let snapshot = Snapshot {
        api: metrics,
        store: store_facts,
        per_user_limit: args.per_user_limit,
        acked_holds: summary.acked_holds,
        acked_confirmed_orders: summary.acked_confirmed_orders,
        units_demanded: summary.units_demanded,
        admissions: summary.admissions.clone(),
        // The queue is polled every 250 ms; a poll's round trip on a loaded server adds more.
        admission_tolerance_ms: 500,
    };
    let audit = audit::audit(&snapshot);
    let run = report::Run {
        command,
        target: match &args.target {
            Some(t) => t.clone(),
            None => "embedded server started by the drill".into(),
        },
        buyers: args.buyers,
        stock: args.stock,
        per_user_limit: args.per_user_limit,
        arrival: args.arrival.to_string(),
        mix: args.mix.to_string(),
        duration,
        seed: args.seed,
        connections: args.connections,
        setup,
        wall,
        settle,
    };
    let report = report::write(&args.report_dir, &run, &summary, &audit)?;
    print_summary(&run, &summary, &audit, &report);
    drop(embedded);
    Ok(Outcome { audit, report })
}

/// A few lines on stdout, `key value` per line, for people and for bench scripts alike.
fn print_summary(run: &report::Run, s: &stats::Summary, audit: &audit::Audit, report: &Path) {
    let wall = run.wall.as_secs_f64().max(1e-9);
    println!("drill wall_secs {:.3}", run.wall.as_secs_f64());
    println!("drill setup_secs {:.3}", run.setup.as_secs_f64());
    println!("drill requests {}", s.requests());
    println!("drill requests_per_sec {:.0}", s.requests() as f64 / wall);
    for (name, h) in &s.endpoints {
        println!(
            "drill endpoint {name} count {} p50_ms {:.3} p99_ms {:.3} max_ms {:.3}",
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    }
    for (name, n) in &s.outcomes {
        println!("drill outcome {name} {n}");
    }
    println!(
        "drill units_sold {} stock {} demanded {}",
        audit.units_sold, run.stock, audit.units_demanded
    );
    for c in audit.violations() {
        println!("drill VIOLATION {}: {}", c.name, c.detail);
    }
    println!(
        "drill audit {}",
        if audit.passed() { "passed" } else { "FAILED" }
    );
    println!("drill report {}", report.display());
}
