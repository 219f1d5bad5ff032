//! The baseline of benchmarks R0, R1, R11 and R12: an axum server with one handler and no
//! middleware at all (no request id, tracing, metrics, rate limit or deadline), on the same
//! runtime Stampede uses. What answering HTTP costs on this machine, and nothing else: every
//! other figure is read as a fraction of it.
//!
//! `bare --listen 127.0.0.1:0` prints `listening on http://…` and answers every request,
//! whatever its method and path, `200 ok`.

use std::net::SocketAddr;

use axum::Router;
use clap::Parser;

/// The same allocator as the server, so that a ratio measures the server's work, not malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = Router::new().fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
