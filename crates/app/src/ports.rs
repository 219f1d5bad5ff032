//! The ports: what the use cases need from the outside world, as traits. Adapters (embedded
//! SQLite + in-process gate, or PostgreSQL + Redis + RabbitMQ) implement them; the use cases
//! never know which ones they run on.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use stampede_core::draw::DrawPurpose;
use stampede_core::judge::{HoldCap, Refusal};
use stampede_core::waiting_line::{
    Admitted, ClaimRefusal, EntryView, JoinRefusal, LineStats, LoggedEntry,
};
use stampede_core::{
    Currency, DropEvent, DropId, Hold, HoldId, Money, Order, OrderId, OrderStatus, PaymentId,
    Product, ProductId, ProductStatus, Sale, SaleId, SaleStatus, StockLevels, Timestamp, UserId,
};

/// A failure of an adapter itself (not a business refusal): the store or a service is down or
/// broke. Mapped to 503 or 500; the detail is logged, never shown to clients. When a client
/// library reported it (sqlx, redis, lapin, reqwest), its error is kept as the `source`, so a
/// log line shows the whole chain rather than a flattened string.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Could not reach the backing service, or it timed out: worth a retry later.
    #[error("unavailable: {what}")]
    Unavailable {
        /// What failed, in the adapter's words.
        what: String,
        /// The client library's error, if one was the cause.
        source: Option<Cause>,
    },
    /// Anything else that went wrong inside the adapter.
    #[error("internal: {what}")]
    Internal {
        /// What failed, in the adapter's words.
        what: String,
        /// The client library's error, if one was the cause.
        source: Option<Cause>,
    },
    /// A shared waiting room does not hold this sale's line (it was flushed or restarted
    /// empty): rebuild it from the log ([`WaitingRoom::restore`]) and ask again.
    #[error("the waiting room does not hold this sale's line")]
    RoomNotLoaded,
}

/// The message (context, then the cause's own words) and the cause kept whole.
fn caused(
    what: String,
    source: impl std::error::Error + Send + Sync + 'static,
) -> (String, Option<Cause>) {
    let what = if what.is_empty() {
        source.to_string()
    } else {
        format!("{what}: {source}")
    };
    (what, Some(Box::new(source)))
}

/// The error a client library reported, kept whole under a [`PortError`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl PortError {
    /// Not reachable now, found by the adapter itself.
    pub fn unavailable(what: impl Into<String>) -> Self {
        Self::Unavailable {
            what: what.into(),
            source: None,
        }
    }

    /// A broken expectation found by the adapter itself (a bug, never the client's fault).
    pub fn internal(what: impl Into<String>) -> Self {
        Self::Internal {
            what: what.into(),
            source: None,
        }
    }

    /// Not reachable now, as a client library reported: `what` is the adapter's context
    /// (may be empty); the message shows the cause too, and the cause itself stays the `source`.
    pub fn unavailable_because(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let (what, source) = caused(what.into(), source);
        Self::Unavailable { what, source }
    }

    /// Failed inside a client library for a reason a retry will not cure (`what` as above).
    pub fn internal_because(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let (what, source) = caused(what.into(), source);
        Self::Internal { what, source }
    }

    /// Worth a retry later: the service is down, slow or has not got the data yet.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Result of a port call.
pub type PortResult<T> = Result<T, PortError>;

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Buyer,
    Admin,
}

impl Role {
    /// The stored and wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Buyer => "buyer",
            Role::Admin => "admin",
        }
    }

    /// Parses the stored word.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "buyer" => Some(Role::Buyer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A user as everybody but the login path sees it (no password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    /// Lower-cased and trimmed; unique.
    pub email: String,
    pub name: String,
    pub role: Role,
    pub created_at: Timestamp,
}

/// Whether an account may be used. A disabled or banned account cannot log in, and changing
/// to either ends its sessions at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Disabled,
    Banned,
}

impl UserStatus {
    /// The stored and wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Disabled => "disabled",
            UserStatus::Banned => "banned",
        }
    }

    /// Parses the stored word.
    pub fn parse(s: &str) -> Option<UserStatus> {
        match s {
            "active" => Some(UserStatus::Active),
            "disabled" => Some(UserStatus::Disabled),
            "banned" => Some(UserStatus::Banned),
            _ => None,
        }
    }
}

/// An account as an admin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAccount {
    pub user: User,
    pub status: UserStatus,
    /// Why it was disabled or banned (kept after it is lifted).
    pub status_reason: String,
}

/// A case-insensitive `LIKE` pattern (escape character `\`) matching text that contains
/// `query` literally: its `%`, `_` and `\` match only themselves. Compare it with `lower(…)`.
pub fn contains_pattern(query: &str) -> String {
    let escaped = query
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// A browse of sales, drops or products: every filter optional, results in id order (ids are
/// ULIDs, so that is creation order) after the cursor `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Browse {
    /// Exact category; `None`: any.
    pub category: Option<String>,
    /// Sale or drop statuses at `now`; empty: any.
    pub statuses: Vec<SaleStatus>,
    /// Product statuses (products only); empty: any.
    pub product_statuses: Vec<ProductStatus>,
    /// Words from [`stampede_core::search_words`]: each must start a word of the name
    /// ([`stampede_core::name_matches`] is the rule); empty: no text filter.
    pub words: Vec<String>,
    /// Only this drop's sales (sales only).
    pub drop_id: Option<DropId>,
    /// The last id of the previous page.
    pub after: Option<String>,
    pub limit: u32,
    /// The instant statuses are judged at.
    pub now: Timestamp,
}

impl Browse {
    /// Everything, first page of `limit`, statuses judged at `now`.
    pub fn all(limit: u32, now: Timestamp) -> Self {
        Self {
            category: None,
            statuses: Vec::new(),
            product_statuses: Vec::new(),
            words: Vec::new(),
            drop_id: None,
            after: None,
            limit,
            now,
        }
    }
}

/// A user with the PHC-format argon2id hash of their password: only the login path sees this.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

/// A live login. The token is signed and never stored: the row names its session id, so an
/// admin can end a buyer's sessions and every node can learn which ids were revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub session_id: String,
    pub user_id: UserId,
    pub role: Role,
    pub expires_at: Timestamp,
}

/// One buyer's request for units, as queued for the group commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    /// Chosen by the caller so a retry after a lost reply can be recognised.
    pub hold_id: HoldId,
    pub sale_id: SaleId,
    pub user_id: UserId,
    pub quantity: u32,
    /// The judge's clock reading for this batch: decides liveness and the hold's expiry.
    pub now: Timestamp,
    /// The device the buyer reserves from (`X-Device-Id`), if known: kept on the hold and
    /// counted by the hold cap's per-device figure.
    pub device_id: Option<String>,
    /// The denial-of-inventory guard the judge applies to this request
    /// (`stampede_core::judge::judge_hold_cap`), counted in the same transaction as the stock.
    pub hold_cap: HoldCap,
}

/// An account or a device whose holds lapsed unpaid again and again: a likely hoarder
/// (OWASP OAT-021, denial of inventory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LapsedHolder {
    /// The account's user id, or the device id.
    pub subject: String,
    /// Holds that lapsed unpaid.
    pub lapsed: u64,
    /// When the latest of them lapsed.
    pub last_lapsed_at: Timestamp,
    /// The accounts those holds belonged to (for an account: itself).
    pub accounts: Vec<UserId>,
}

