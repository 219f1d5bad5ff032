//! Stampede's embedded judge: the `Store` port over one SQLite file in WAL mode.
//!
//! Durability and concurrency:
//! * WAL, `synchronous = FULL`, foreign keys on, 5 s busy timeout: a write acknowledged by any
//!   method here has been fsynced and survives a crash.
//! * Two pools on the same file. Every write and every read-modify-write transaction runs on
//!   the **writer** pool, which has exactly one connection, so writers queue in the pool
//!   instead of fighting for SQLite's lock; transactions start with `BEGIN IMMEDIATE`. Pure
//!   reads run on the **reader** pool (WAL lets them run beside the writer), whose connections
//!   are `query_only`.
//! * `Holds::reserve` judges a whole batch in one transaction: one fsync for hundreds of
//!   buyers (group commit).
//!
//! Stock invariants (see `stampede_core`): every move of units goes through `StockLevels`'
//! methods on a per-transaction cache of the `sales` row and the buyer's `user_units` row, and
//! is written in the same transaction as the hold or order rows that justify it. The schema
//! re-checks `available + held + sold = total_stock` and non-negativity, so a bug aborts the
//! transaction instead of committing an oversell. `AdminReads::stock_audit` recomputes the counters
//! from the rows.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use stampede_app::ports::{PortError, PortResult};
pub use stampede_store_sql::store::{Backend, SqlStore};

use stampede_store_sql::error::OrPort;

/// Connections in the reader pool: enough for the HTTP reads beside the one writer on a small
/// machine.
const READERS: u32 = 4;

/// How long a caller waits for the writer before the store counts as unavailable. Generous:
/// the writer is a queue, and a batch behind a batch is normal under load.
const WRITER_ACQUIRE: Duration = Duration::from_secs(30);
const READER_ACQUIRE: Duration = Duration::from_secs(10);
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The system of record on one SQLite file: the single-node deployment's judge.
pub type SqliteStore = SqlStore<SqliteBackend>;

/// What the SQLite store does its own way: two pools on one file, and its migrations.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    /// Exactly one connection: all writes, in order.
    writer: SqlitePool,
    /// `query_only` connections for pure reads.
    reader: SqlitePool,
}

/// Prepared statements the writer keeps: the multi-row statements of group commits come in
/// many batch sizes for a dozen or so statements; the least used are dropped first, which
/// bounds the memory the compiled statements take.
const WRITER_STATEMENTS: usize = 512;

/// Opens (creating it and its directory if missing) the database at `path`. Does not
/// migrate: call `Store::migrate` before use.
pub async fn open(path: &Path) -> Result<SqliteStore, PortError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| PortError::unavailable(format!("creating {}: {e}", dir.display())))?;
    }
    let base = SqliteConnectOptions::new()
        .filename(path)
        .foreign_keys(true)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        // Statement journals (a multi-row statement's undo inside a transaction) in memory:
        // on disk they cost a write syscall per page a batch touches, and they never need to
        // survive a crash (the WAL does).
        .pragma("temp_store", "memory");
    // The writer connects first: it creates the file and switches it to WAL (a persistent
    // setting), so the readers open an existing WAL database.
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .acquire_timeout(WRITER_ACQUIRE)
        .connect_with(
            base.clone()
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // The batches rewrite the same hot pages (a sale's row, index roots) commit
                // after commit: a larger page cache keeps them, and a checkpoint every 16 MB of
                // WAL (not SQLite's 4 MB) copies each one back to the file less often.
                .pragma("cache_size", "-65536")
                .pragma("wal_autocheckpoint", "4096")
                // A batch's multi-row statements differ by their row count: with room for
                // every size, each is parsed once, not once per batch.
                .statement_cache_capacity(WRITER_STATEMENTS),
        )
        .await
        .port()?;
    let reader = SqlitePoolOptions::new()
        .max_connections(READERS)
        .acquire_timeout(READER_ACQUIRE)
        .connect_with(base.pragma("query_only", "ON"))
        .await
        .port()?;
    Ok(SqlStore::new(SqliteBackend { writer, reader }))
}

#[async_trait]
impl Backend for SqliteBackend {
    type DB = Sqlite;

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Also lets go of every unanswered idempotency claim: one process owns the file, so a
    /// claim left at start belongs to a process that died, and its key's retry should resume
    /// now rather than wait out the lease.
    async fn migrate(&self) -> PortResult<()> {
        sqlx::migrate!("./migrations")
            .run(&self.writer)
            .await
            .map_err(|e| PortError::internal_because("migrate", e))?;
        let release = "UPDATE idempotency SET started_at = 0 WHERE status IS NULL";
        let released = sqlx::query(release).execute(&self.writer).await;
        released.port().map(drop)
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}
