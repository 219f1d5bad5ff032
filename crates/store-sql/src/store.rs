//! The store written once: [`SqlStore`] implements every role of the `Store` port and the
//! `RoomLog` port over either engine, and asks its [`Backend`] only for what that engine does
//! its own way (its pools, its migrations, how it writes a group-commit batch of reservations
//! or of waiting-room entries). Each method here is one call into the shared SQL modules.

use async_trait::async_trait;
use sqlx::Pool;

use stampede_app::ports::{
    Accounts, AdminReads, Audit, AuditEntry, AuditFilter, Browse, Cancelled, Catalog,
    CheckoutError, Credentials, GateSeed, GatewayOwed, HoldError, Holds, IdempotencyStart,
    LapsedHolder, NewOrder, Notification, Orders, Outbox, OutboxEvent, OwedPayment, PaymentApplied,
    PaymentResult, PortResult, ReserveRequest, RoomLog, Session, StockAudit, Store, User,
    UserAccount, UserStatus, WebhookDelivery,
};
use stampede_core::judge::Refusal;
use stampede_core::waiting_line::LoggedEntry;
use stampede_core::{
    DropEvent, DropId, Hold, HoldId, Order, OrderId, OrderStatus, PaymentId, Product, ProductId,
    Sale, SaleId, Timestamp, UserId,
};

use crate::engine::{statement, Run};
use crate::judging::Judging;
use crate::webhooks;
use crate::{catalog, hold_cap, holds, misc, orders, outbox, report, room_log, sales, users};

/// What one engine's store does its own way; everything else is [`SqlStore`]'s.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The engine.
    type DB: Judging;
    /// Where writes and read-modify-write transactions run (SQLite: its one writer).
    fn writer(&self) -> &Pool<Self::DB>;
    /// Where pure reads run (SQLite: query-only connections beside the writer).
    fn reader(&self) -> &Pool<Self::DB>;
    /// Applies the engine's schema migrations. Idempotent.
    async fn migrate(&self) -> PortResult<()>;
    /// Judges a group-commit batch of reservations in one transaction (see `Holds::reserve`).
    async fn reserve(&self, batch: &[ReserveRequest]) -> PortResult<Vec<Result<Hold, Refusal>>>;
    /// Writes a batch of waiting-room entries in one transaction (see `RoomLog`).
    async fn append_room_entries(&self, batch: &[(SaleId, LoggedEntry)]) -> PortResult<()>;
    /// Closes the pools, waiting for connections in use to come back.
    async fn close(&self);
}

/// The system of record over one engine's [`Backend`].
#[derive(Debug, Clone)]
pub struct SqlStore<B>(B);

impl<B: Backend> SqlStore<B> {
    /// The store over `backend` (not migrated: call `Store::migrate` before use).
    pub fn new(backend: B) -> Self {
        Self(backend)
    }

    /// The engine's own part, for what only it offers (its pools).
    pub fn backend(&self) -> &B {
        &self.0
    }

    /// Closes the pools, waiting for connections in use to come back: call on shutdown (for
    /// SQLite, so the WAL is checkpointed and the file left tidy; not needed for durability).
    pub async fn close(&self) {
        self.0.close().await;
    }
}

#[async_trait]
impl<B: Backend> Accounts for SqlStore<B> {
    async fn insert_user(&self, user: &User, password_hash: &str) -> PortResult<bool> {
        users::insert(self.0.writer(), user, password_hash).await
    }

    async fn upsert_admin(&self, user: &User, password_hash: &str) -> PortResult<User> {
        users::upsert_admin(self.0.writer(), user, password_hash).await
    }

    async fn credentials_by_email(&self, email: &str) -> PortResult<Option<Credentials>> {
        users::credentials(self.0.reader(), email).await
    }

    async fn user(&self, id: &UserId) -> PortResult<Option<User>> {
        users::by_id(self.0.reader(), id).await
    }

    async fn insert_session(&self, session: &Session, created_at: Timestamp) -> PortResult<bool> {
        users::insert_session(self.0.writer(), session, created_at).await
    }