/// Why a hold could not be changed or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    /// No such hold for this user (another user's hold is also "not found").
    #[error("hold not found")]
    NotFound,
    /// The hold has ended or its time ran out.
    #[error("hold expired")]
    Expired,
    /// The hold is being paid for by a pending order.
    #[error("hold is in a pending order")]
    InPendingOrder,
    /// Growing the hold was refused by the judge.
    #[error(transparent)]
    Refused(#[from] Refusal),
}

pub use stampede_core::checkout::{CheckoutError, GatewayOwed, NewOrder, PaymentResult};

/// A payment whose money move is still owed to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedPayment {
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    /// The gateway's reference the move applies to.
    pub reference: String,
    pub owed: GatewayOwed,
}

/// A gateway's answer for an order, as [`Orders::apply_payments`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentAnswer {
    pub order: OrderId,
    pub result: PaymentResult,
    pub now: Timestamp,
    /// Audit entries written in the same transaction (the authorization's).
    pub audit: Vec<AuditEntry>,
}

/// A money move the gateway acknowledged ([`Orders::payment_owed_done`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedDone {
    pub payment: PaymentId,
    pub done: GatewayOwed,
    pub next: Option<GatewayOwed>,
    pub now: Timestamp,
    /// Audit entries written in the same transaction (the move's).
    pub audit: Vec<AuditEntry>,
}

/// A claim of an idempotency key ([`Orders::idempotency_start`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub user: UserId,
    pub key: String,
    pub request_hash: String,
    pub now: Timestamp,
    pub lease_ms: i64,
    pub ids: CheckoutIds,
}

/// The answer stored for a claimed key ([`Orders::idempotency_finish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyAnswer {
    pub user: UserId,
    pub key: String,
    pub status: u16,
    pub body: String,
}

/// One write of a checkout's steps (or a notification the relay derives from one), as
/// [`Store::write_checkouts`] takes them: a checkout passes through several of these kinds, and
/// a store with one writer commits whatever is waiting, of every kind, together.
#[derive(Debug, Clone)]
pub enum CheckoutWrite {
    Order(NewOrder),
    Payment(PaymentAnswer),
    OwedDone(OwedDone),
    Claim(IdempotencyClaim),
    Answer(IdempotencyAnswer),
    Notice(Notification),
    KeyedOrder(Box<KeyedOrder>),
    /// The outbox relay's lease of waiting events ([`Outbox::outbox_claim`]).
    OutboxClaim(OutboxLease),
    /// Events the relay delivered ([`Outbox::outbox_delivered`]).
    OutboxDelivered(Vec<String>),
}

/// A lease the outbox relay asks for: up to `limit` waiting events whose lease has lapsed at
/// `now`, each leased for `lease_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLease {
    pub now: Timestamp,
    pub lease_ms: i64,
    pub limit: u32,
}

/// A keyed checkout's first two steps as one write: the key's claim and, only if the claim is
/// new, the order it stands for, created under the claim's ids. A store that can commits both
/// at once, so a keyed checkout waits on one commit before the gateway instead of two, and a
/// crash leaves both or neither.
#[derive(Debug, Clone)]
pub struct KeyedOrder {
    pub claim: IdempotencyClaim,
    pub order: NewOrder,
}

impl KeyedOrder {
    /// The order to create after the claim answered `start`: only for a new claim (a resumed
    /// one may have its order already; the caller looks), under the claim's ids.
    pub fn order_after(&self, start: &IdempotencyStart) -> Option<NewOrder> {
        match start {
            IdempotencyStart::Proceed {
                ids,
                resumed: false,
            } => Some(NewOrder {
                order_id: ids.order_id.clone(),
                payment_id: ids.payment_id.clone(),
                ..self.order.clone()
            }),
            _ => None,
        }
    }
}

/// What a [`CheckoutWrite`] tells its caller: the answer its own batch call gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutWritten {
    Order(Result<Order, CheckoutError>),
    Payment(Option<PaymentApplied>),
    OwedDone(bool),
    Claim(IdempotencyStart),
    Answer,
    Notice(bool),
    /// The claim's answer, and the order's if the claim was new.
    KeyedOrder(IdempotencyStart, Option<Result<Order, CheckoutError>>),
    /// The events leased, oldest first.
    OutboxClaimed(Vec<OutboxEvent>),
    OutboxDelivered,
}

