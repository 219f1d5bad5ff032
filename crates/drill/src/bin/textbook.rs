//! The textbook design of this field, as the baseline of benchmark R4: an HTTP server whose
//! every reservation is one PostgreSQL transaction that decrements a row under its lock
//! (`UPDATE inventory SET quantity = quantity - 1 WHERE id = $1 AND quantity >= 1`) and inserts
//! the hold. Correct, and bounded by one row lock held across a commit per buyer: what
//! Stampede's gate and group commit are measured against.
//!
//! `textbook --postgres URL --listen 127.0.0.1:0 --stock N` prints `listening on http://…`;
//! `POST /reserve` answers 201 (a hold) or 409 (sold out); `GET /healthz` is bare HTTP;
//! `GET /stats` gives `{stock, holds, oversold}`.

use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// The same allocator as the server, so that a ratio measures the server's work, not malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
struct Args {
    /// PostgreSQL URL (a scratch schema through `options[search_path]=…` keeps it apart).
    #[arg(long)]
    postgres: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Units in the single inventory row.
    #[arg(long, default_value_t = 10_000_000)]
    stock: i64,
    /// Connections to PostgreSQL (one per concurrent client is the textbook setup).
    #[arg(long, default_value_t = 64)]
    pool: u32,
}

#[derive(Clone)]
struct Db {
    pool: PgPool,
    stock: i64,
}

async fn reserve(State(db): State<Db>) -> StatusCode {
    match try_reserve(&db.pool).await {
        Ok(true) => StatusCode::CREATED,
        Ok(false) => StatusCode::CONFLICT,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn try_reserve(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let taken =
        sqlx::query("UPDATE inventory SET quantity = quantity - 1 WHERE id = $1 AND quantity >= 1")
            .bind(1_i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if taken == 1 {
        sqlx::query("INSERT INTO holds (item_id, quantity, created_at) VALUES ($1, 1, now())")
            .bind(1_i64)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(taken == 1)
}

async fn stats(State(db): State<Db>) -> Result<Json<serde_json::Value>, StatusCode> {
    let holds: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM holds")
        .fetch_one(&db.pool)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(Json(serde_json::json!({
        "stock": db.stock,
        "holds": holds,
        "oversold": (holds - db.stock).max(0),
    })))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = PgPoolOptions::new()
        .max_connections(args.pool)
        .connect(&args.postgres)
        .await
        .context("connecting to PostgreSQL")?;
    for stmt in [
        "DROP TABLE IF EXISTS holds",
        "DROP TABLE IF EXISTS inventory",
        "CREATE TABLE inventory (id BIGINT PRIMARY KEY, quantity BIGINT NOT NULL)",
        "CREATE TABLE holds (id BIGSERIAL PRIMARY KEY, item_id BIGINT NOT NULL REFERENCES inventory (id), \
         quantity BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL)",
    ] {
        sqlx::query(stmt).execute(&pool).await.context("creating the schema")?;
    }
    sqlx::query("INSERT INTO inventory (id, quantity) VALUES (1, $1)")
        .bind(args.stock)
        .execute(&pool)
        .await?;
    let app = Router::new()
        .route("/reserve", post(reserve))
        .route("/healthz", get(|| async { "ok" }))
        .route("/stats", get(stats))
        .with_state(Db {
            pool,
            stock: args.stock,
        });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
