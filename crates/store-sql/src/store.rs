//! The store written once: [`SqlStore`] implements every role of the `Store` port and the
//! `RoomLog` port over either engine, and asks its [`Backend`] only for what that engine does
//! its own way (its pools, its migrations, how it writes a group-commit batch of reservations
//! or of waiting-room entries). Each method here is one call into the shared SQL modules.

use async_trait::async_trait;
use sqlx::Pool;

use stampede_app::ports::{
    write_each_kind, Accounts, AdminReads, Audit, AuditEntry, AuditFilter, Browse, Cancelled,
    Catalog, CheckoutError, CheckoutWrite, CheckoutWritten, Credentials, GateSeed, HoldError,
    Holds, IdempotencyAnswer, IdempotencyClaim, IdempotencyStart, LapsedHolder, NewOrder,
    Notification, Orders, Outbox, OutboxEvent, OwedDone, OwedPayment, PaymentAnswer,
    PaymentApplied, PortError, PortResult, ReserveRequest, RoomLog, Session, StockAudit, Store,
    User, UserAccount, UserStatus, WebhookDelivery,
};
use stampede_core::judge::Refusal;
use stampede_core::waiting_line::LoggedEntry;
use stampede_core::{
    DropEvent, DropId, Hold, HoldId, Order, OrderId, OrderStatus, Product, ProductId, Sale, SaleId,
    Timestamp, UserId,
};

use crate::engine::{each_in_one, statement, Engine, Run};
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

/// Implements a role of the store as calls of the shared SQL: each line names the pool a
/// method runs on (`writer` for writes and read-modify-write transactions, `reader` for pure
/// reads), its signature, and the function that does the work (with any arguments of its own
/// after the method's). Anything else is written out after the table.
macro_rules! forward {
    ($role:ident {
        $($pool:ident $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty
            = $f:path $(, $own_arg:expr)*;)*
    } $($own:tt)*) => {
        #[async_trait]
        impl<B: Backend> $role for SqlStore<B> {
            $(async fn $name(&self, $($arg: $ty),*) -> PortResult<$ret> {
                $f(self.0.$pool() $(, $arg)* $(, $own_arg)*).await
            })*
            $($own)*
        }
    };
}

forward!(Accounts {
    writer insert_user(user: &User, password_hash: &str) -> bool = users::insert;
    writer upsert_admin(user: &User, password_hash: &str) -> User = users::upsert_admin;
    reader credentials_by_email(email: &str) -> Option<Credentials> = users::credentials;
    reader user(id: &UserId) -> Option<User> = users::by_id;
    writer insert_session(session: &Session, created_at: Timestamp) -> bool = users::insert_session;
    reader session(session_id: &str) -> Option<Session> = users::session;
    writer delete_session(session_id: &str) -> bool = users::delete_session;
    reader revoked_sessions(now: Timestamp) -> Vec<(String, Timestamp)> = users::revoked_sessions;
    writer shared_secret(name: &str, candidate: &str) -> String = users::shared_secret;
    writer set_user_status(user: &UserId, status: UserStatus, reason: &str)
        -> Option<Vec<(String, Timestamp)>> = users::set_status;
    reader account(user: &UserId) -> Option<UserAccount> = users::account_by_id;
    reader accounts(query: &str, after: Option<&UserId>, limit: u32) -> Vec<UserAccount>
        = users::accounts;
});

forward!(Catalog {
    writer insert_sale(sale: &Sale) -> () = sales::insert;
    writer update_sale(sale: &Sale) -> bool = sales::update;
    reader sale(id: &SaleId) -> Option<Sale> = sales::by_id;
    reader sales() -> Vec<Sale> = sales::all;
    reader browse_sales(browse: &Browse) -> Vec<Sale> = catalog::browse_sales;
    writer insert_product(product: &Product) -> () = catalog::insert_product;
    writer update_product(product: &Product) -> bool = catalog::put_product, false;
    reader product(id: &ProductId) -> Option<Product> = catalog::product_by_id;
    reader products(browse: &Browse) -> Vec<Product> = catalog::browse_products;
    writer insert_drop(drop: &DropEvent) -> () = catalog::insert_drop;
    writer update_drop(drop: &DropEvent) -> bool = catalog::put_drop, false;
    reader drop_event(id: &DropId) -> Option<DropEvent> = catalog::drop_by_id;
    reader drops(browse: &Browse) -> Vec<DropEvent> = catalog::browse_drops;
});