/// [`Store::write_checkouts`] as each kind's own batch call, the kinds side by side (for a
/// store whose writers commit concurrently, such as PostgreSQL's pool): the answers in the
/// order of `items`.
pub async fn write_each_kind<S: Store + ?Sized>(
    store: &S,
    items: &[CheckoutWrite],
) -> Vec<PortResult<CheckoutWritten>> {
    use CheckoutWrite as W;
    use CheckoutWritten as A;
    macro_rules! kind {
        ($variant:ident) => {
            items
                .iter()
                .filter_map(|i| match i {
                    W::$variant(x) => Some(x.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
    }
    let (orders, payments, owed) = (kind!(Order), kind!(Payment), kind!(OwedDone));
    let (claims, answers, notices) = (kind!(Claim), kind!(Answer), kind!(Notice));
    let keyed = kind!(KeyedOrder);
    // Each kind's batch call, skipped when the batch has none of that kind.
    macro_rules! call {
        ($items:ident, $method:ident) => {
            async {
                match $items.is_empty() {
                    true => Vec::new(),
                    false => store.$method(&$items).await,
                }
            }
        };
    }
    let (o, p, d, c, a, n, k, r) = futures::join!(
        call!(orders, create_orders),
        call!(payments, apply_payments),
        call!(owed, payments_owed_done),
        call!(claims, idempotency_starts),
        call!(answers, idempotency_finishes),
        call!(notices, append_notifications),
        claims_then_orders(store, &keyed),
        outbox_steps(store, items),
    );
    let (mut k, mut r) = (k.into_iter(), r.into_iter());
    let (mut o, mut p, mut d) = (o.into_iter(), p.into_iter(), d.into_iter());
    let (mut c, mut a, mut n) = (c.into_iter(), a.into_iter(), n.into_iter());
    let missing = || Err(PortError::internal("a batch call gave too few answers"));
    items
        .iter()
        .map(|item| match item {
            W::Order(_) => o.next().map_or_else(missing, |r| r.map(A::Order)),
            W::Payment(_) => p.next().map_or_else(missing, |r| r.map(A::Payment)),
            W::OwedDone(_) => d.next().map_or_else(missing, |r| r.map(A::OwedDone)),
            W::Claim(_) => c.next().map_or_else(missing, |r| r.map(A::Claim)),
            W::Answer(_) => a.next().map_or_else(missing, |r| r.map(|()| A::Answer)),
            W::Notice(_) => n.next().map_or_else(missing, |r| r.map(A::Notice)),
            W::KeyedOrder(_) => k.next().unwrap_or_else(missing),
            W::OutboxClaim(_) | W::OutboxDelivered(_) => r.next().unwrap_or_else(missing),
        })
        .collect()
}

/// The outbox relay's steps among `items`, one after another in their order (a relay makes one
/// at a time).
async fn outbox_steps<S: Store + ?Sized>(
    store: &S,
    items: &[CheckoutWrite],
) -> Vec<PortResult<CheckoutWritten>> {
    let mut done = Vec::new();
    for item in items {
        done.push(match item {
            CheckoutWrite::OutboxClaim(l) => store
                .outbox_claim(l.now, l.lease_ms, l.limit)
                .await
                .map(CheckoutWritten::OutboxClaimed),
            CheckoutWrite::OutboxDelivered(ids) => store
                .outbox_delivered(ids)
                .await
                .map(|()| CheckoutWritten::OutboxDelivered),
            _ => continue,
        });
    }
    done
}

/// Keyed orders as two batch calls, one after the other: the claims, then the orders of the
/// new ones (two commits; a store with one transaction for both overrides
/// [`Store::write_checkouts`]).
async fn claims_then_orders<S: Store + ?Sized>(
    store: &S,
    keyed: &[Box<KeyedOrder>],
) -> Vec<PortResult<CheckoutWritten>> {
    if keyed.is_empty() {
        return Vec::new();
    }
    let claims: Vec<IdempotencyClaim> = keyed.iter().map(|k| k.claim.clone()).collect();
    let starts = store.idempotency_starts(&claims).await;
    let orders: Vec<NewOrder> = keyed
        .iter()
        .zip(&starts)
        .filter_map(|(k, start)| k.order_after(start.as_ref().ok()?))
        .collect();
    let mut created = match orders.is_empty() {
        true => Vec::new(),
        false => store.create_orders(&orders).await,
    }
    .into_iter();
    let missing = || Err(PortError::internal("a batch call gave too few answers"));
    keyed
        .iter()
        .zip(starts)
        .map(|(k, start)| {
            let start = start?;
            let order = match k.order_after(&start) {
                Some(_) => Some(created.next().unwrap_or_else(missing)?),
                None => None,
            };
            Ok(CheckoutWritten::KeyedOrder(start, order))
        })
        .collect()
}

/// The one answer a batch call of one item gives.
pub fn only<R>(mut answers: Vec<PortResult<R>>) -> PortResult<R> {
    match (answers.pop(), answers.is_empty()) {
        (Some(answer), true) => answer,
        _ => Err(PortError::internal(
            "a batch of one gave other than one answer",
        )),
    }
}

/// What recording a payment result did to the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentApplied {
    /// The order is now as returned.
    Done(Order),
    /// Authorized after a hold had lapsed, and its stock was still there and taken again: the
    /// order is confirmed, and the gate's counts of these sales must follow the judge (only
    /// these: nothing else moved).
    Retook { order: Order, sales: Vec<SaleId> },
    /// Authorized, but a hold had lapsed and its stock was gone: the order is `payment_failed`
    /// with reason `hold_expired` and the payment must be voided (or refunded) at the gateway.
    HoldLapsed(Order),
    /// The order had already left `pending_payment` (a replayed or late event): nothing changed.
    AlreadySettled(Order),
}

/// What cancelling an order did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// A paid order was refunded: the caller does `owed` at the gateway for `reference` (a
    /// refund, or a capture then a refund if the capture was still owed).
    Refunded {
        order: Order,
        reference: String,
        owed: GatewayOwed,
    },
    /// An unpaid order was cancelled and its holds let go of the order.
    Cancelled(Order),
}

/// The ids a keyed checkout creates its order and payment under, fixed by the key's first
/// claim: a retry after a crash finds the order the first attempt made (if it committed) and
/// asks the gateway again under the same order, so nobody is charged twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutIds {
    pub order_id: OrderId,
    pub payment_id: PaymentId,
}

/// Result of starting an idempotent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyStart {
    /// Go ahead under `ids`, then call `idempotency_finish`. `resumed`: the key's earlier
    /// claim lapsed unanswered (its process died, or outlived the lease), so its work may be
    /// partly done under these same ids.
    Proceed { ids: CheckoutIds, resumed: bool },
    /// Same key, same request, already answered: replay this.
    Replay { status: u16, body: String },
    /// Same key, another request body.
    Mismatch,
    /// Same key, still being worked on by another request.
    InProgress,
}

/// An audit log entry to append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: String,
    pub at: Timestamp,
    /// The acting user's id, or "system".
    pub actor: String,
    /// e.g. `sale.create`, `sale.pause`, `payment.capture`.
    pub action: String,
    /// The id of what was acted on.
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// Filters for reading the audit log, oldest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Entries with id strictly greater than this (ids sort by time).
    pub after: Option<String>,
    pub limit: u32,
}

/// What an order event reports: the outbox event's kind, and the kind of the notification
/// and the shop's webhook it becomes. The stored and wire word is [`EventKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An order was paid and confirmed.
    OrderConfirmed,
    /// An order's payment failed (declined, lapsed, abandoned).
    PaymentFailed,
    /// A live hold is about to lapse.
    HoldExpiring,
    /// The waiting room let the buyer in: their admission window has started.
    QueueAdmitted,
}

impl EventKind {
    /// The stored and wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::OrderConfirmed => "order_confirmed",
            EventKind::PaymentFailed => "payment_failed",
            EventKind::HoldExpiring => "hold_expiring",
            EventKind::QueueAdmitted => "queue_admitted",
        }
    }

    /// Reads a stored word.
    pub fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "order_confirmed" => EventKind::OrderConfirmed,
            "payment_failed" => EventKind::PaymentFailed,
            "hold_expiring" => EventKind::HoldExpiring,
            "queue_admitted" => EventKind::QueueAdmitted,
            _ => return None,
        })
    }
}

/// One message in a buyer's in-app feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// A ULID: sorts by time, and is the paging cursor.
    pub id: String,
    pub user_id: UserId,
    pub kind: EventKind,
    pub created_at: Timestamp,
    pub data: serde_json::Value,
}

/// Something that happened to a buyer's order, written by the store in the SAME transaction
/// as the change it reports (the transactional outbox), so a crash between the two cannot
/// lose it. Delivered at least once by the relay; its effect (a notification whose id is the
/// event's id) is applied once.
///
/// Written by `apply_payment` when an order becomes `confirmed` (kind `order_confirmed`,
/// data `{order_id, total, currency}`) or `payment_failed` (kind `payment_failed`, data
/// `{order_id, reason}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// A ULID: sorts by time; consumers de-duplicate by it.
    pub id: String,
    pub user_id: UserId,
    pub kind: EventKind,
    pub created_at: Timestamp,
    pub data: serde_json::Value,
}

/// One outgoing webhook to the shop's own systems: an order event (the outbox event whose
/// effect is being applied) and the bookkeeping of its delivery. Kept in the store, not in
/// memory, so a crash or a restart loses no delivery and any node can take over a retry.
///
/// Delivery is at least once: the shop de-duplicates by `event_id` (also sent as the
/// `Stampede-Event-Id` header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// The outbox event's id (a ULID): the delivery's key and the shop's de-duplication key.
    pub event_id: String,
    /// Sent as the body's `type`.
    pub kind: EventKind,
    /// The buyer the event is about.
    pub user_id: UserId,
    /// The event's data, sent as the body's `data`.
    pub payload: serde_json::Value,
    /// When the event happened (not when it is sent).
    pub created_at: Timestamp,
    /// Attempts that have failed so far: drives the backoff of the next failure.
    pub attempts: u32,
    /// Not tried again before this time.
    pub next_attempt_at: Timestamp,
    /// Why the last attempt failed (for operators reading the table).
    pub last_error: Option<String>,
}

