//! Stampede's cluster judge: the `Store` port over PostgreSQL, shared by every node.
//!
//! Same semantics as the SQLite judge (it is the reference): every stock move goes through
//! `StockLevels`' methods on a per-transaction cache of the `sales` row and the buyer's
//! `user_units` row, written in the same transaction as the hold or order rows that justify
//! it; the decisions are `stampede_core::judge`'s; CHECK constraints re-check the counters.
//!
//! What changes with several writers (one per node):
//! * every transaction that moves stock locks the `sales` rows it touches (`FOR NO KEY
//!   UPDATE`: exclusive among judges, yet foreign-key checks pass), several at once in sale
//!   id order, and reads `user_units` only under those locks; hold and order
//!   rows are locked before sale rows. One order everywhere, so nodes queue, never deadlock;
//! * `Holds::reserve` judges a whole batch in ONE transaction (group commit): each touched
//!   sale is locked and read once, each sale's counters written once;
//! * `synchronous_commit` is forced `on` for every connection: a committed hold is on disk;
//! * holds, orders and order items are hash-partitioned by user id (see the migration), so
//!   their keys are `(user_id, id)`; the unpartitioned `hold_ids` and `payments` tables give
//!   the global uniqueness and the by-id lookups that need no user;
//! * `Store::migrate` is safe to run from several nodes at once (advisory lock).
//!
//! Errors: a lost connection, a timeout, a server shutting down, a deadlock or serialization
//! failure is `PortError::Unavailable` (worth a retry); anything else `Internal`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use stampede_app::ports::{PortError, PortResult};
pub use stampede_store_sql::store::{Backend, SqlStore};

use stampede_store_sql::error::OrPort;

/// The schema, embedded in the binary so a node needs nothing beside it.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Connections per node: enough for the group-commit writer, the sweeper and HTTP reads
/// without crowding a shared server's `max_connections` when many nodes run.
const MAX_CONNECTIONS: u32 = 16;

/// How long a caller waits for a connection (or the first connect) before the store counts
/// as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a statement may run (including waiting for a sale lock behind other batches)
/// before it fails as `Unavailable`: generous, since queueing on a hot sale is normal.
const STATEMENT_TIMEOUT: &str = "30s";

/// A transaction left open this long by a stalled node is ended by the server, releasing its
/// locks for the other nodes.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "60s";

/// The system of record on a PostgreSQL server: the cluster deployment's judge, shared by
/// every node.
pub type PgStore = SqlStore<PgBackend>;

/// What the PostgreSQL store does its own way: one pool with durable, bounded sessions, and
/// its migrations (applied under an advisory lock).
#[derive(Debug, Clone)]
pub struct PgBackend {
    pool: PgPool,
}

/// Connects to the database at `url` (`postgres://user@host:port/db`, with any libpq-style
/// parameters such as `?options[search_path]=schema`). Does not migrate: call
/// `Store::migrate` before use. An unreachable server is `PortError::Unavailable`.
pub async fn connect(url: &str) -> Result<PgStore, PortError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| PortError::internal_because("bad PostgreSQL URL", e))?;
    connect_with(options).await
}

/// Connects with options built by the caller (e.g. tests choosing a scratch schema). Every
/// connection forces `synchronous_commit = on`, so an acknowledged write is durable whatever
/// the server's default, and bounds statements and idle transactions, so a stuck query or a
/// hung node cannot hold sale locks forever.
pub async fn connect_with(options: PgConnectOptions) -> Result<PgStore, PortError> {
    let options = options
        .options([
            ("synchronous_commit", "on"),
            ("statement_timeout", STATEMENT_TIMEOUT),
            (
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT,
            ),
        ])
        .application_name("stampede");
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .port()?;
    Ok(SqlStore::new(PgBackend { pool }))
}

#[async_trait]
impl Backend for PgBackend {
    type DB = Postgres;

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    async fn migrate(&self) -> PortResult<()> {
        // sqlx's migrator holds a PostgreSQL advisory lock (keyed on the database) while it
        // checks and applies migrations, so nodes starting together apply each one once.
        MIGRATOR.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => stampede_store_sql::error::port_error(e),
            other => PortError::internal(format!("migrate: {other}")),
        })
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