    async fn session(&self, session_id: &str) -> PortResult<Option<Session>> {
        users::session(self.0.reader(), session_id).await
    }

    async fn delete_session(&self, session_id: &str) -> PortResult<bool> {
        users::delete_session(self.0.writer(), session_id).await
    }

    async fn revoked_sessions(&self, now: Timestamp) -> PortResult<Vec<(String, Timestamp)>> {
        users::revoked_sessions(self.0.reader(), now).await
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> PortResult<String> {
        users::shared_secret(self.0.writer(), name, candidate).await
    }

    async fn set_user_status(
        &self,
        user: &UserId,
        status: UserStatus,
        reason: &str,
    ) -> PortResult<Option<Vec<(String, Timestamp)>>> {
        users::set_status(self.0.writer(), user, status, reason).await
    }

    async fn account(&self, user: &UserId) -> PortResult<Option<UserAccount>> {
        users::account_by_id(self.0.reader(), user).await
    }

    async fn accounts(
        &self,
        query: &str,
        after: Option<&UserId>,
        limit: u32,
    ) -> PortResult<Vec<UserAccount>> {
        users::accounts(self.0.reader(), query, after, limit).await
    }
}

#[async_trait]
impl<B: Backend> Catalog for SqlStore<B> {
    async fn insert_sale(&self, sale: &Sale) -> PortResult<()> {
        sales::insert(self.0.writer(), sale).await
    }

    async fn update_sale(&self, sale: &Sale) -> PortResult<bool> {
        sales::update(self.0.writer(), sale).await
    }

    async fn sale(&self, id: &SaleId) -> PortResult<Option<Sale>> {
        sales::by_id(self.0.reader(), id).await
    }

    async fn sales(&self) -> PortResult<Vec<Sale>> {
        sales::all(self.0.reader()).await
    }

    async fn browse_sales(&self, browse: &Browse) -> PortResult<Vec<Sale>> {
        catalog::browse_sales(self.0.reader(), browse).await
    }

    async fn insert_product(&self, product: &Product) -> PortResult<()> {
        catalog::insert_product(self.0.writer(), product).await
    }

    async fn update_product(&self, product: &Product) -> PortResult<bool> {
        catalog::update_product(self.0.writer(), product).await
    }

    async fn product(&self, id: &ProductId) -> PortResult<Option<Product>> {
        catalog::product_by_id(self.0.reader(), id).await
    }

    async fn products(&self, browse: &Browse) -> PortResult<Vec<Product>> {
        catalog::browse_products(self.0.reader(), browse).await
    }

    async fn insert_drop(&self, drop: &DropEvent) -> PortResult<()> {
        catalog::insert_drop(self.0.writer(), drop).await
    }

    async fn update_drop(&self, drop: &DropEvent) -> PortResult<bool> {
        catalog::update_drop(self.0.writer(), drop).await
    }

    async fn drop_event(&self, id: &DropId) -> PortResult<Option<DropEvent>> {
        catalog::drop_by_id(self.0.reader(), id).await
    }

    async fn drops(&self, browse: &Browse) -> PortResult<Vec<DropEvent>> {
        catalog::browse_drops(self.0.reader(), browse).await
    }
}

#[async_trait]
impl<B: Backend> Holds for SqlStore<B> {
    async fn reserve(&self, batch: &[ReserveRequest]) -> PortResult<Vec<Result<Hold, Refusal>>> {
        self.0.reserve(batch).await
    }

    async fn live_holds(&self, user: &UserId, now: Timestamp) -> PortResult<Vec<Hold>> {
        holds::live(self.0.reader(), user, now).await
    }

    async fn release_hold(
        &self,
        user: &UserId,
        hold: &HoldId,
        now: Timestamp,
    ) -> PortResult<Result<Hold, HoldError>> {
        holds::release(self.0.writer(), user, hold, now).await
    }