/// The judge's own accounting of one sale, for the metrics endpoint and the invariant check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StockAudit {
    /// The counters as stored on the sale.
    pub counters: StockLevels,
    /// `held` and `sold` recomputed from holds and orders (`available` = total - both).
    pub recomputed: StockLevels,
    /// Confirmed orders containing this sale.
    pub orders: i64,
    pub holds_expired: i64,
    /// Buyers whose held + sold units exceed the sale's limit (must be 0).
    pub users_over_limit: i64,
}

impl StockAudit {
    /// Both invariants: counters balanced, counters equal to what the rows say, no buyer over.
    pub fn invariant_ok(&self) -> bool {
        self.counters.check().is_ok()
            && self.recomputed.check().is_ok()
            && self.counters == self.recomputed
            && self.users_over_limit == 0
    }
}

/// What the gate needs to be rebuilt from the judge: for each sale its available units and the
/// units each buyer holds or owns (only buyers with units, so this is O(stock), not O(users)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateSeed {
    pub sale_id: SaleId,
    pub available: i64,
    pub user_units: Vec<(UserId, u32)>,
}

/// Accounts and sessions: who a buyer or admin is, and whether they may still act.
#[async_trait]
pub trait Accounts: Send + Sync + 'static {
    /// Inserts a user; `Ok(false)` if the email is taken.
    async fn insert_user(&self, user: &User, password_hash: &str) -> PortResult<bool>;
    /// Creates the admin with this email, or makes the existing user an admin with this
    /// password. Returns the user.
    async fn upsert_admin(&self, user: &User, password_hash: &str) -> PortResult<User>;
    async fn credentials_by_email(&self, email: &str) -> PortResult<Option<Credentials>>;
    async fn user(&self, id: &UserId) -> PortResult<Option<User>>;
    /// Stores a session if its account is active; `Ok(false)` (nothing stored) if it is not,
    /// decided atomically with a concurrent [`Accounts::set_user_status`].
    async fn insert_session(&self, session: &Session, created_at: Timestamp) -> PortResult<bool>;
    /// The session with this id, if it exists (expiry is the caller's to check).
    async fn session(&self, session_id: &str) -> PortResult<Option<Session>>;
    /// Ends a session early: deletes it and records its revocation (kept until its expiry) in
    /// one transaction; `Ok(false)` if there was none.
    async fn delete_session(&self, session_id: &str) -> PortResult<bool>;
    /// Sets an account's status and reason; unless it is active again, deletes its sessions
    /// and records their revocation in the same transaction. Returns the ended sessions' ids
    /// and expiries (so every node can refuse them at once), or `None` if there is no such
    /// user. Sessions of a non-active account are never returned by [`Accounts::session`] either.
    async fn set_user_status(
        &self,
        user: &UserId,
        status: UserStatus,
        reason: &str,
    ) -> PortResult<Option<Vec<(String, Timestamp)>>>;
    /// Sessions ended early (logout, a ban) whose tokens would still be valid at `now`, with
    /// their expiries: what a starting node must refuse.
    async fn revoked_sessions(&self, now: Timestamp) -> PortResult<Vec<(String, Timestamp)>>;
    /// The deployment's secret `name`, set to `candidate` if it has none yet (the first writer
    /// wins, so every node of a cluster ends up with the same value).
    async fn shared_secret(&self, name: &str, candidate: &str) -> PortResult<String>;
    /// One account with its status.
    async fn account(&self, user: &UserId) -> PortResult<Option<UserAccount>>;
    /// Accounts whose email or name contains `query` (case-insensitive; empty: all), by id,
    /// after the id `after`, at most `limit`.
    async fn accounts(
        &self,
        query: &str,
        after: Option<&UserId>,
        limit: u32,
    ) -> PortResult<Vec<UserAccount>>;
}

/// Catalog and sales: what is on sale, when, at what price, written by admins and read by everyone.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    async fn insert_sale(&self, sale: &Sale) -> PortResult<()>;
    /// Writes the sale's configuration (name … control, total). If `total` changed, `available`
    /// moves by the same amount; `Ok(false)` (nothing written) if that would make it negative
    /// or the sale does not exist.
    async fn update_sale(&self, sale: &Sale) -> PortResult<bool>;
    async fn sale(&self, id: &SaleId) -> PortResult<Option<Sale>>;
    /// Every sale, oldest first.
    async fn sales(&self) -> PortResult<Vec<Sale>>;
    /// Sales matching `browse`, by id, after its cursor, at most its limit.
    async fn browse_sales(&self, browse: &Browse) -> PortResult<Vec<Sale>>;
    async fn insert_product(&self, product: &Product) -> PortResult<()>;
    /// Writes every field but the id and `created_at`; `Ok(false)` if there is no such product.
    async fn update_product(&self, product: &Product) -> PortResult<bool>;
    async fn product(&self, id: &ProductId) -> PortResult<Option<Product>>;
    /// Products matching `browse` (its `product_statuses`, not `statuses`), by id.
    async fn products(&self, browse: &Browse) -> PortResult<Vec<Product>>;
    async fn insert_drop(&self, drop: &DropEvent) -> PortResult<()>;
    /// Writes every field but the id and `created_at`; `Ok(false)` if there is no such drop.
    async fn update_drop(&self, drop: &DropEvent) -> PortResult<bool>;
    async fn drop_event(&self, id: &DropId) -> PortResult<Option<DropEvent>>;
    /// Drops matching `browse`, by id.
    async fn drops(&self, browse: &Browse) -> PortResult<Vec<DropEvent>>;
}

