//! A [`Store`] that counts every call by operation (`stampede_store_calls_total{op}`), around
//! the real one. The request path promises what it reads from the judge (a sold-out reserve:
//! nothing); this is how the tests and `/metrics` hold it to that, with no change to either
//! store adapter.

use std::sync::Arc;

use async_trait::async_trait;

use stampede_core::judge::Refusal;
use stampede_core::{
    DropEvent, DropId, Hold, HoldId, Order, OrderId, OrderStatus, Product, ProductId, Sale, SaleId,
    Timestamp, UserId,
};

use crate::ports::*;

/// Counts each call, then hands it to `inner`.
pub struct CountedStore {
    inner: Arc<dyn Store>,
}

impl CountedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner }
    }

    fn count(&self, op: &'static str) {
        metrics::counter!("stampede_store_calls_total", "op" => op).increment(1);
    }
}

#[async_trait]
impl Accounts for CountedStore {
    async fn insert_user(&self, user: &User, password_hash: &str) -> PortResult<bool> {
        self.count("insert_user");
        self.inner.insert_user(user, password_hash).await
    }

    async fn upsert_admin(&self, user: &User, password_hash: &str) -> PortResult<User> {
        self.count("upsert_admin");
        self.inner.upsert_admin(user, password_hash).await
    }

    async fn credentials_by_email(&self, email: &str) -> PortResult<Option<Credentials>> {
        self.count("credentials_by_email");
        self.inner.credentials_by_email(email).await
    }

    async fn user(&self, id: &UserId) -> PortResult<Option<User>> {
        self.count("user");
        self.inner.user(id).await
    }

    async fn insert_session(&self, session: &Session, created_at: Timestamp) -> PortResult<bool> {
        self.count("insert_session");
        self.inner.insert_session(session, created_at).await
    }

    async fn session(&self, session_id: &str) -> PortResult<Option<Session>> {
        self.count("session");
        self.inner.session(session_id).await
    }

    async fn delete_session(&self, session_id: &str) -> PortResult<bool> {
        self.count("delete_session");
        self.inner.delete_session(session_id).await
    }

    async fn set_user_status(
        &self,
        user: &UserId,
        status: UserStatus,
        reason: &str,
    ) -> PortResult<Option<Vec<(String, Timestamp)>>> {
        self.count("set_user_status");
        self.inner.set_user_status(user, status, reason).await
    }

    async fn revoked_sessions(&self, now: Timestamp) -> PortResult<Vec<(String, Timestamp)>> {
        self.count("revoked_sessions");
        self.inner.revoked_sessions(now).await
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> PortResult<String> {
        self.count("shared_secret");
        self.inner.shared_secret(name, candidate).await
    }

    async fn account(&self, user: &UserId) -> PortResult<Option<UserAccount>> {
        self.count("account");
        self.inner.account(user).await
    }

    async fn accounts(
        &self,
        query: &str,
        after: Option<&UserId>,
        limit: u32,
    ) -> PortResult<Vec<UserAccount>> {
        self.count("accounts");
        self.inner.accounts(query, after, limit).await
    }
}

#[async_trait]
impl Catalog for CountedStore {
    async fn insert_sale(&self, sale: &Sale) -> PortResult<()> {
        self.count("insert_sale");
        self.inner.insert_sale(sale).await
    }

    async fn update_sale(&self, sale: &Sale) -> PortResult<bool> {
        self.count("update_sale");
        self.inner.update_sale(sale).await
    }

    async fn sale(&self, id: &SaleId) -> PortResult<Option<Sale>> {
        self.count("sale");
        self.inner.sale(id).await
    }

    async fn sales(&self) -> PortResult<Vec<Sale>> {
        self.count("sales");
        self.inner.sales().await
    }

    async fn browse_sales(&self, browse: &Browse) -> PortResult<Vec<Sale>> {
        self.count("browse_sales");
        self.inner.browse_sales(browse).await
    }

    async fn insert_product(&self, product: &Product) -> PortResult<()> {
        self.count("insert_product");
        self.inner.insert_product(product).await
    }

    async fn update_product(&self, product: &Product) -> PortResult<bool> {
        self.count("update_product");
        self.inner.update_product(product).await
    }

    async fn product(&self, id: &ProductId) -> PortResult<Option<Product>> {
        self.count("product");
        self.inner.product(id).await
    }

    async fn products(&self, browse: &Browse) -> PortResult<Vec<Product>> {
        self.count("products");
        self.inner.products(browse).await
    }

    async fn insert_drop(&self, drop: &DropEvent) -> PortResult<()> {
        self.count("insert_drop");
        self.inner.insert_drop(drop).await
    }

    async fn update_drop(&self, drop: &DropEvent) -> PortResult<bool> {
        self.count("update_drop");
        self.inner.update_drop(drop).await
    }

