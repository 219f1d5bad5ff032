//! Stampede's embedded judge: the [`Store`] port over one SQLite file in WAL mode.
//!
//! Durability and concurrency:
//! * WAL, `synchronous = FULL`, foreign keys on, 5 s busy timeout: a write acknowledged by any
//!   method here has been fsynced and survives a crash.
//! * Two pools on the same file. Every write and every read-modify-write transaction runs on
//!   the **writer** pool, which has exactly one connection, so writers queue in the pool
//!   instead of fighting for SQLite's lock; transactions start with `BEGIN IMMEDIATE`. Pure
//!   reads run on the **reader** pool (WAL lets them run beside the writer), whose connections
//!   are `query_only`.
//! * [`Holds::reserve`] judges a whole batch in one transaction: one fsync for hundreds of
//!   buyers (group commit).
//!
//! Stock invariants (see `stampede_core`): every move of units goes through `StockLevels`'
//! methods on a per-transaction cache of the `sales` row and the buyer's `user_units` row, and
//! is written in the same transaction as the hold or order rows that justify it. The schema
//! re-checks `available + held + sold = total_stock` and non-negativity, so a bug aborts the
//! transaction instead of committing an oversell. [`AdminReads::stock_audit`] recomputes the counters
//! from the rows.

mod error;
mod hold_cap;
mod holds;
mod room_log;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use stampede_app::ports::{
    Accounts, AdminReads, Audit, AuditEntry, AuditFilter, Browse, Cancelled, Catalog,
    CheckoutError, Credentials, GateSeed, GatewayOwed, HoldError, Holds, IdempotencyStart,
    LapsedHolder, NewOrder, Notification, Orders, Outbox, OutboxEvent, OwedPayment, PaymentApplied,
    PaymentResult, PortError, PortResult, ReserveRequest, Session, StockAudit, Store, User,
    UserAccount, UserStatus, WebhookDelivery,
};
use stampede_core::judge::Refusal;
use stampede_core::{
    DropEvent, DropId, Hold, HoldId, Order, OrderId, OrderStatus, PaymentId, Product, ProductId,
    Sale, SaleId, Timestamp, UserId,
};

use crate::error::OrPort;
use stampede_store_sql::misc;
use stampede_store_sql::outbox;
use stampede_store_sql::report;
use stampede_store_sql::users;
use stampede_store_sql::webhooks;
use stampede_store_sql::{catalog, orders, sales};

/// How every write transaction starts: take the write lock up front, so a transaction that
/// reads before it writes can never fail to upgrade its lock half-way.
pub(crate) const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// Connections in the reader pool: enough for the HTTP reads beside the one writer on a small
/// machine.
const READERS: u32 = 4;

/// How long a caller waits for the writer before the store counts as unavailable. Generous:
/// the writer is a queue, and a batch behind a batch is normal under load.
const WRITER_ACQUIRE: Duration = Duration::from_secs(30);
const READER_ACQUIRE: Duration = Duration::from_secs(10);
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The system of record on one SQLite file: the single-node deployment's judge.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: all writes, in order.
    writer: SqlitePool,
    /// `query_only` connections for pure reads.
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) the database at `path`. Does not
    /// migrate: call [`Store::migrate`] before use.
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
            .busy_timeout(BUSY_TIMEOUT);
        // The writer connects first: it creates the file and switches it to WAL (a persistent
        // setting), so the readers open an existing WAL database.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(WRITER_ACQUIRE)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .port()?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(READER_ACQUIRE)
            .connect_with(base.pragma("query_only", "ON"))
            .await
            .port()?;
        Ok(SqliteStore { writer, reader })
    }

    /// Closes both pools, waiting for connections in use to come back: call on shutdown so
    /// the WAL is checkpointed and the file left tidy (not needed for durability).
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

#[async_trait]
impl Accounts for SqliteStore {
    async fn insert_user(&self, user: &User, password_hash: &str) -> PortResult<bool> {
        users::insert(&self.writer, user, password_hash).await
    }

    async fn upsert_admin(&self, user: &User, password_hash: &str) -> PortResult<User> {
        users::upsert_admin(&self.writer, user, password_hash).await
    }

    async fn credentials_by_email(&self, email: &str) -> PortResult<Option<Credentials>> {
        users::credentials(&self.reader, email).await
    }

    async fn user(&self, id: &UserId) -> PortResult<Option<User>> {
        users::by_id(&self.reader, id).await
    }