/// Holds: the judge. Every unit a buyer holds was granted here, in a transaction that moved the stock counters with it.
#[async_trait]
pub trait Holds: Send + Sync + 'static {
    /// Judges a batch of reservations in ONE transaction (group commit): each in order gets
    /// its hold (committed when this returns) or the judge's refusal. The hold's price and
    /// expiry come from the sale row; `available` and the buyer's units are checked with
    /// `stampede_core::judge::judge_reserve`. A duplicate `hold_id` returns the existing hold.
    async fn reserve(&self, batch: &[ReserveRequest]) -> PortResult<Vec<Result<Hold, Refusal>>>;
    /// The buyer's holds that are active and not past expiry at `now`, oldest first.
    async fn live_holds(&self, user: &UserId, now: Timestamp) -> PortResult<Vec<Hold>>;
    /// Releases a live hold of this user: stock back to available at once.
    async fn release_hold(
        &self,
        user: &UserId,
        hold: &HoldId,
        now: Timestamp,
    ) -> PortResult<Result<Hold, HoldError>>;
    /// Changes a live hold's quantity (growth judged by `judge_resize`).
    async fn resize_hold(
        &self,
        user: &UserId,
        hold: &HoldId,
        quantity: u32,
        now: Timestamp,
    ) -> PortResult<Result<Hold, HoldError>>;
    /// Ends every active hold with `expires_at <= now` (at most `limit`) as expired, returns
    /// their stock, and returns them. Holds inside a pending order expire too (a late payment
    /// then retakes the stock if it can).
    async fn expire_due_holds(&self, now: Timestamp, limit: u32) -> PortResult<Vec<Hold>>;
    /// Finds live holds that lapse within `within_ms` of `now` and were not warned yet (at most
    /// `limit`), marks them warned and writes a `hold_expiring` outbox event for each (data
    /// `{hold_id, sale_id, quantity, seconds_left}`), all in one transaction: each buyer is
    /// warned once per hold, and a crash cannot lose or repeat a warning. Returns how many.
    async fn warn_expiring_holds(
        &self,
        now: Timestamp,
        within_ms: i64,
        limit: u32,
    ) -> PortResult<usize>;
    /// Accounts, then devices, with at least `min_lapsed` holds that lapsed unpaid (ended
    /// `expired`), most lapses first, at most `limit` of each: the hoarders' list.
    async fn lapsed_holders(
        &self,
        min_lapsed: u32,
        limit: u32,
    ) -> PortResult<(Vec<LapsedHolder>, Vec<LapsedHolder>)>;
}

/// Orders and payments: checkout, the payment's outcome, cancellation, the money moves still owed to the gateway, and the keys that make retries safe.
#[async_trait]
pub trait Orders: Send + Sync + 'static {
    /// Creates `pending_payment` orders over live holds of their buyers and marks the holds
    /// as in them: many checkouts share one commit (group commit), each answered on its own.
    async fn create_orders(
        &self,
        orders: &[NewOrder],
    ) -> Vec<PortResult<Result<Order, CheckoutError>>>;
    /// One order of [`Orders::create_orders`].
    async fn create_order(&self, order: &NewOrder) -> PortResult<Result<Order, CheckoutError>> {
        only(self.create_orders(std::slice::from_ref(order)).await)
    }
    /// Records the gateway's answers for `pending_payment` orders, each with its effect on
    /// holds and stock, many in one commit.
    async fn apply_payments(
        &self,
        answers: &[PaymentAnswer],
    ) -> Vec<PortResult<Option<PaymentApplied>>>;
    /// One answer of [`Orders::apply_payments`].
    async fn apply_payment(
        &self,
        order: &OrderId,
        result: &PaymentResult,
        now: Timestamp,
    ) -> PortResult<Option<PaymentApplied>> {
        let answer = PaymentAnswer {
            order: order.clone(),
            result: result.clone(),
            now,
            audit: Vec::new(),
        };
        only(self.apply_payments(std::slice::from_ref(&answer)).await)
    }
    /// Payments whose decided money move the gateway has not acknowledged yet (see
    /// [`GatewayOwed`]), oldest change first, at most `limit`. A payment without a reference
    /// owes nothing (there is nothing to move).
    async fn payments_owed(&self, limit: u32) -> PortResult<Vec<OwedPayment>>;
    /// Records that the gateway acknowledged `done` for this payment: the owed move becomes
    /// `next` (`None`: nothing more is owed). Guarded by `done` still being the owed move, so a
    /// racing finisher cannot undo a later decision. Returns whether it changed anything.
    async fn payment_owed_done(
        &self,
        payment: &PaymentId,
        done: GatewayOwed,
        next: Option<GatewayOwed>,
        now: Timestamp,
    ) -> PortResult<bool> {
        let done = OwedDone {
            payment: payment.clone(),
            done,
            next,
            now,
            audit: Vec::new(),
        };
        only(self.payments_owed_done(std::slice::from_ref(&done)).await)
    }
    /// [`Orders::payment_owed_done`] for many payments in one commit.
    async fn payments_owed_done(&self, moves: &[OwedDone]) -> Vec<PortResult<bool>>;
    /// `pending_payment` orders nobody will settle: those with no gateway reference created
    /// at or before `unanswered_before` (the authorization's answer was lost), and any created
    /// at or before `deadline_before`. Oldest first, at most `limit`.
    async fn stuck_orders(
        &self,
        unanswered_before: Timestamp,
        deadline_before: Timestamp,
        limit: u32,
    ) -> PortResult<Vec<Order>>;
    /// The order whose payment has this gateway reference.
    async fn order_by_payment_reference(&self, reference: &str) -> PortResult<Option<Order>>;
    /// The buyer's own order.
    async fn order(&self, user: &UserId, order: &OrderId) -> PortResult<Option<Order>>;
    /// The buyer's orders, newest first.
    async fn orders(&self, user: &UserId) -> PortResult<Vec<Order>>;
    /// Cancels the buyer's order: confirmed → refunded (units back to available), pending →
    /// cancelled (holds let go of it). `Ok(None)` if not found; `Err`-free conflict as
    /// `Some(Err(status))` with the order's current (final) status.
    async fn cancel_order(
        &self,
        user: &UserId,
        order: &OrderId,
        now: Timestamp,
    ) -> PortResult<Option<Result<Cancelled, OrderStatus>>>;
    /// Claims `(user, key)` for a request whose body hashes to `request_hash`, under `ids` if
    /// the key is new; an in-progress claim of the same request older than `lease_ms` counts as
    /// abandoned and is taken over under the ids it was first claimed with.
    async fn idempotency_start(
        &self,
        user: &UserId,
        key: &str,
        request_hash: &str,
        now: Timestamp,
        lease_ms: i64,
        ids: &CheckoutIds,
    ) -> PortResult<IdempotencyStart> {
        let claim = IdempotencyClaim {
            user: user.clone(),
            key: key.to_owned(),
            request_hash: request_hash.to_owned(),
            now,
            lease_ms,
            ids: ids.clone(),
        };
        only(self.idempotency_starts(std::slice::from_ref(&claim)).await)
    }
    /// [`Orders::idempotency_start`] for many keys in one commit.
    async fn idempotency_starts(
        &self,
        claims: &[IdempotencyClaim],
    ) -> Vec<PortResult<IdempotencyStart>>;
    /// Stores the answer for a claimed key.
    async fn idempotency_finish(
        &self,
        user: &UserId,
        key: &str,
        status: u16,
        body: &str,
    ) -> PortResult<()> {
        let answer = IdempotencyAnswer {
            user: user.clone(),
            key: key.to_owned(),
            status,
            body: body.to_owned(),
        };
        only(
            self.idempotency_finishes(std::slice::from_ref(&answer))
                .await,
        )
    }
    /// [`Orders::idempotency_finish`] for many keys in one commit.
    async fn idempotency_finishes(&self, answers: &[IdempotencyAnswer]) -> Vec<PortResult<()>>;
    /// Drops a claim whose request failed before any effect, so a retry can proceed.
    async fn idempotency_abandon(&self, user: &UserId, key: &str) -> PortResult<()>;
    /// Whether a webhook event id has been recorded.
    async fn webhook_event_seen(&self, event_id: &str) -> PortResult<bool>;
    /// Records a webhook event id; `Ok(false)` if it was seen before.
    async fn record_webhook_event(&self, event_id: &str, now: Timestamp) -> PortResult<bool>;
}