    async fn drop_event(&self, id: &DropId) -> PortResult<Option<DropEvent>> {
        self.count("drop_event");
        self.inner.drop_event(id).await
    }

    async fn drops(&self, browse: &Browse) -> PortResult<Vec<DropEvent>> {
        self.count("drops");
        self.inner.drops(browse).await
    }
}

#[async_trait]
impl Holds for CountedStore {
    async fn reserve(&self, batch: &[ReserveRequest]) -> PortResult<Vec<Result<Hold, Refusal>>> {
        self.count("reserve");
        self.inner.reserve(batch).await
    }

    async fn live_holds(&self, user: &UserId, now: Timestamp) -> PortResult<Vec<Hold>> {
        self.count("live_holds");
        self.inner.live_holds(user, now).await
    }

    async fn release_hold(
        &self,
        user: &UserId,
        hold: &HoldId,
        now: Timestamp,
    ) -> PortResult<Result<Hold, HoldError>> {
        self.count("release_hold");
        self.inner.release_hold(user, hold, now).await
    }

    async fn resize_hold(
        &self,
        user: &UserId,
        hold: &HoldId,
        quantity: u32,
        now: Timestamp,
    ) -> PortResult<Result<Hold, HoldError>> {
        self.count("resize_hold");
        self.inner.resize_hold(user, hold, quantity, now).await
    }

    async fn expire_due_holds(&self, now: Timestamp, limit: u32) -> PortResult<Vec<Hold>> {
        self.count("expire_due_holds");
        self.inner.expire_due_holds(now, limit).await
    }

    async fn warn_expiring_holds(
        &self,
        now: Timestamp,
        within_ms: i64,
        limit: u32,
    ) -> PortResult<usize> {
        self.count("warn_expiring_holds");
        self.inner.warn_expiring_holds(now, within_ms, limit).await
    }

    async fn lapsed_holders(
        &self,
        min_lapsed: u32,
        limit: u32,
    ) -> PortResult<(Vec<LapsedHolder>, Vec<LapsedHolder>)> {
        self.count("lapsed_holders");
        self.inner.lapsed_holders(min_lapsed, limit).await
    }
}

#[async_trait]
impl Orders for CountedStore {
    async fn create_orders(
        &self,
        orders: &[NewOrder],
    ) -> Vec<PortResult<Result<Order, CheckoutError>>> {
        self.count("create_orders");
        self.inner.create_orders(orders).await
    }

    async fn apply_payments(
        &self,
        answers: &[PaymentAnswer],
    ) -> Vec<PortResult<Option<PaymentApplied>>> {
        self.count("apply_payments");
        self.inner.apply_payments(answers).await
    }

    async fn payments_owed(&self, limit: u32) -> PortResult<Vec<OwedPayment>> {
        self.count("payments_owed");
        self.inner.payments_owed(limit).await
    }

    async fn payments_owed_done(&self, moves: &[OwedDone]) -> Vec<PortResult<bool>> {
        self.count("payments_owed_done");
        self.inner.payments_owed_done(moves).await
    }

    async fn stuck_orders(
        &self,
        unanswered_before: Timestamp,
        deadline_before: Timestamp,
        limit: u32,
    ) -> PortResult<Vec<Order>> {
        self.count("stuck_orders");
        self.inner
            .stuck_orders(unanswered_before, deadline_before, limit)
            .await
    }

    async fn order_by_payment_reference(&self, reference: &str) -> PortResult<Option<Order>> {
        self.count("order_by_payment_reference");
        self.inner.order_by_payment_reference(reference).await
    }

    async fn order(&self, user: &UserId, order: &OrderId) -> PortResult<Option<Order>> {
        self.count("order");
        self.inner.order(user, order).await
    }

    async fn orders(&self, user: &UserId) -> PortResult<Vec<Order>> {
        self.count("orders");
        self.inner.orders(user).await
    }

    async fn cancel_order(
        &self,
        user: &UserId,
        order: &OrderId,
        now: Timestamp,
    ) -> PortResult<Option<Result<Cancelled, OrderStatus>>> {
        self.count("cancel_order");
        self.inner.cancel_order(user, order, now).await
    }

    async fn idempotency_starts(
        &self,
        claims: &[IdempotencyClaim],
    ) -> Vec<PortResult<IdempotencyStart>> {
        self.count("idempotency_starts");
        self.inner.idempotency_starts(claims).await
    }

    async fn idempotency_finishes(&self, answers: &[IdempotencyAnswer]) -> Vec<PortResult<()>> {
        self.count("idempotency_finishes");
        self.inner.idempotency_finishes(answers).await
    }

    async fn idempotency_abandon(&self, user: &UserId, key: &str) -> PortResult<()> {
        self.count("idempotency_abandon");
        self.inner.idempotency_abandon(user, key).await
    }