    async fn insert_session(&self, session: &Session, created_at: Timestamp) -> PortResult<bool> {
        users::insert_session(&self.writer, session, created_at).await
    }

    async fn session(&self, session_id: &str) -> PortResult<Option<Session>> {
        users::session(&self.reader, session_id).await
    }

    async fn delete_session(&self, session_id: &str) -> PortResult<bool> {
        users::delete_session(&self.writer, session_id).await
    }

    async fn revoked_sessions(&self, now: Timestamp) -> PortResult<Vec<(String, Timestamp)>> {
        users::revoked_sessions(&self.reader, now).await
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> PortResult<String> {
        users::shared_secret(&self.writer, name, candidate).await
    }

    async fn set_user_status(
        &self,
        user: &UserId,
        status: UserStatus,
        reason: &str,
    ) -> PortResult<Option<Vec<(String, Timestamp)>>> {
        users::set_status(&self.writer, user, status, reason).await
    }

    async fn account(&self, user: &UserId) -> PortResult<Option<UserAccount>> {
        users::account_by_id(&self.reader, user).await
    }

    async fn accounts(
        &self,
        query: &str,
        after: Option<&UserId>,
        limit: u32,
    ) -> PortResult<Vec<UserAccount>> {
        users::accounts(&self.reader, query, after, limit).await
    }
}

#[async_trait]
impl Catalog for SqliteStore {
    async fn insert_sale(&self, sale: &Sale) -> PortResult<()> {
        sales::insert(&self.writer, sale).await
    }

    async fn update_sale(&self, sale: &Sale) -> PortResult<bool> {
        sales::update(&self.writer, sale).await
    }

    async fn sale(&self, id: &SaleId) -> PortResult<Option<Sale>> {
        sales::by_id(&self.reader, id).await
    }

    async fn sales(&self) -> PortResult<Vec<Sale>> {
        sales::all(&self.reader).await
    }

    async fn browse_sales(&self, browse: &Browse) -> PortResult<Vec<Sale>> {
        catalog::browse_sales(&self.reader, browse).await
    }

    async fn insert_product(&self, product: &Product) -> PortResult<()> {
        catalog::insert_product(&self.writer, product).await
    }

    async fn update_product(&self, product: &Product) -> PortResult<bool> {
        catalog::update_product(&self.writer, product).await
    }

    async fn product(&self, id: &ProductId) -> PortResult<Option<Product>> {
        catalog::product_by_id(&self.reader, id).await
    }

    async fn products(&self, browse: &Browse) -> PortResult<Vec<Product>> {
        catalog::browse_products(&self.reader, browse).await
    }

    async fn insert_drop(&self, drop: &DropEvent) -> PortResult<()> {
        catalog::insert_drop(&self.writer, drop).await
    }

    async fn update_drop(&self, drop: &DropEvent) -> PortResult<bool> {
        catalog::update_drop(&self.writer, drop).await
    }

    async fn drop_event(&self, id: &DropId) -> PortResult<Option<DropEvent>> {
        catalog::drop_by_id(&self.reader, id).await
    }

    async fn drops(&self, browse: &Browse) -> PortResult<Vec<DropEvent>> {
        catalog::browse_drops(&self.reader, browse).await
    }
}

#[async_trait]
impl Holds for SqliteStore {
    async fn reserve(&self, batch: &[ReserveRequest]) -> PortResult<Vec<Result<Hold, Refusal>>> {
        holds::reserve(&self.writer, batch).await
    }

    async fn live_holds(&self, user: &UserId, now: Timestamp) -> PortResult<Vec<Hold>> {
        holds::live(&self.reader, user, now).await
    }

    async fn release_hold(
        &self,
        user: &UserId,
        hold: &HoldId,
        now: Timestamp,
    ) -> PortResult<Result<Hold, HoldError>> {
        holds::release(&self.writer, user, hold, now).await
    }

    async fn resize_hold(
        &self,
        user: &UserId,
        hold: &HoldId,
        quantity: u32,
        now: Timestamp,
    ) -> PortResult<Result<Hold, HoldError>> {
        holds::resize(&self.writer, user, hold, quantity, now).await
    }

    async fn expire_due_holds(&self, now: Timestamp, limit: u32) -> PortResult<Vec<Hold>> {
        holds::expire_due(&self.writer, now, limit).await
    }