forward!(Holds {
    writer reserve(batch: &[ReserveRequest]) -> Vec<Result<Hold, Refusal>> = holds::reserve;
    reader live_holds(user: &UserId, now: Timestamp) -> Vec<Hold> = holds::live;
    writer release_hold(user: &UserId, hold: &HoldId, now: Timestamp)
        -> Result<Hold, HoldError> = holds::release;
    writer resize_hold(user: &UserId, hold: &HoldId, quantity: u32, now: Timestamp)
        -> Result<Hold, HoldError> = holds::resize;
    writer expire_due_holds(now: Timestamp, limit: u32) -> Vec<Hold> = holds::expire_due;
    writer warn_expiring_holds(now: Timestamp, within_ms: i64, limit: u32) -> usize
        = holds::warn_expiring;
    reader lapsed_holders(min_lapsed: u32, limit: u32)
        -> (Vec<LapsedHolder>, Vec<LapsedHolder>) = hold_cap::lapsed_holders;
});

forward!(Orders {
    reader payments_owed(limit: u32) -> Vec<OwedPayment> = orders::owed;
    reader stuck_orders(unanswered_before: Timestamp, deadline_before: Timestamp, limit: u32)
        -> Vec<Order> = orders::stuck;
    reader order_by_payment_reference(reference: &str) -> Option<Order>
        = orders::by_payment_reference;
    reader order(user: &UserId, order: &OrderId) -> Option<Order> = orders::own;
    reader orders(user: &UserId) -> Vec<Order> = orders::of_user;
    writer cancel_order(user: &UserId, order: &OrderId, now: Timestamp)
        -> Option<Result<Cancelled, OrderStatus>> = orders::cancel;
    writer idempotency_abandon(user: &UserId, key: &str) -> () = misc::idempotency_abandon;
    reader webhook_event_seen(event_id: &str) -> bool = misc::webhook_event_seen;
    writer record_webhook_event(event_id: &str, now: Timestamp) -> bool
        = misc::record_webhook_event;
}
    async fn create_orders(
        &self,
        orders: &[NewOrder],
    ) -> Vec<PortResult<Result<Order, CheckoutError>>> {
        orders::create_many(self.0.writer(), orders).await
    }

    async fn apply_payments(
        &self,
        answers: &[PaymentAnswer],
    ) -> Vec<PortResult<Option<PaymentApplied>>> {
        orders::apply_payments(self.0.writer(), answers).await
    }

    async fn payments_owed_done(&self, moves: &[OwedDone]) -> Vec<PortResult<bool>> {
        orders::owed_done_many(self.0.writer(), moves).await
    }

    async fn idempotency_starts(
        &self,
        claims: &[IdempotencyClaim],
    ) -> Vec<PortResult<IdempotencyStart>> {
        each_in_one(self.0.writer(), claims).await
    }

    async fn idempotency_finishes(&self, answers: &[IdempotencyAnswer]) -> Vec<PortResult<()>> {
        each_in_one(self.0.writer(), answers).await
    }
);