/// Outbox and webhooks: events committed with the state they describe, delivered at least once to the bus, the buyer's notifications and the shop's webhooks.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Adds a notification to the buyer's feed; `Ok(false)` (nothing written) if one with the
    /// same id exists, so a redelivered event takes effect once.
    async fn append_notification(&self, notification: &Notification) -> PortResult<bool> {
        only(
            self.append_notifications(std::slice::from_ref(notification))
                .await,
        )
    }
    /// [`Outbox::append_notification`] for many, in one commit.
    async fn append_notifications(&self, notifications: &[Notification]) -> Vec<PortResult<bool>>;
    /// The buyer's notifications added after the one with id `after` (all if `None` or
    /// unknown), in the order they were added, at most `limit`. Not by id: an event applied
    /// late carries an older id and must not land behind a reader's cursor.
    async fn notifications(
        &self,
        user: &UserId,
        after: Option<&str>,
        limit: u32,
    ) -> PortResult<Vec<Notification>>;
    /// Leases up to `limit` undelivered outbox events, oldest first, until `now + lease_ms`:
    /// another relay (on any node) skips them until the lease lapses, so relays never step
    /// on each other and a relay that dies mid-way is taken over.
    async fn outbox_claim(
        &self,
        now: Timestamp,
        lease_ms: i64,
        limit: u32,
    ) -> PortResult<Vec<OutboxEvent>>;
    /// Marks events delivered (the bus has confirmed them); they are never claimed again.
    async fn outbox_delivered(&self, ids: &[String]) -> PortResult<()>;
    /// Ends the lease of claimed events the bus did not take (it was down): the next claim,
    /// by any relay, gets them again at once rather than after the lease, so events flow as
    /// soon as the bus is back. Delivered events are left alone.
    async fn outbox_release(&self, ids: &[String]) -> PortResult<()>;
    /// How many events wait, and the `created_at` of the oldest (for the outbox-lag metric).
    async fn outbox_backlog(&self) -> PortResult<(i64, Option<Timestamp>)>;
    /// Queues the delivery of an order event to the shop, due at `now`. Idempotent per event
    /// id (`ON CONFLICT DO NOTHING`): the outbox delivers an event at least once, and a
    /// redelivery must not send the shop a second webhook. `Ok(false)` if it was queued before.
    async fn webhook_enqueue(&self, event: &OutboxEvent, now: Timestamp) -> PortResult<bool>;
    /// Leases up to `limit` due deliveries (undelivered, `next_attempt_at <= now`, lease
    /// lapsed), oldest first, until `now + lease_ms`: senders on other nodes (or workers) skip
    /// them meanwhile, so two never send the same delivery at once, and a sender that dies
    /// mid-way is taken over when the lease lapses.
    async fn webhook_claim(
        &self,
        now: Timestamp,
        lease_ms: i64,
        limit: u32,
    ) -> PortResult<Vec<WebhookDelivery>>;
    /// Marks a delivery done (the shop answered 2xx): it is never claimed again. Marking it
    /// again is harmless.
    async fn webhook_delivered(&self, event_id: &str, now: Timestamp) -> PortResult<()>;
    /// Records a failed attempt: one more attempt counted, the error kept, the lease cleared,
    /// and not due again before `next_attempt_at` (the caller's backoff).
    async fn webhook_failed(
        &self,
        event_id: &str,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> PortResult<()>;
    /// How many deliveries wait, and the `created_at` of the oldest (for the webhook-lag
    /// metric: a shop that is down shows as a growing lag, not as lost events).
    async fn webhook_backlog(&self) -> PortResult<(i64, Option<Timestamp>)>;
}

/// Audit: who changed what, kept for operators.
#[async_trait]
pub trait Audit: Send + Sync + 'static {
    /// Appends entries in one transaction (a group commit of whatever was waiting).
    async fn append_audits(&self, entries: &[AuditEntry]) -> PortResult<()>;
    async fn audit(&self, filter: &AuditFilter) -> PortResult<Vec<AuditEntry>>;
}

/// Admin reads: reconciliation figures recomputed from the rows, and what a gate is rebuilt from.
#[async_trait]
pub trait AdminReads: Send + Sync + 'static {
    /// The judge's accounting of a sale; `None` if it does not exist.
    async fn stock_audit(&self, sale: &SaleId) -> PortResult<Option<StockAudit>>;
    /// What the gate must be rebuilt to.
    async fn gate_seeds(&self) -> PortResult<Vec<GateSeed>>;
}

/// The durable system of record and the judge of every reservation. Whatever it commits is
/// acknowledged; its checks are what make overselling impossible even if the gate is wrong.
#[async_trait]
pub trait Store:
    Accounts + Catalog + Holds + Orders + Outbox + Audit + AdminReads + Send + Sync + 'static
{
    /// Applies schema migrations. Idempotent.
    async fn migrate(&self) -> PortResult<()>;
    /// Cheap liveness probe for `/readyz`.
    async fn ping(&self) -> PortResult<()>;
    /// Checkout steps of many buyers, of every kind, answered in order. A store with a single
    /// writer commits them in one transaction (one fsync for every step waiting, whatever its
    /// kind); by default each kind is its own batch call, the kinds concurrently.
    async fn write_checkouts(&self, items: &[CheckoutWrite]) -> Vec<PortResult<CheckoutWritten>> {
        write_each_kind(self, items).await
    }
}

/// The gate's answer: a cheap, possibly stale filter in front of the judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateVerdict {
    /// Units taken from the gate's counters: go on to the judge (and give them back if it
    /// refuses).
    Pass,
    SoldOut,
    LimitExceeded,
    /// The gate does not know this sale (a shared gate was flushed or restarted empty): seed
    /// it from the judge with [`Gate::seed`] and ask again.
    Unseeded,
    /// The buyer (or their device) is over the shared rate quota the gate counted in the same
    /// step ([`Gate::try_take_counted`]); nothing was taken.
    RateLimited {
        retry_after_ms: u64,
    },
}

/// The fast stock and limit filter in front of the judge. A request it refuses never reaches
/// the store. It may be wrong for a moment (undersell, healed by reconciliation) but the judge
/// still decides, so it can never cause an oversell.
#[async_trait]
pub trait Gate: Send + Sync + 'static {
    /// Takes `quantity` units for `user` if the sale has them and the user stays within `limit`.
    async fn try_take(
        &self,
        sale: &SaleId,
        user: &UserId,
        quantity: u32,
        limit: u32,
    ) -> PortResult<GateVerdict>;
    /// [`Gate::try_take`] for a reserve, which a gate shared by several nodes also counts
    /// against the buyer's and the device's shared rate quotas in the same step (so a reserve
    /// that reaches it costs one round trip, not one per quota). An in-process gate leaves rate
    /// limits to the node, which counts them anyway.
    async fn try_take_counted(
        &self,
        sale: &SaleId,
        user: &UserId,
        device: Option<&str>,
        quantity: u32,
        limit: u32,
    ) -> PortResult<GateVerdict> {
        let _ = device;
        self.try_take(sale, user, quantity, limit).await
    }
    /// Returns units: the judge refused, a hold was released or expired, an order refunded.
    async fn give_back(&self, sale: &SaleId, user: &UserId, quantity: u32) -> PortResult<()>;
    /// Brings the gate in line with the judge; returns the absolute drift repaired (units).
    /// An in-process gate replaces its view (the caller has quieted its in-flight pairs). A
    /// gate shared by several nodes cannot quiet the other nodes, so it repairs only drift
    /// that stayed put between two calls while the sale saw no gate traffic.
    async fn rebuild(&self, seeds: &[GateSeed]) -> PortResult<u64>;
    /// Sets a sale's counters from the judge only if the gate does not know the sale (several
    /// nodes may race to seed it after a flush: the first wins). Returns whether it wrote.
    async fn seed(&self, seed: &GateSeed) -> PortResult<bool>;
    /// The gate's idea of a sale's available units (for metrics and drift checks).
    async fn available(&self, sale: &SaleId) -> PortResult<Option<i64>>;
    /// Whether several nodes share this gate. A shared gate repairs drift only by
    /// compare-and-set on what it saw twice ([`Gate::rebuild`]), so nodes neither pause their
    /// reserves for reconciliation nor hold a lock across its network calls; a gate one node
    /// owns is rebuilt while that node's pairs are paused.
    fn is_shared(&self) -> bool {
        false
    }
}