    async fn webhook_event_seen(&self, event_id: &str) -> PortResult<bool> {
        self.count("webhook_event_seen");
        self.inner.webhook_event_seen(event_id).await
    }

    async fn record_webhook_event(&self, event_id: &str, now: Timestamp) -> PortResult<bool> {
        self.count("record_webhook_event");
        self.inner.record_webhook_event(event_id, now).await
    }
}

#[async_trait]
impl Outbox for CountedStore {
    async fn append_notifications(&self, notifications: &[Notification]) -> Vec<PortResult<bool>> {
        self.count("append_notifications");
        self.inner.append_notifications(notifications).await
    }

    async fn notifications(
        &self,
        user: &UserId,
        after: Option<&str>,
        limit: u32,
    ) -> PortResult<Vec<Notification>> {
        self.count("notifications");
        self.inner.notifications(user, after, limit).await
    }

    async fn outbox_claim(
        &self,
        now: Timestamp,
        lease_ms: i64,
        limit: u32,
    ) -> PortResult<Vec<OutboxEvent>> {
        self.count("outbox_claim");
        self.inner.outbox_claim(now, lease_ms, limit).await
    }

    async fn outbox_delivered(&self, ids: &[String]) -> PortResult<()> {
        self.count("outbox_delivered");
        self.inner.outbox_delivered(ids).await
    }

    async fn outbox_release(&self, ids: &[String]) -> PortResult<()> {
        self.count("outbox_release");
        self.inner.outbox_release(ids).await
    }

    async fn outbox_backlog(&self) -> PortResult<(i64, Option<Timestamp>)> {
        self.count("outbox_backlog");
        self.inner.outbox_backlog().await
    }

    async fn webhook_enqueue(&self, event: &OutboxEvent, now: Timestamp) -> PortResult<bool> {
        self.count("webhook_enqueue");
        self.inner.webhook_enqueue(event, now).await
    }

    async fn webhook_claim(
        &self,
        now: Timestamp,
        lease_ms: i64,
        limit: u32,
    ) -> PortResult<Vec<WebhookDelivery>> {
        self.count("webhook_claim");
        self.inner.webhook_claim(now, lease_ms, limit).await
    }

    async fn webhook_delivered(&self, event_id: &str, now: Timestamp) -> PortResult<()> {
        self.count("webhook_delivered");
        self.inner.webhook_delivered(event_id, now).await
    }

    async fn webhook_failed(
        &self,
        event_id: &str,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> PortResult<()> {
        self.count("webhook_failed");
        self.inner
            .webhook_failed(event_id, next_attempt_at, error)
            .await
    }

    async fn webhook_backlog(&self) -> PortResult<(i64, Option<Timestamp>)> {
        self.count("webhook_backlog");
        self.inner.webhook_backlog().await
    }
}

#[async_trait]
impl Audit for CountedStore {
    async fn append_audits(&self, entries: &[AuditEntry]) -> PortResult<()> {
        self.count("append_audits");
        self.inner.append_audits(entries).await
    }

    async fn audit(&self, filter: &AuditFilter) -> PortResult<Vec<AuditEntry>> {
        self.count("audit");
        self.inner.audit(filter).await
    }
}

#[async_trait]
impl AdminReads for CountedStore {
    async fn stock_audit(&self, sale: &SaleId) -> PortResult<Option<StockAudit>> {
        self.count("stock_audit");
        self.inner.stock_audit(sale).await
    }

    async fn gate_seeds(&self) -> PortResult<Vec<GateSeed>> {
        self.count("gate_seeds");
        self.inner.gate_seeds().await
    }
}

#[async_trait]
impl Store for CountedStore {
    async fn migrate(&self) -> PortResult<()> {
        self.count("migrate");
        self.inner.migrate().await
    }

    async fn ping(&self) -> PortResult<()> {
        self.count("ping");
        self.inner.ping().await
    }

    /// A batch of the outbox relay's steps alone is background work, counted as the calls it
    /// stands for; any other batch is one `write_checkouts`.
    async fn write_checkouts(&self, items: &[CheckoutWrite]) -> Vec<PortResult<CheckoutWritten>> {
        let relay_step = |w: &CheckoutWrite| match w {
            CheckoutWrite::OutboxClaim(_) => Some("outbox_claim"),
            CheckoutWrite::OutboxDelivered(_) => Some("outbox_delivered"),
            _ => None,
        };
        let relay: Option<Vec<&'static str>> = items.iter().map(relay_step).collect();
        match relay {
            Some(ops) if !ops.is_empty() => ops.into_iter().for_each(|op| self.count(op)),
            _ => self.count("write_checkouts"),
        }
        self.inner.write_checkouts(items).await
    }
}