forward!(Outbox {
    reader notifications(user: &UserId, after: Option<&str>, limit: u32) -> Vec<Notification>
        = misc::notifications;
    writer outbox_claim(now: Timestamp, lease_ms: i64, limit: u32) -> Vec<OutboxEvent>
        = outbox::claim;
    writer outbox_delivered(ids: &[String]) -> () = outbox::delivered;
    writer outbox_release(ids: &[String]) -> () = outbox::release;
    reader outbox_backlog() -> (i64, Option<Timestamp>) = outbox::waiting, "outbox";
    writer webhook_enqueue(event: &OutboxEvent, now: Timestamp) -> bool = webhooks::enqueue;
    writer webhook_claim(now: Timestamp, lease_ms: i64, limit: u32) -> Vec<WebhookDelivery>
        = webhooks::claim;
    writer webhook_delivered(event_id: &str, now: Timestamp) -> () = webhooks::delivered;
    writer webhook_failed(event_id: &str, next_attempt_at: Timestamp, error: &str) -> ()
        = webhooks::failed;
    reader webhook_backlog() -> (i64, Option<Timestamp>) = outbox::waiting, "webhook_deliveries";
}
    async fn append_notifications(&self, notifications: &[Notification]) -> Vec<PortResult<bool>> {
        each_in_one(self.0.writer(), notifications).await
    }
);

forward!(Audit {
    writer append_audits(entries: &[AuditEntry]) -> () = misc::append_audits;
    reader audit(filter: &AuditFilter) -> Vec<AuditEntry> = misc::audit;
});

forward!(AdminReads {
    reader stock_audit(sale: &SaleId) -> Option<StockAudit> = report::stock_audit;
    reader gate_seeds() -> Vec<GateSeed> = report::gate_seeds;
});

forward!(Store {}
    async fn migrate(&self) -> PortResult<()> {
        self.0.migrate().await
    }

    async fn ping(&self) -> PortResult<()> {
        let ping = statement::<B::DB>("SELECT 1").first_in(self.0.reader());
        ping.await.map(|_| ())
    }

    /// With one writer, every step waiting shares a transaction. With a pool, each kind is its
    /// own batch call and the kinds commit side by side, except the keyed orders: a claim and
    /// its order share a transaction of their own (one commit for both, both or neither).
    async fn write_checkouts(&self, items: &[CheckoutWrite]) -> Vec<PortResult<CheckoutWritten>> {
        if <B::DB as Engine>::ONE_WRITER {
            return each_in_one(self.0.writer(), items).await;
        }
        let is_keyed = |w: &CheckoutWrite| matches!(w, CheckoutWrite::KeyedOrder(_));
        if !items.iter().any(is_keyed) {
            return write_each_kind(self, items).await;
        }
        let (keyed, rest): (Vec<_>, Vec<_>) = items
            .iter()
            .cloned()
            .enumerate()
            .partition(|(_, w)| is_keyed(w));
        let (keyed_at, keyed): (Vec<usize>, Vec<CheckoutWrite>) = keyed.into_iter().unzip();
        let (rest_at, rest): (Vec<usize>, Vec<CheckoutWrite>) = rest.into_iter().unzip();
        let (keyed_done, rest_done) = futures::join!(
            each_in_one(self.0.writer(), &keyed),
            write_each_kind(self, &rest)
        );
        let mut answers: Vec<Option<PortResult<CheckoutWritten>>> =
            std::iter::repeat_with(|| None).take(items.len()).collect();
        let placed = keyed_at.into_iter().zip(keyed_done);
        for (i, answer) in placed.chain(rest_at.into_iter().zip(rest_done)) {
            answers[i] = Some(answer);
        }
        let lost = || Err(PortError::internal("a checkout write went unanswered"));
        answers.into_iter().map(|a| a.unwrap_or_else(lost)).collect()
    }
);

forward!(RoomLog {
    writer append_entries(batch: &[(SaleId, LoggedEntry)]) -> () = room_log::append;
    reader entries(sale: &SaleId, cursor: i64, limit: u32) -> (Vec<LoggedEntry>, i64)
        = room_log::entries;
    writer put_value(scope: &str, key: &str, value: &str) -> () = room_log::put_value;
    reader values(scope: &str) -> Vec<(String, String)> = room_log::values;
});