    async fn resize_hold(
        &self,
        user: &UserId,
        hold: &HoldId,
        quantity: u32,
        now: Timestamp,
    ) -> PortResult<Result<Hold, HoldError>> {
        holds::resize(self.0.writer(), user, hold, quantity, now).await
    }

    async fn expire_due_holds(&self, now: Timestamp, limit: u32) -> PortResult<Vec<Hold>> {
        holds::expire_due(self.0.writer(), now, limit).await
    }

    async fn warn_expiring_holds(
        &self,
        now: Timestamp,
        within_ms: i64,
        limit: u32,
    ) -> PortResult<usize> {
        holds::warn_expiring(self.0.writer(), now, within_ms, limit).await
    }

    async fn lapsed_holders(
        &self,
        min_lapsed: u32,
        limit: u32,
    ) -> PortResult<(Vec<LapsedHolder>, Vec<LapsedHolder>)> {
        hold_cap::lapsed_holders(self.0.reader(), min_lapsed, limit).await
    }
}

#[async_trait]
impl<B: Backend> Orders for SqlStore<B> {
    async fn create_order(&self, order: &NewOrder) -> PortResult<Result<Order, CheckoutError>> {
        orders::create(self.0.writer(), order).await
    }

    async fn apply_payment(
        &self,
        order: &OrderId,
        result: &PaymentResult,
        now: Timestamp,
    ) -> PortResult<Option<PaymentApplied>> {
        orders::apply_payment(self.0.writer(), order, result, now).await
    }

    async fn payments_owed(&self, limit: u32) -> PortResult<Vec<OwedPayment>> {
        orders::owed(self.0.reader(), limit).await
    }

    async fn payment_owed_done(
        &self,
        payment: &PaymentId,
        done: GatewayOwed,
        next: Option<GatewayOwed>,
        now: Timestamp,
    ) -> PortResult<bool> {
        orders::owed_done(self.0.writer(), payment, done, next, now).await
    }

    async fn stuck_orders(
        &self,
        unanswered_before: Timestamp,
        deadline_before: Timestamp,
        limit: u32,
    ) -> PortResult<Vec<Order>> {
        orders::stuck(self.0.reader(), unanswered_before, deadline_before, limit).await
    }

    async fn order_by_payment_reference(&self, reference: &str) -> PortResult<Option<Order>> {
        orders::by_payment_reference(self.0.reader(), reference).await
    }

    async fn order(&self, user: &UserId, order: &OrderId) -> PortResult<Option<Order>> {
        orders::own(self.0.reader(), user, order).await
    }

    async fn orders(&self, user: &UserId) -> PortResult<Vec<Order>> {
        orders::of_user(self.0.reader(), user).await
    }

    async fn cancel_order(
        &self,
        user: &UserId,
        order: &OrderId,
        now: Timestamp,
    ) -> PortResult<Option<Result<Cancelled, OrderStatus>>> {
        orders::cancel(self.0.writer(), user, order, now).await
    }

    async fn idempotency_start(
        &self,
        user: &UserId,
        key: &str,
        request_hash: &str,
        now: Timestamp,
        lease_ms: i64,
    ) -> PortResult<IdempotencyStart> {
        misc::idempotency_start(self.0.writer(), user, key, request_hash, now, lease_ms).await
    }

    async fn idempotency_finish(
        &self,
        user: &UserId,
        key: &str,
        status: u16,
        body: &str,
    ) -> PortResult<()> {
        misc::idempotency_finish(self.0.writer(), user, key, status, body).await
    }

    async fn idempotency_abandon(&self, user: &UserId, key: &str) -> PortResult<()> {
        misc::idempotency_abandon(self.0.writer(), user, key).await
    }

    async fn webhook_event_seen(&self, event_id: &str) -> PortResult<bool> {
        misc::webhook_event_seen(self.0.reader(), event_id).await
    }

    async fn record_webhook_event(&self, event_id: &str, now: Timestamp) -> PortResult<bool> {
        misc::record_webhook_event(self.0.writer(), event_id, now).await
    }
}

#[async_trait]
impl<B: Backend> Outbox for SqlStore<B> {
    async fn append_notification(&self, notification: &Notification) -> PortResult<bool> {
        misc::append_notification(self.0.writer(), notification).await
    }

