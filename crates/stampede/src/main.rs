//! `stampede`: the flash-sale engine in one binary.

mod config;
mod serve;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use config::ServeArgs;

/// mimalloc rather than glibc's malloc: a request on the crowd's path makes a few dozen small
/// allocations (in hyper, axum and the handler), and glibc's spent a fifth of its instructions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stampede sells a small, fixed stock to a stampede of buyers: fast, fairly, and never more
/// than it has.
///
/// `stampede serve` runs the whole engine on this machine with nothing else installed (data
/// under ./stampede-data). Settings come from flags, then STAMPEDE_* environment variables,
/// then an optional TOML file (--config).
#[derive(Debug, Parser)]
#[command(name = "stampede", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. Embedded mode (the default): SQLite judge, in-process gate and bus,
    /// nothing else to install. Cluster mode (--postgres, --redis and --amqp): any number of
    /// nodes behind a load balancer share PostgreSQL (the judge), Redis (the gate) and
    /// RabbitMQ (the events).
    Serve(Box<ServeArgs>),
    /// Run only the background jobs of a cluster (sweeper, reconciler, outbox relay and event
    /// consumers), apart from the nodes that serve HTTP. Takes the same settings as serve;
    /// several workers may run at once (they lease their work, never step on each other).
    Worker(Box<ServeArgs>),
    /// Apply the store's schema migrations and exit.
    Migrate {
        /// Where the embedded store keeps its files.
        #[arg(long, env = "STAMPEDE_DATA_DIR", default_value = "stampede-data")]
        data_dir: PathBuf,
        /// Migrate this PostgreSQL database (cluster mode) instead.
        #[arg(long, env = "STAMPEDE_POSTGRES_URL", hide_env_values = true)]
        postgres: Option<String>,
    },
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Recompute a published draw (pre-queue shuffle or lottery) and check it: the seed must
    /// match the commitment published before the draw, and the winners must be what the
    /// seed and the entrants give. Reads the JSON of `GET /api/v1/sales/{id}/draws` (or one
    /// draw from it), e.g. `curl -s URL | stampede verify-draw -`. Exits 1 if any draw fails.
    VerifyDraw {
        /// A file with the published JSON, or `-` for standard input.
        input: PathBuf,
    },
    /// Rehearse a flash sale: virtual buyers under an open-model load against --target (or
    /// an embedded server started in a temporary data dir), then an audit of the invariants
    /// and a report (Markdown and SVG charts). Exits non-zero if the audit finds a violation.
    Drill(Box<stampede_drill::DrillArgs>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => {
            let doc = serde_json::to_string_pretty(&stampede_http::openapi())?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{doc}")?;
            Ok(())
        }
        Command::VerifyDraw { input } => verify_draw(&input),
        Command::Migrate { data_dir, postgres } => {
            runtime()?.block_on(serve::migrate(&data_dir, postgres.as_deref()))
        }
        Command::Serve(args) => {
            let args = args.merge_file()?;
            runtime()?.block_on(serve::serve(args, true))
        }
        Command::Worker(args) => {
            let args = args.merge_file()?;
            runtime()?.block_on(serve::serve(args, false))
        }
        Command::Drill(args) => {
            let exe = std::env::current_exe()?;
            let clock = std::sync::Arc::new(serve::SystemClock);
            let outcome = runtime()?.block_on(stampede_drill::run(*args, &exe, clock))?;
            if !outcome.audit.passed() {
                // The audit's verdict is the drill's exit status.
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// `stampede verify-draw`.
fn verify_draw(input: &std::path::Path) -> anyhow::Result<()> {
    use stampede_core::draw::DrawRecord;
    let text = if input.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(input)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", input.display()))?
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("the input is not JSON: {e}"))?;
    let items = match value.get("draws") {
        Some(list) => list.clone(),
        None => serde_json::Value::Array(vec![value]),
    };
    let records: Vec<DrawRecord> =
        serde_json::from_value(items).map_err(|e| anyhow::anyhow!("not a published draw: {e}"))?;
    if records.is_empty() {
        anyhow::bail!("no draws in the input (none has happened yet?)");
    }
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    for r in &records {
        match r.verify() {
            Ok(winners) => writeln!(
                out,
                "ok: {:?} draw of sale {}: seed matches its commitment {}; {} of {} entrants drawn, same as published",
                r.purpose,
                r.sale_id,
                r.seed_commitment,
                winners.len(),
                r.entrants.len()
            )?,
            Err(e) => {
                failed += 1;
                writeln!(out, "FAILED: {:?} draw of sale {}: {e}", r.purpose, r.sale_id)?;
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        anyhow::bail!("{failed} of {} draws do not check out", records.len());
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
