//! Stampede's cluster judge: the [`Store`] port over PostgreSQL, shared by every node.
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
//! * [`Holds::reserve`] judges a whole batch in ONE transaction (group commit): each touched
//!   sale is locked and read once, each sale's counters written once;
//! * `synchronous_commit` is forced `on` for every connection: a committed hold is on disk;
//! * holds, orders and order items are hash-partitioned by user id (see the migration), so
//!   their keys are `(user_id, id)`; the unpartitioned `hold_ids` and `payments` tables give
//!   the global uniqueness and the by-id lookups that need no user;
//! * [`Store::migrate`] is safe to run from several nodes at once (advisory lock).
//!
//! Errors: a lost connection, a timeout, a server shutting down, a deadlock or serialization
//! failure is `PortError::Unavailable` (worth a retry); anything else `Internal`.

mod error;
mod hold_cap;
mod holds;
mod room_log;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

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
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`, with any libpq-style
    /// parameters such as `?options[search_path]=schema`). Does not migrate: call
    /// [`Store::migrate`] before use. An unreachable server is `PortError::Unavailable`.
    pub async fn connect(url: &str) -> Result<PgStore, PortError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| PortError::internal_because("bad PostgreSQL URL", e))?;
        Self::connect_with(options).await
    }

    /// Connects with options built by the caller (e.g. tests choosing a scratch schema).
    /// Every connection forces `synchronous_commit = on`, so an acknowledged write is durable
    /// whatever the server's default, and bounds statements and idle transactions, so a stuck
    /// query or a hung node cannot hold sale locks forever.
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
        Ok(PgStore { pool })
    }

    /// Closes the pool, waiting for connections in use to come back: call on shutdown.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Accounts for PgStore {
    async fn insert_user(&self, user: &User, password_hash: &str) -> PortResult<bool> {
        users::insert(&self.pool, user, password_hash).await
    }

    async fn upsert_admin(&self, user: &User, password_hash: &str) -> PortResult<User> {
        users::upsert_admin(&self.pool, user, password_hash).await
    }

    async fn credentials_by_email(&self, email: &str) -> PortResult<Option<Credentials>> {
        users::credentials(&self.pool, email).await
    }

    async fn user(&self, id: &UserId) -> PortResult<Option<User>> {
        users::by_id(&self.pool, id).await
    }

    async fn insert_session(&self, session: &Session, created_at: Timestamp) -> PortResult<bool> {
        users::insert_session(&self.pool, session, created_at).await
    }

    async fn session(&self, session_id: &str) -> PortResult<Option<Session>> {
        users::session(&self.pool, session_id).await
    }

    async fn delete_session(&self, session_id: &str) -> PortResult<bool> {
        users::delete_session(&self.pool, session_id).await
    }

    async fn revoked_sessions(&self, now: Timestamp) -> PortResult<Vec<(String, Timestamp)>> {
        users::revoked_sessions(&self.pool, now).await
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> PortResult<String> {
        users::shared_secret(&self.pool, name, candidate).await
    }

    async fn set_user_status(
        &self,
        user: &UserId,
        status: UserStatus,
        reason: &str,
    ) -> PortResult<Option<Vec<(String, Timestamp)>>> {
        users::set_status(&self.pool, user, status, reason).await
    }

    async fn account(&self, user: &UserId) -> PortResult<Option<UserAccount>> {
        users::account_by_id(&self.pool, user).await
    }

    async fn accounts(
        &self,
        query: &str,
        after: Option<&UserId>,
        limit: u32,
    ) -> PortResult<Vec<UserAccount>> {
        users::accounts(&self.pool, query, after, limit).await
    }
}

#[async_trait]
impl Catalog for PgStore {
    async fn insert_sale(&self, sale: &Sale) -> PortResult<()> {
        sales::insert(&self.pool, sale).await
    }

    async fn update_sale(&self, sale: &Sale) -> PortResult<bool> {
        sales::update(&self.pool, sale).await
    }

    async fn sale(&self, id: &SaleId) -> PortResult<Option<Sale>> {
        sales::by_id(&self.pool, id).await
    }

    async fn sales(&self) -> PortResult<Vec<Sale>> {
        sales::all(&self.pool).await
    }

    async fn browse_sales(&self, browse: &Browse) -> PortResult<Vec<Sale>> {
        catalog::browse_sales(&self.pool, browse).await
    }

    async fn insert_product(&self, product: &Product) -> PortResult<()> {
        catalog::insert_product(&self.pool, product).await
    }

    async fn update_product(&self, product: &Product) -> PortResult<bool> {
        catalog::update_product(&self.pool, product).await
    }

    async fn product(&self, id: &ProductId) -> PortResult<Option<Product>> {
        catalog::product_by_id(&self.pool, id).await
    }

    async fn products(&self, browse: &Browse) -> PortResult<Vec<Product>> {
        catalog::browse_products(&self.pool, browse).await
    }

    async fn insert_drop(&self, drop: &DropEvent) -> PortResult<()> {
        catalog::insert_drop(&self.pool, drop).await
    }

    async fn update_drop(&self, drop: &DropEvent) -> PortResult<bool> {
        catalog::update_drop(&self.pool, drop).await
    }

    async fn drop_event(&self, id: &DropId) -> PortResult<Option<DropEvent>> {
        catalog::drop_by_id(&self.pool, id).await
    }

    async fn drops(&self, browse: &Browse) -> PortResult<Vec<DropEvent>> {
        catalog::browse_drops(&self.pool, browse).await
    }
}

#[async_trait]
impl Holds for PgStore {
    async fn reserve(&self, batch: &[ReserveRequest]) -> PortResult<Vec<Result<Hold, Refusal>>> {
        holds::reserve(&self.pool, batch).await
    }

    async fn live_holds(&self, user: &UserId, now: Timestamp) -> PortResult<Vec<Hold>> {
        holds::live(&self.pool, user, now).await
    }

    async fn release_hold(
        &self,
        user: &UserId,
        hold: &HoldId,
        now: Timestamp,
    ) -> PortResult<Result<Hold, HoldError>> {
        holds::release(&self.pool, user, hold, now).await
    }

    async fn resize_hold(
        &self,
        user: &UserId,
        hold: &HoldId,
        quantity: u32,
        now: Timestamp,
    ) -> PortResult<Result<Hold, HoldError>> {
        holds::resize(&self.pool, user, hold, quantity, now).await
    }

    async fn expire_due_holds(&self, now: Timestamp, limit: u32) -> PortResult<Vec<Hold>> {
        holds::expire_due(&self.pool, now, limit).await
    }

    async fn warn_expiring_holds(
        &self,
        now: Timestamp,
        within_ms: i64,
        limit: u32,
    ) -> PortResult<usize> {
        holds::warn_expiring(&self.pool, now, within_ms, limit).await
    }

    async fn lapsed_holders(
        &self,
        min_lapsed: u32,
        limit: u32,
    ) -> PortResult<(Vec<LapsedHolder>, Vec<LapsedHolder>)> {
        hold_cap::lapsed_holders(&self.pool, min_lapsed, limit).await
    }
}

#[async_trait]
impl Orders for PgStore {
    async fn create_order(&self, order: &NewOrder) -> PortResult<Result<Order, CheckoutError>> {
        orders::create(&self.pool, order).await
    }

    async fn apply_payment(
        &self,
        order: &OrderId,
        result: &PaymentResult,
        now: Timestamp,
    ) -> PortResult<Option<PaymentApplied>> {
        orders::apply_payment(&self.pool, order, result, now).await
    }

    async fn payments_owed(&self, limit: u32) -> PortResult<Vec<OwedPayment>> {
        orders::owed(&self.pool, limit).await
    }

    async fn payment_owed_done(
        &self,
        payment: &PaymentId,
        done: GatewayOwed,
        next: Option<GatewayOwed>,
        now: Timestamp,
    ) -> PortResult<bool> {
        orders::owed_done(&self.pool, payment, done, next, now).await
    }

    async fn stuck_orders(
        &self,
        unanswered_before: Timestamp,
        deadline_before: Timestamp,
        limit: u32,
    ) -> PortResult<Vec<Order>> {
        orders::stuck(&self.pool, unanswered_before, deadline_before, limit).await
    }

    async fn order_by_payment_reference(&self, reference: &str) -> PortResult<Option<Order>> {
        orders::by_payment_reference(&self.pool, reference).await
    }

    async fn order(&self, user: &UserId, order: &OrderId) -> PortResult<Option<Order>> {
        orders::own(&self.pool, user, order).await
    }

    async fn orders(&self, user: &UserId) -> PortResult<Vec<Order>> {
        orders::of_user(&self.pool, user).await
    }

    async fn cancel_order(
        &self,
        user: &UserId,
        order: &OrderId,
        now: Timestamp,
    ) -> PortResult<Option<Result<Cancelled, OrderStatus>>> {
        orders::cancel(&self.pool, user, order, now).await
    }

    async fn idempotency_start(
        &self,
        user: &UserId,
        key: &str,
        request_hash: &str,
        now: Timestamp,
        lease_ms: i64,
    ) -> PortResult<IdempotencyStart> {
        misc::idempotency_start(&self.pool, user, key, request_hash, now, lease_ms).await
    }

    async fn idempotency_finish(
        &self,
        user: &UserId,
        key: &str,
        status: u16,
        body: &str,
    ) -> PortResult<()> {
        misc::idempotency_finish(&self.pool, user, key, status, body).await
    }

    async fn idempotency_abandon(&self, user: &UserId, key: &str) -> PortResult<()> {
        misc::idempotency_abandon(&self.pool, user, key).await
    }

    async fn webhook_event_seen(&self, event_id: &str) -> PortResult<bool> {
        misc::webhook_event_seen(&self.pool, event_id).await
    }

    async fn record_webhook_event(&self, event_id: &str, now: Timestamp) -> PortResult<bool> {
        misc::record_webhook_event(&self.pool, event_id, now).await
    }
}

#[async_trait]
impl Outbox for PgStore {
    async fn append_notification(&self, notification: &Notification) -> PortResult<bool> {
        misc::append_notification(&self.pool, notification).await
    }

    async fn notifications(
        &self,
        user: &UserId,
        after: Option<&str>,
        limit: u32,
    ) -> PortResult<Vec<Notification>> {
        misc::notifications(&self.pool, user, after, limit).await
    }

    async fn outbox_claim(
        &self,
        now: Timestamp,
        lease_ms: i64,
        limit: u32,
    ) -> PortResult<Vec<OutboxEvent>> {
        outbox::claim(&self.pool, now, lease_ms, limit).await
    }

    async fn outbox_delivered(&self, ids: &[String]) -> PortResult<()> {
        outbox::delivered(&self.pool, ids).await
    }

    async fn outbox_release(&self, ids: &[String]) -> PortResult<()> {
        outbox::release(&self.pool, ids).await
    }

    async fn outbox_backlog(&self) -> PortResult<(i64, Option<Timestamp>)> {
        outbox::backlog(&self.pool).await
    }

    async fn webhook_enqueue(&self, event: &OutboxEvent, now: Timestamp) -> PortResult<bool> {
        webhooks::enqueue(&self.pool, event, now).await
    }

    async fn webhook_claim(
        &self,
        now: Timestamp,
        lease_ms: i64,
        limit: u32,
    ) -> PortResult<Vec<WebhookDelivery>> {
        webhooks::claim(&self.pool, now, lease_ms, limit).await
    }

    async fn webhook_delivered(&self, event_id: &str, now: Timestamp) -> PortResult<()> {
        webhooks::delivered(&self.pool, event_id, now).await
    }

    async fn webhook_failed(
        &self,
        event_id: &str,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> PortResult<()> {
        webhooks::failed(&self.pool, event_id, next_attempt_at, error).await
    }

    async fn webhook_backlog(&self) -> PortResult<(i64, Option<Timestamp>)> {
        webhooks::backlog(&self.pool).await
    }
}

#[async_trait]
impl Audit for PgStore {
    async fn append_audit(&self, entry: &AuditEntry) -> PortResult<()> {
        misc::append_audit(&self.pool, entry).await
    }

    async fn audit(&self, filter: &AuditFilter) -> PortResult<Vec<AuditEntry>> {
        misc::audit(&self.pool, filter).await
    }
}

#[async_trait]
impl AdminReads for PgStore {
    async fn stock_audit(&self, sale: &SaleId) -> PortResult<Option<StockAudit>> {
        report::stock_audit(&self.pool, sale).await
    }

    async fn gate_seeds(&self) -> PortResult<Vec<GateSeed>> {
        report::gate_seeds(&self.pool).await
    }
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> PortResult<()> {
        // sqlx's migrator holds a PostgreSQL advisory lock (keyed on the database) while it
        // checks and applies migrations, so nodes starting together apply each one once.
        MIGRATOR.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => error::port_error(e),
            other => PortError::internal(format!("migrate: {other}")),
        })
    }

    async fn ping(&self) -> PortResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .port()
            .map(|_| ())
    }
}