/// Something that happened, for live updates, notifications and follow-ups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A sale's stock moved.
    Stock {
        sale_id: SaleId,
        available: i64,
        held: i64,
        sold: i64,
    },
    /// A sale was created or its configuration changed: other nodes read it again.
    SaleChanged { sale_id: SaleId },
    /// A sale's status changed by an admin action.
    SaleStatus { sale_id: SaleId, status: String },
    /// An order was confirmed.
    OrderConfirmed { order_id: OrderId, user_id: UserId },
    /// A payment failed.
    PaymentFailed { order_id: OrderId, user_id: UserId },
    /// A notification was added to a buyer's feed.
    Notified { notification: Notification },
    /// Units of a sale went back to available (a hold lapsed or was released, an order was
    /// refunded, the judge refused): every node clears its local "sold out" flag.
    StockReturned { sale_id: SaleId },
    /// An operator's message to everyone waiting in a sale's room: every node shows it.
    RoomMessage {
        sale_id: SaleId,
        text: String,
        at: Timestamp,
    },
    /// A session ended early (logout, a ban): every node refuses it until its expiry.
    SessionRevoked {
        session_id: String,
        expires_at: Timestamp,
    },
}

/// Carries events to whoever listens (SSE streams, notifiers). Delivery to live subscribers
/// is best-effort; durable delivery goes through an outbox in the cluster adapters.
pub trait EventBus: Send + Sync + 'static {
    /// Publishes without waiting.
    fn publish(&self, event: Event);
    /// A stream of events published from now on.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event>;
}

/// Delivers outbox events durably to whoever applies them (in-process, or a broker's durable
/// queue). `Ok` means every event is safe (the broker confirmed it): the relay then marks
/// them delivered. An error leaves them in the outbox for the next try.
#[async_trait]
pub trait OutboxSink: Send + Sync + 'static {
    async fn deliver(&self, events: &[OutboxEvent]) -> PortResult<()>;
}

/// The shop's own systems, told about every order event by an HMAC-signed webhook. The
/// sender is one attempt, nothing more: retries, backoff and de-duplication live in the store
/// and the delivery job, so they survive restarts and are shared by every node.
#[async_trait]
pub trait ShopWebhooks: Send + Sync + 'static {
    /// Sends one delivery. `Ok` only if the shop answered 2xx; anything else (an error status,
    /// a timeout, no connection) is an error and the delivery is tried again later.
    async fn send(&self, delivery: &WebhookDelivery) -> PortResult<()>;
}

/// A payment to authorize.
#[derive(Debug, Clone)]
pub struct AuthorizeRequest {
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    pub amount: Money,
    pub currency: Currency,
    pub method: String,
    /// The card token from the client (sandbox: `tok_ok`, `tok_decline`, `tok_slow`,
    /// `tok_async`).
    pub token: String,
}

/// The gateway's answer to an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Authorized {
        reference: String,
    },
    Declined {
        reference: String,
        reason: String,
    },
    /// Will be decided later and reported through a signed webhook.
    Pending {
        reference: String,
    },
}

/// A payment service provider.
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    async fn authorize(&self, req: &AuthorizeRequest) -> PortResult<Authorization>;
    /// Takes the authorized money. Idempotent per reference.
    async fn capture(&self, reference: &str) -> PortResult<()>;
    /// Releases an authorization that will not be captured. Idempotent per reference.
    async fn void(&self, reference: &str) -> PortResult<()>;
    /// Returns captured money. Idempotent per reference.
    async fn refund(&self, reference: &str) -> PortResult<()>;
    /// The reference of the authorization made for this order, if the gateway made one. A
    /// checkout that died while the authorization's answer was on its way leaves money
    /// authorized that the shop never heard of; this is how it is found again and voided.
    async fn find_authorization(&self, order: &OrderId) -> PortResult<Option<String>>;
}

/// Rules of one sale's waiting room, set by an admin (all 0 = off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRules {
    /// Accounts that may join this sale's line from one device.
    pub max_accounts_per_device: u32,
    /// Units one device may buy in this sale, across its accounts.
    pub device_limit: u32,
    /// Leading zero bits a proof of work at join must have (0: no challenge).
    pub pow_bits: u8,
    /// The sale is a draw: at the start, instead of first come first served, a lottery among
    /// everyone in the pre-queue decides who may buy the stock.
    pub lottery_at_start: bool,
    /// At most this many admissions in any minute (0: as fast as the stock allows). Also the
    /// operator's "ceiling on the admission rate".
    #[serde(default)]
    pub new_per_minute: u32,
    /// The organiser paused admission (an operator control, not set through the rules):
    /// nobody is admitted, waiting buyers keep their places and are told.
    #[serde(default)]
    pub admission_paused: bool,
    /// At most this many buyers admitted and shopping at once (0: no cap): an admission not
    /// used yet, or a hold bought with one and not yet paid, released or lapsed, takes a slot.
    #[serde(default)]
    pub max_active: u32,
}