    async fn notifications(
        &self,
        user: &UserId,
        after: Option<&str>,
        limit: u32,
    ) -> PortResult<Vec<Notification>> {
        misc::notifications(self.0.reader(), user, after, limit).await
    }

    async fn outbox_claim(
        &self,
        now: Timestamp,
        lease_ms: i64,
        limit: u32,
    ) -> PortResult<Vec<OutboxEvent>> {
        outbox::claim(self.0.writer(), now, lease_ms, limit).await
    }

    async fn outbox_delivered(&self, ids: &[String]) -> PortResult<()> {
        outbox::delivered(self.0.writer(), ids).await
    }

    async fn outbox_release(&self, ids: &[String]) -> PortResult<()> {
        outbox::release(self.0.writer(), ids).await
    }

    async fn outbox_backlog(&self) -> PortResult<(i64, Option<Timestamp>)> {
        outbox::backlog(self.0.reader()).await
    }

    async fn webhook_enqueue(&self, event: &OutboxEvent, now: Timestamp) -> PortResult<bool> {
        webhooks::enqueue(self.0.writer(), event, now).await
    }

    async fn webhook_claim(
        &self,
        now: Timestamp,
        lease_ms: i64,
        limit: u32,
    ) -> PortResult<Vec<WebhookDelivery>> {
        webhooks::claim(self.0.writer(), now, lease_ms, limit).await
    }

    async fn webhook_delivered(&self, event_id: &str, now: Timestamp) -> PortResult<()> {
        webhooks::delivered(self.0.writer(), event_id, now).await
    }

    async fn webhook_failed(
        &self,
        event_id: &str,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> PortResult<()> {
        webhooks::failed(self.0.writer(), event_id, next_attempt_at, error).await
    }

    async fn webhook_backlog(&self) -> PortResult<(i64, Option<Timestamp>)> {
        webhooks::backlog(self.0.reader()).await
    }
}

#[async_trait]
impl<B: Backend> Audit for SqlStore<B> {
    async fn append_audit(&self, entry: &AuditEntry) -> PortResult<()> {
        misc::append_audit(self.0.writer(), entry).await
    }

    async fn audit(&self, filter: &AuditFilter) -> PortResult<Vec<AuditEntry>> {
        misc::audit(self.0.reader(), filter).await
    }
}

#[async_trait]
impl<B: Backend> AdminReads for SqlStore<B> {
    async fn stock_audit(&self, sale: &SaleId) -> PortResult<Option<StockAudit>> {
        report::stock_audit(self.0.reader(), sale).await
    }

    async fn gate_seeds(&self) -> PortResult<Vec<GateSeed>> {
        report::gate_seeds(self.0.reader()).await
    }
}

#[async_trait]
impl<B: Backend> Store for SqlStore<B> {
    async fn migrate(&self) -> PortResult<()> {
        self.0.migrate().await
    }

    async fn ping(&self) -> PortResult<()> {
        statement::<B::DB>("SELECT 1")
            .run_in(self.0.reader())
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl<B: Backend> RoomLog for SqlStore<B> {
    async fn append_entries(&self, batch: &[(SaleId, LoggedEntry)]) -> PortResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.0.append_room_entries(batch).await
    }

    async fn entries(
        &self,
        sale: &SaleId,
        cursor: i64,
        limit: u32,
    ) -> PortResult<(Vec<LoggedEntry>, i64)> {
        room_log::entries(self.0.reader(), sale, cursor, limit).await
    }

    async fn put_value(&self, scope: &str, key: &str, value: &str) -> PortResult<()> {
        room_log::put_value(self.0.writer(), scope, key, value).await
    }

    async fn values(&self, scope: &str) -> PortResult<Vec<(String, String)>> {
        room_log::values(self.0.reader(), scope).await
    }
}
