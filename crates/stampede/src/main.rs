//! `stampede`: the flash-sale engine in one binary.

mod config;
mod serve;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use config::ServeArgs;

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
    /// Run the server (embedded mode: SQLite judge + in-process gate).
    Serve(Box<ServeArgs>),
    /// Apply the store's schema migrations and exit.
    Migrate {
        /// Where the embedded store keeps its files.
        #[arg(long, env = "STAMPEDE_DATA_DIR", default_value = "stampede-data")]
        data_dir: PathBuf,
    },
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => {
            let doc = stampede_http::openapi().to_pretty_json()?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{doc}")?;
            Ok(())
        }
        Command::Migrate { data_dir } => runtime()?.block_on(serve::migrate(&data_dir)),
        Command::Serve(args) => {
            let args = args.merge_file()?;
            runtime()?.block_on(serve::serve(args))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