    async fn warn_expiring_holds(
        &self,
        now: Timestamp,
        within_ms: i64,
        limit: u32,
    ) -> PortResult<usize> {
        holds::warn_expiring(&self.writer, now, within_ms, limit).await
    }

    async fn lapsed_holders(
        &self,
        min_lapsed: u32,
        limit: u32,
    ) -> PortResult<(Vec<LapsedHolder>, Vec<LapsedHolder>)> {
        hold_cap::lapsed_holders(&self.reader, min_lapsed, limit).await
    }
}

#[async_trait]
impl Orders for SqliteStore {
    async fn create_order(&self, order: &NewOrder) -> PortResult<Result<Order, CheckoutError>> {
        orders::create(&self.writer, order).await
    }

    async fn apply_payment(
        &self,
        order: &OrderId,
        result: &PaymentResult,
        now: Timestamp,
    ) -> PortResult<Option<PaymentApplied>> {
        orders::apply_payment(&self.writer, order, result, now).await
    }

    async fn payments_owed(&self, limit: u32) -> PortResult<Vec<OwedPayment>> {
        orders::owed(&self.reader, limit).await
    }

    async fn payment_owed_done(
        &self,
        payment: &PaymentId,
        done: GatewayOwed,
        next: Option<GatewayOwed>,
        now: Timestamp,
    ) -> PortResult<bool> {
        orders::owed_done(&self.writer, payment, done, next, now).await
    }

    async fn stuck_orders(
        &self,
        unanswered_before: Timestamp,
        deadline_before: Timestamp,
        limit: u32,
    ) -> PortResult<Vec<Order>> {
        orders::stuck(&self.reader, unanswered_before, deadline_before, limit).await
    }

    async fn order_by_payment_reference(&self, reference: &str) -> PortResult<Option<Order>> {
        orders::by_payment_reference(&self.reader, reference).await
    }

    async fn order(&self, user: &UserId, order: &OrderId) -> PortResult<Option<Order>> {
        orders::own(&self.reader, user, order).await
    }

    async fn orders(&self, user: &UserId) -> PortResult<Vec<Order>> {
        orders::of_user(&self.reader, user).await
    }

    async fn cancel_order(
        &self,
        user: &UserId,
        order: &OrderId,
        now: Timestamp,
    ) -> PortResult<Option<Result<Cancelled, OrderStatus>>> {
        orders::cancel(&self.writer, user, order, now).await
    }

    async fn idempotency_start(
        &self,
        user: &UserId,
        key: &str,
        request_hash: &str,
        now: Timestamp,
        lease_ms: i64,
    ) -> PortResult<IdempotencyStart> {
        misc::idempotency_start(&self.writer, user, key, request_hash, now, lease_ms).await
    }

    async fn idempotency_finish(
        &self,
        user: &UserId,
        key: &str,
        status: u16,
        body: &str,
    ) -> PortResult<()> {
        misc::idempotency_finish(&self.writer, user, key, status, body).await
    }

    async fn idempotency_abandon(&self, user: &UserId, key: &str) -> PortResult<()> {
        misc::idempotency_abandon(&self.writer, user, key).await
    }

    async fn webhook_event_seen(&self, event_id: &str) -> PortResult<bool> {
        misc::webhook_event_seen(&self.reader, event_id).await
    }