/// The waiting room's line per sale (embedded: in memory; cluster: Redis, shared by every
/// node). The adapters are deliberately plain; the decisions (when to draw, how many units
/// there are to admit against, what a token is) live in the use cases, so both behave alike
/// and are held to one conformance suite. Semantics are those of
/// [`stampede_core::waiting_line::WaitingLine`], the reference model.
#[async_trait]
pub trait WaitingRoom: Send + Sync + 'static {
    /// Joins (idempotent: joining again keeps the first place).
    async fn join(
        &self,
        sale: &SaleId,
        user: &UserId,
        device: &str,
        max_accounts_per_device: u32,
    ) -> PortResult<Result<EntryView, JoinRefusal>>;
    /// The caller's entry.
    async fn view(&self, sale: &SaleId, user: &UserId) -> PortResult<Option<EntryView>>;
    /// The pre-queue's entrants if it has not been drawn yet.
    async fn pre_queue(&self, sale: &SaleId) -> PortResult<Option<Vec<String>>>;
    /// Places the pre-queue in the drawn order and opens first-come-first-served. `true` if
    /// this call did it (the pre-queue was still open).
    async fn place_drawn(&self, sale: &SaleId, order: &[String]) -> PortResult<bool>;
    /// Lapses stale admissions, then admits the next in line against the units available
    /// minus admissions outstanding, each counted at `units_per_admission` (at most
    /// `max_batch`). `units_available: None` makes the adapter read its own gate's count in
    /// the same atomic step as the admission (what the admission rounds do: a figure read
    /// earlier could be stale by the time it is used); `Some` is for tests. Returns how many
    /// were admitted.
    async fn admit(
        &self,
        sale: &SaleId,
        units_available: Option<u64>,
        units_per_admission: u64,
        ttl_ms: i64,
        now_ms: i64,
        max_batch: u64,
    ) -> PortResult<u64>;
    /// Takes the caller's admission for a reservation (single use).
    #[allow(clippy::too_many_arguments)]
    async fn claim(
        &self,
        sale: &SaleId,
        user: &UserId,
        device: &str,
        ticket: u64,
        quantity: u64,
        device_limit: u64,
        now_ms: i64,
    ) -> PortResult<Result<(), ClaimRefusal>>;
    /// Ends a claim: used up if `reserved`, else given back. A reserved admission counts among
    /// those shopping (the rules' `max_active`) until [`WaitingRoom::shopping_ended`] or
    /// `shopping_until_ms` (when the hold has lapsed at the latest).
    async fn settle(
        &self,
        sale: &SaleId,
        user: &UserId,
        quantity: u64,
        reserved: bool,
        shopping_until_ms: i64,
    ) -> PortResult<()>;
    /// The buyer's hold ended (paid, released, lapsed): their slot is free for the next.
    async fn shopping_ended(&self, sale: &SaleId, user: &UserId) -> PortResult<()>;
    /// Marks the stock gone (or back); `close` ends the room for good.
    async fn set_sold_out(&self, sale: &SaleId, sold_out: bool, close: bool) -> PortResult<()>;
    /// Everyone still waiting: a lottery's entrants.
    async fn waiting_entrants(&self, sale: &SaleId) -> PortResult<Vec<String>>;
    /// Admits `winners`; the other `entrants` still waiting have lost (anyone who joined
    /// after the entrant list was taken keeps their place).
    async fn apply_lottery(
        &self,
        sale: &SaleId,
        entrants: &[String],
        winners: &[String],
        ttl_ms: i64,
        now_ms: i64,
    ) -> PortResult<()>;
    /// Counters and fairness inputs.
    async fn stats(&self, sale: &SaleId) -> PortResult<LineStats>;
    /// The seed of the Ed25519 key admission tokens are signed with, shared by every node: the
    /// first caller's `candidate` becomes it (unless the adapter was given one).
    async fn signing_key(&self, candidate: [u8; 32]) -> PortResult<[u8; 32]>;
    /// A sale's seed for one kind of draw, fixed by the first caller; `true` if this call set
    /// it (so the caller publishes its commitment).
    async fn draw_seed(
        &self,
        sale: &SaleId,
        purpose: DrawPurpose,
        candidate: [u8; 32],
    ) -> PortResult<([u8; 32], bool)>;
    /// The room's rules.
    async fn rules(&self, sale: &SaleId) -> PortResult<RoomRules>;
    async fn set_rules(&self, sale: &SaleId, rules: RoomRules) -> PortResult<()>;
    /// Keeps a finished draw's record (JSON) for publication.
    async fn publish_draw(&self, sale: &SaleId, record: &str) -> PortResult<()>;
    /// The published draw records (JSON), oldest first.
    async fn draws(&self, sale: &SaleId) -> PortResult<Vec<String>>;

    /// [`WaitingRoom::admit`], naming who was let in (user, place in line, device, until when),
    /// in the order they were: what the admission rounds use, to tell each buyer it is their
    /// turn, and what the durable room logs. Each admission is named to exactly one caller,
    /// however many nodes admit at once.
    async fn admit_named(
        &self,
        sale: &SaleId,
        units_available: Option<u64>,
        units_per_admission: u64,
        ttl_ms: i64,
        now_ms: i64,
        max_batch: u64,
    ) -> PortResult<Vec<Admitted>>;
    /// Whether the room holds the sale's line (it was restored, or created, since the room
    /// last started empty).
    async fn holds(&self, sale: &SaleId) -> PortResult<bool>;
    /// Rebuilds the sale's line from its log, unless the room holds it already (another node
    /// restored it first): `true` if this call did. The line is usable once this returns.
    async fn restore(&self, sale: &SaleId, snapshot: &RoomSnapshot) -> PortResult<bool>;
}

/// A sale's room as its log has it, ready to be put back ([`WaitingRoom::restore`]).
#[derive(Debug, Clone, Default)]
pub struct RoomSnapshot {
    /// Every entry, ranks given ([`stampede_core::waiting_line::restore_ranks`]).
    pub entries: Vec<LoggedEntry>,
    /// The pre-queue was drawn (entries carry their ranks).
    pub drawn: bool,
    pub seeds: Vec<(DrawPurpose, [u8; 32])>,
    pub rules: Option<RoomRules>,
    /// Published draw records (JSON), oldest first.
    pub draws: Vec<String>,
    /// The room had said sold out: admissions are waitlist offers.
    pub waitlist: bool,
}

/// The durable log of a waiting room: every join and every admission, written in batches (a
/// join is acknowledged once its batch has committed), read back in one pass to rebuild a
/// room that lost its lines (embedded: a restart; cluster: Redis flushed or restarted empty).
/// Beside the entries it keeps a few values per sale (seeds, rules, the drawn order, draw
/// records) and per deployment (the admission signing key).
#[async_trait]
pub trait RoomLog: Send + Sync + 'static {
    /// Writes a batch in one transaction. Per buyer the log keeps the record that
    /// [supersedes](LoggedEntry::supersedes) the others, whatever order they arrive in.
    async fn append_entries(&self, batch: &[(SaleId, LoggedEntry)]) -> PortResult<()>;
    /// Up to `limit` of a sale's entries after `cursor` (0 to start), with the cursor to go on
    /// from; fewer than `limit` means the end.
    async fn entries(
        &self,
        sale: &SaleId,
        cursor: i64,
        limit: u32,
    ) -> PortResult<(Vec<LoggedEntry>, i64)>;
    /// Sets a value kept beside the log (`scope`: a sale id, or `*` for the deployment).
    async fn put_value(&self, scope: &str, key: &str, value: &str) -> PortResult<()>;
    /// Every value of `scope`, by key.
    async fn values(&self, scope: &str) -> PortResult<Vec<(String, String)>>;
}

/// Rate limits shared by every node (cluster: Redis), so that N nodes behind a load balancer do
/// not give one client N quotas. Checked after the node's own limiter, which stops a flood
/// before it costs a round trip.
#[async_trait]
pub trait SharedRateLimiter: Send + Sync + 'static {
    /// Counts one request for `key` (GCRA: `per_sec` with bursts of `burst`). `Ok(Err(ms))`:
    /// over the quota, retry in `ms`.
    async fn check(&self, key: &str, per_sec: u32, burst: u32) -> PortResult<Result<(), u64>>;
}