    async fn record_webhook_event(&self, event_id: &str, now: Timestamp) -> PortResult<bool> {
        misc::record_webhook_event(&self.writer, event_id, now).await
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn append_notification(&self, notification: &Notification) -> PortResult<bool> {
        misc::append_notification(&self.writer, notification).await
    }

    async fn notifications(
        &self,
        user: &UserId,
        after: Option<&str>,
        limit: u32,
    ) -> PortResult<Vec<Notification>> {
        misc::notifications(&self.reader, user, after, limit).await
    }

    async fn outbox_claim(
        &self,
        now: Timestamp,
        lease_ms: i64,
        limit: u32,
    ) -> PortResult<Vec<OutboxEvent>> {
        outbox::claim(&self.writer, now, lease_ms, limit).await
    }

    async fn outbox_delivered(&self, ids: &[String]) -> PortResult<()> {
        outbox::delivered(&self.writer, ids).await
    }

    async fn outbox_release(&self, ids: &[String]) -> PortResult<()> {
        outbox::release(&self.writer, ids).await
    }

    async fn outbox_backlog(&self) -> PortResult<(i64, Option<Timestamp>)> {
        outbox::backlog(&self.reader).await
    }

    async fn webhook_enqueue(&self, event: &OutboxEvent, now: Timestamp) -> PortResult<bool> {
        webhooks::enqueue(&self.writer, event, now).await
    }

    async fn webhook_claim(
        &self,
        now: Timestamp,
        lease_ms: i64,
        limit: u32,
    ) -> PortResult<Vec<WebhookDelivery>> {
        webhooks::claim(&self.writer, now, lease_ms, limit).await
    }

    async fn webhook_delivered(&self, event_id: &str, now: Timestamp) -> PortResult<()> {
        webhooks::delivered(&self.writer, event_id, now).await
    }

    async fn webhook_failed(
        &self,
        event_id: &str,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> PortResult<()> {
        webhooks::failed(&self.writer, event_id, next_attempt_at, error).await
    }

    async fn webhook_backlog(&self) -> PortResult<(i64, Option<Timestamp>)> {
        webhooks::backlog(&self.reader).await
    }
}

#[async_trait]
impl Audit for SqliteStore {
    async fn append_audit(&self, entry: &AuditEntry) -> PortResult<()> {
        misc::append_audit(&self.writer, entry).await
    }

    async fn audit(&self, filter: &AuditFilter) -> PortResult<Vec<AuditEntry>> {
        misc::audit(&self.reader, filter).await
    }
}

#[async_trait]
impl AdminReads for SqliteStore {
    async fn stock_audit(&self, sale: &SaleId) -> PortResult<Option<StockAudit>> {
        report::stock_audit(&self.reader, sale).await
    }

    async fn gate_seeds(&self) -> PortResult<Vec<GateSeed>> {
        report::gate_seeds(&self.reader).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> PortResult<()> {
        sqlx::migrate!("./migrations")
            .run(&self.writer)
            .await
            .map_err(|e| PortError::internal_because("migrate", e))
    }

    async fn ping(&self) -> PortResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .port()
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn int_pragma(pool: &SqlitePool, name: &str) -> i64 {
        sqlx::query_scalar(&format!("PRAGMA {name}"))
            .fetch_one(pool)
            .await
            .unwrap()
    }

    /// The durability and concurrency settings really apply, on both pools.
    #[tokio::test]
    async fn pools_run_wal_full_sync_with_one_writer_and_read_only_readers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("x.db")).await.unwrap();
        store.migrate().await.unwrap();
        store.migrate().await.unwrap(); // idempotent
        for pool in [&store.writer, &store.reader] {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            assert_eq!(int_pragma(pool, "synchronous").await, 2, "FULL");
            assert_eq!(int_pragma(pool, "foreign_keys").await, 1);
            assert_eq!(int_pragma(pool, "busy_timeout").await, 5_000);
        }
        assert_eq!(store.writer.options().get_max_connections(), 1);
        assert_eq!(int_pragma(&store.writer, "query_only").await, 0);
        assert_eq!(int_pragma(&store.reader, "query_only").await, 1);
        let write = sqlx::query("INSERT INTO webhook_events VALUES ('e', 0)")
            .execute(&store.reader)
            .await;
        assert!(write.is_err(), "a reader connection accepted a write");
        store.ping().await.unwrap();
        store.close().await;
    }

    /// The schema itself refuses unbalanced counters, the last line behind `TxStock`.
    #[tokio::test]
    async fn schema_refuses_unbalanced_counters_and_audit_edits() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("x.db")).await.unwrap();
        store.migrate().await.unwrap();
        sqlx::query(
            "INSERT INTO sales VALUES ('s', 'n', 'd', 1, 1, 'EUR', 0, 1, 1, 0, 60, 'running', \
             5, 5, 0, 0, 0, 0, NULL, NULL, '')",
        )
        .execute(&store.writer)
        .await
        .unwrap();
        let oversell = sqlx::query("UPDATE sales SET available = available - 1 WHERE id = 's'")
            .execute(&store.writer)
            .await;
        assert!(oversell.is_err());
        sqlx::query("INSERT INTO audit VALUES ('a', 0, 'x', 'y', 'z', NULL, NULL)")
            .execute(&store.writer)
            .await
            .unwrap();
        assert!(sqlx::query("UPDATE audit SET actor = 'w'")
            .execute(&store.writer)
            .await
            .is_err());
        assert!(sqlx::query("DELETE FROM audit")
            .execute(&store.writer)
            .await
            .is_err());
    }
}
