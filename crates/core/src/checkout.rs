//! The money rules, as pure functions over what a store has read inside its transaction: like
//! [`crate::judge`] for holds, every store adapter asks these and only carries out the answer,
//! so checkout, payment, cancellation and refund are written once and tested here.
//!
//! Each function returns a plan: which holds become which order lines ([`plan_checkout`]), what
//! the order and its payment become, which money move is owed to the gateway and what stock
//! returns ([`Settlement`], from [`plan_answer`], [`plan_authorized`] and [`plan_cancel`]), and
//! what an authorization does to each hold of the order ([`convert_line`]).
//!
//! Invariants the plans keep (see the property tests below):
//! * an order's total is the sum of its lines, and its payment's amount is that total;
//! * every status change is a legal move of [`OrderStatus::transition`] /
//!   [`PaymentStatus::transition`]; nothing leaves a final state;
//! * the owed money move matches the payment it is written with: `captured` owes a capture,
//!   `voided` a void exactly when the gateway knows the payment, `refunded` a refund (after the
//!   capture if that was still owed), `declined` nothing;
//! * stock returns only when a paid order is refunded, and then exactly what it sold; a failed,
//!   cancelled or expired order took none (its holds stay and lapse by themselves).

use serde::{Deserialize, Serialize};

use crate::order::TransitionError;
use crate::{
    Currency, Hold, HoldId, HoldState, Money, Order, OrderId, OrderItem, OrderStatus, Payment,
    PaymentId, PaymentStatus, SaleId, Timestamp, UserId,
};

/// Why an authorization failed when a hold of its order had lapsed, as stored on the payment.
pub const HOLD_EXPIRED: &str = "hold_expired";

/// A new order over some holds, to be written as `pending_payment` with a `pending` payment.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub order_id: OrderId,
    pub payment_id: PaymentId,
    pub user_id: UserId,
    pub hold_ids: Vec<HoldId>,
    pub method: String,
    pub now: Timestamp,
}

impl NewOrder {
    /// The holds the order names, each once, in the order first named: a hold named twice is
    /// one line, not two.
    pub fn distinct_holds(&self) -> Vec<&HoldId> {
        let mut ids: Vec<&HoldId> = Vec::with_capacity(self.hold_ids.len());
        for id in &self.hold_ids {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }
}

/// Why an order could not be created from its holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckoutError {
    #[error("hold not found")]
    HoldNotFound,
    #[error("hold expired")]
    HoldExpired,
    #[error("hold is already in a pending order")]
    HoldInPendingOrder,
    #[error("all holds of one order must share a currency")]
    MixedCurrencies,
}

/// A hold as a store found it, with whether it is already being paid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundHold {
    pub hold: Hold,
    /// The hold carries the id of an order that is still `pending_payment`.
    pub in_pending_order: bool,
}

/// Checkout: the order (with its `pending` payment) to write over the holds the store found
/// for [`NewOrder::distinct_holds`], in that order (`None`: no such hold). Refused, in the
/// order the holds were named, if a hold is missing or another buyer's, no longer live, or
/// already in a pending order; or if the holds do not share a currency.
pub fn plan_checkout(new: &NewOrder, found: &[Option<FoundHold>]) -> Result<Order, CheckoutError> {
    let mut holds = Vec::with_capacity(found.len());
    for row in found {
        let Some(row) = row else {
            return Err(CheckoutError::HoldNotFound);
        };
        if row.hold.user_id != new.user_id {
            return Err(CheckoutError::HoldNotFound);
        }
        if !row.hold.is_live_at(new.now) {
            return Err(CheckoutError::HoldExpired);
        }
        if row.in_pending_order {
            return Err(CheckoutError::HoldInPendingOrder);
        }
        holds.push(&row.hold);
    }
    let Some(first) = holds.first() else {
        return Err(CheckoutError::HoldNotFound);
    };
    let currency: Currency = first.currency.clone();
    if holds.iter().any(|h| h.currency != currency) {
        return Err(CheckoutError::MixedCurrencies);
    }
    let items: Vec<OrderItem> = holds
        .iter()
        .map(|h| OrderItem {
            sale_id: h.sale_id.clone(),
            hold_id: h.id.clone(),
            quantity: h.quantity,
            unit_price: h.unit_price,
        })
        .collect();
    let total = items.iter().fold(Money(0), |sum, i| {
        Money(sum.0.saturating_add(i.unit_price.times(i.quantity).0))
    });
    Ok(Order {
        id: new.order_id.clone(),
        user_id: new.user_id.clone(),
        status: OrderStatus::PendingPayment,
        items,
        total,
        currency,
        created_at: new.now,
        payment: Some(Payment {
            id: new.payment_id.clone(),
            order_id: new.order_id.clone(),
            status: PaymentStatus::Pending,
            method: new.method.clone(),
            reference: None,
            amount: total,
            failure_reason: None,
            updated_at: new.now,
        }),
    })
}

/// How the gateway's answer is recorded on an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentResult {
    /// Money authorized (or captured): turn the holds into sold units and confirm the order.
    /// `retake`: if a hold has lapsed meanwhile, take the stock again if it is still there
    /// (a late asynchronous payment), instead of failing.
    Authorized { reference: String, retake: bool },
    /// Declined: order `payment_failed` with the reason; the holds stay for another try.
    Declined {
        reference: Option<String>,
        reason: String,
    },
    /// The gateway will answer later through a webhook.
    Pending { reference: String },
    /// Nobody will answer: the checkout died with its process before the authorization's
    /// answer was recorded, or an asynchronous payment never settled by its deadline. The
    /// order fails (expires) with `reason` and its holds let go of it; if the gateway holds an
    /// authorization (`reference`, found by the order id), the payment is `voided` with the
    /// void owed to the gateway, so the money is released exactly once.
    Abandoned {
        reference: Option<String>,
        reason: String,
    },
}

/// A move of money the judge has decided but the gateway has not acknowledged yet. It is
/// written in the SAME transaction that confirms, fails, cancels or refunds the order, so a
/// crash between that commit and the gateway call cannot lose it: the money reconciliation
/// finishes it. Every gateway call is idempotent per reference, so finishing one twice is
/// harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GatewayOwed {
    /// The order is confirmed: capture the authorization.
    Capture,
    /// The order failed or was cancelled: void the authorization.
    Void,
    /// The order was refunded after its capture was acknowledged: refund.
    Refund,
    /// The order was refunded while its capture was still owed: capture first (the order was
    /// confirmed on that promise), then refund. Never a capture after a refund: the first
    /// step done moves this to `Refund`.
    CaptureThenRefund,
}

impl GatewayOwed {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayOwed::Capture => "capture",
            GatewayOwed::Void => "void",
            GatewayOwed::Refund => "refund",
            GatewayOwed::CaptureThenRefund => "capture_refund",
        }
    }

    /// Reads a stored word.
    pub fn parse(s: &str) -> Option<GatewayOwed> {
        Some(match s {
            "capture" => GatewayOwed::Capture,
            "void" => GatewayOwed::Void,
            "refund" => GatewayOwed::Refund,
            "capture_refund" => GatewayOwed::CaptureThenRefund,
            _ => return None,
        })
    }

    /// What is still owed once the gateway acknowledged the first call of this move: the
    /// refund only after the capture is known done, so a retry never captures after a refund.
    pub fn after_first_call(self) -> Option<GatewayOwed> {
        match self {
            GatewayOwed::Capture | GatewayOwed::Void | GatewayOwed::Refund => None,
            GatewayOwed::CaptureThenRefund => Some(GatewayOwed::Refund),
        }
    }
}

/// An event written to the outbox in the same transaction as the settlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoneyEvent {
    OrderConfirmed,
    PaymentFailed { reason: String },
}

/// What an order and its payment become, and everything else written with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The order's next status (a legal move from the one read; the write is guarded by it).
    pub order: OrderStatus,
    /// The payment's next status (likewise).
    pub payment: PaymentStatus,
    /// The gateway's reference to record; `None` keeps the stored one.
    pub reference: Option<String>,
    /// Why the payment failed; `None` clears it.
    pub failure_reason: Option<String>,
    /// The money move now owed to the gateway (replacing any owed before).
    pub owed: Option<GatewayOwed>,
    /// The order's holds let go of it, free to join another order.
    pub release_holds: bool,
    /// Sold units that return to available, per line: `(sale, quantity)`.
    pub stock_returned: Vec<(SaleId, u32)>,
    /// The outbox event to write, if any.
    pub event: Option<MoneyEvent>,
}

/// A rule broken by the facts a store read: always a bug or a corrupt row, never a client's
/// doing; stores report it as an internal error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("order {0} has no payment")]
    NoPayment(OrderId),
    #[error("paid order {0} has no payment reference")]
    NoReference(OrderId),
    #[error("hold {0} changed quantity inside a pending order")]
    LineChanged(HoldId),
}

/// What to do with the gateway's answer for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerPlan {
    /// The order already left `pending_payment` (a replayed or late answer): change nothing.
    AlreadySettled,
    /// The gateway answers later: record its reference (and the time); nothing else changes.
    Await { reference: String },
    /// Settle the order now.
    Settle(Settlement),
    /// Money authorized: take each line through [`convert_line`], then settle with
    /// [`plan_authorized`] (all lines honoured, or none).
    Convert { reference: String, retake: bool },
}

fn payment_of(order: &Order) -> Result<&Payment, PlanError> {
    order
        .payment
        .as_ref()
        .ok_or_else(|| PlanError::NoPayment(order.id.clone()))
}

/// A settlement of `order` to `(order_to, payment_to)`, checking both moves.
fn settle(
    order: &Order,
    order_to: OrderStatus,
    payment_to: PaymentStatus,
) -> Result<Settlement, PlanError> {
    Ok(Settlement {
        order: order.status.transition(order_to)?,
        payment: payment_of(order)?.status.transition(payment_to)?,
        reference: None,
        failure_reason: None,
        owed: None,
        release_holds: false,
        stock_returned: Vec::new(),
        event: None,
    })
}

impl Settlement {
    /// `order` as this settlement leaves it, `now`: what the store wrote, known without
    /// reading it back.
    pub fn applied_to(&self, order: &Order, now: Timestamp) -> Order {
        let mut after = order.clone();
        after.status = self.order;
        if let Some(payment) = after.payment.as_mut() {
            payment.status = self.payment;
            if let Some(reference) = &self.reference {
                payment.reference = Some(reference.clone());
            }
            payment.failure_reason = self.failure_reason.clone();
            payment.updated_at = now;
        }
        after
    }
}

/// `order` once a later answer's `reference` is recorded `now` ([`AnswerPlan::Await`]).
pub fn awaiting(order: &Order, reference: &str, now: Timestamp) -> Order {
    let mut after = order.clone();
    if let Some(payment) = after.payment.as_mut() {
        payment.reference = Some(reference.to_owned());
        payment.updated_at = now;
    }
    after
}

/// Records the gateway's answer on an order read in its transaction.
pub fn plan_answer(order: &Order, answer: &PaymentResult) -> Result<AnswerPlan, PlanError> {
    if order.status != OrderStatus::PendingPayment {
        return Ok(AnswerPlan::AlreadySettled);
    }
    Ok(match answer {
        PaymentResult::Authorized { reference, retake } => AnswerPlan::Convert {
            reference: reference.clone(),
            retake: *retake,
        },
        PaymentResult::Pending { reference } => {
            payment_of(order)?;
            AnswerPlan::Await {
                reference: reference.clone(),
            }
        }
        PaymentResult::Declined { reference, reason } => AnswerPlan::Settle(Settlement {
            reference: reference.clone(),
            failure_reason: Some(reason.clone()),
            release_holds: true,
            event: Some(MoneyEvent::PaymentFailed {
                reason: reason.clone(),
            }),
            ..settle(order, OrderStatus::PaymentFailed, PaymentStatus::Declined)?
        }),
        PaymentResult::Abandoned { reference, reason } => {
            // Only an authorization the gateway made has money to release.
            let known = reference.is_some() || payment_of(order)?.reference.is_some();
            AnswerPlan::Settle(Settlement {
                reference: reference.clone(),
                failure_reason: Some(reason.clone()),
                owed: known.then_some(GatewayOwed::Void),
                release_holds: true,
                event: Some(MoneyEvent::PaymentFailed {
                    reason: reason.clone(),
                }),
                ..settle(order, OrderStatus::PaymentFailed, PaymentStatus::Voided)?
            })
        }
    })
}

/// An authorization's settlement once every line went through [`convert_line`]: `honoured`
/// if all of them did (the order is confirmed and the capture owed), otherwise the order
/// fails with [`HOLD_EXPIRED`], no stock moves at all, and the money must go back (a void).
pub fn plan_authorized(
    order: &Order,
    reference: &str,
    honoured: bool,
) -> Result<Settlement, PlanError> {
    Ok(if honoured {
        Settlement {
            reference: Some(reference.to_owned()),
            owed: Some(GatewayOwed::Capture),
            event: Some(MoneyEvent::OrderConfirmed),
            ..settle(order, OrderStatus::Confirmed, PaymentStatus::Captured)?
        }
    } else {
        Settlement {
            reference: Some(reference.to_owned()),
            failure_reason: Some(HOLD_EXPIRED.to_owned()),
            owed: Some(GatewayOwed::Void),
            release_holds: true,
            event: Some(MoneyEvent::PaymentFailed {
                reason: HOLD_EXPIRED.to_owned(),
            }),
            ..settle(order, OrderStatus::PaymentFailed, PaymentStatus::Voided)?
        }
    })
}

/// One line of an order with the current state of its hold, as read for an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub hold_id: HoldId,
    pub sale_id: SaleId,
    pub user_id: UserId,
    /// Units on the order line.
    pub quantity: u32,
    /// Units on the hold now.
    pub hold_quantity: u32,
    pub state: HoldState,
    pub expires_at: Timestamp,
}

impl OrderLine {
    /// The hold is still live at `now`: paying converts it.
    pub fn is_live_at(&self, now: Timestamp) -> bool {
        self.state == HoldState::Active && now < self.expires_at
    }
}

/// What an authorization does to one line's hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStep {
    /// A live hold paid for: its units go held → sold and the hold ends `converted`.
    Convert,
    /// The hold lapsed and its stock may not be taken again: the whole authorization fails,
    /// and nothing planned for the other lines is written.
    Lapsed,
    /// The hold lapsed; take its stock again if the judge allows it (a reservation of the
    /// line's units, under the sale's and drop's limits), or fail as [`LineStep::Lapsed`].
    /// `expire_first`: the hold is due but not swept yet, so it is expired first (units
    /// held → available, hold `expired`), exactly as the sweeper would have done, so the
    /// outcome does not depend on when the sweeper last ran.
    Retake { expire_first: bool },
}

impl LineStep {
    /// How the line's hold ends with this step, if it ends: converted when paid for, expired
    /// when a due hold is swept before its stock is taken again.
    pub fn hold_ending(self) -> Option<HoldState> {
        match self {
            LineStep::Convert => Some(HoldState::Converted),
            LineStep::Retake { expire_first: true } => Some(HoldState::Expired),
            LineStep::Retake {
                expire_first: false,
            }
            | LineStep::Lapsed => None,
        }
    }
}

/// Decides one line of an authorization at `now`; `retake` as in [`PaymentResult::Authorized`].
pub fn convert_line(line: &OrderLine, retake: bool, now: Timestamp) -> Result<LineStep, PlanError> {
    if line.is_live_at(now) {
        if line.hold_quantity != line.quantity {
            return Err(PlanError::LineChanged(line.hold_id.clone()));
        }
        return Ok(LineStep::Convert);
    }
    if !retake || line.state == HoldState::Converted {
        return Ok(LineStep::Lapsed);
    }
    Ok(LineStep::Retake {
        expire_first: line.state == HoldState::Active,
    })
}

/// Whether an authorization may retake stock for some line (a store locks more when it may).
pub fn may_retake(lines: &[OrderLine], retake: bool, now: Timestamp) -> bool {
    retake && lines.iter().any(|l| !l.is_live_at(now))
}

/// What cancelling an order does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelPlan {
    /// A paid order is refunded: its sold units return, and the refund (after the capture if
    /// that was still owed) is owed to the gateway for `reference`.
    Refund {
        settlement: Settlement,
        reference: String,
        owed: GatewayOwed,
    },
    /// An unpaid order is cancelled: its holds let go of it (they stay, free for another
    /// order), and a void is owed if the gateway knows the payment.
    Cancel(Settlement),
    /// The order is in this final state: nothing to cancel.
    Refused(OrderStatus),
}

/// Cancels an order read in its transaction, with the money move owed on its payment now.
pub fn plan_cancel(order: &Order, owed_now: Option<GatewayOwed>) -> Result<CancelPlan, PlanError> {
    Ok(match order.status {
        OrderStatus::Confirmed => {
            let reference = payment_of(order)?
                .reference
                .clone()
                .ok_or_else(|| PlanError::NoReference(order.id.clone()))?;
            // A refund of money whose capture is still owed must capture first.
            let owed = match owed_now {
                Some(GatewayOwed::Capture | GatewayOwed::CaptureThenRefund) => {
                    GatewayOwed::CaptureThenRefund
                }
                _ => GatewayOwed::Refund,
            };
            CancelPlan::Refund {
                settlement: Settlement {
                    owed: Some(owed),
                    stock_returned: order
                        .items
                        .iter()
                        .map(|i| (i.sale_id.clone(), i.quantity))
                        .collect(),
                    ..settle(order, OrderStatus::Refunded, PaymentStatus::Refunded)?
                },
                reference,
                owed,
            }
        }
        OrderStatus::PendingPayment => {
            let known = payment_of(order)?.reference.is_some();
            CancelPlan::Cancel(Settlement {
                owed: known.then_some(GatewayOwed::Void),
                release_holds: true,
                ..settle(order, OrderStatus::Cancelled, PaymentStatus::Voided)?
            })
        }
        other @ (OrderStatus::PaymentFailed | OrderStatus::Cancelled | OrderStatus::Refunded) => {
            CancelPlan::Refused(other)
        }
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn hold(n: u8, user: &str, quantity: u32, price: i64, currency: &str, state: u8) -> Hold {
        Hold {
            id: HoldId::from_trusted(format!("h{n}")),
            sale_id: SaleId::from_trusted(format!("s{}", n % 3)),
            user_id: UserId::from_trusted(user.to_owned()),
            quantity,
            unit_price: Money(price),
            currency: Currency::from_trusted(currency.to_owned()),
            state: [
                HoldState::Active,
                HoldState::Converted,
                HoldState::Released,
                HoldState::Expired,
            ][usize::from(state % 4)],
            created_at: Timestamp(0),
            expires_at: Timestamp(1_000),
        }
    }

    fn new_order(now: i64) -> NewOrder {
        NewOrder {
            order_id: OrderId::from_trusted("o1".into()),
            payment_id: PaymentId::from_trusted("p1".into()),
            user_id: UserId::from_trusted("u1".into()),
            hold_ids: Vec::new(),
            method: "card".into(),
            now: Timestamp(now),
        }
    }

    const ORDER_STATUSES: [OrderStatus; 5] = [
        OrderStatus::PendingPayment,
        OrderStatus::Confirmed,
        OrderStatus::PaymentFailed,
        OrderStatus::Cancelled,
        OrderStatus::Refunded,
    ];
    const PAYMENT_STATUSES: [PaymentStatus; 6] = [
        PaymentStatus::Pending,
        PaymentStatus::Authorized,
        PaymentStatus::Captured,
        PaymentStatus::Declined,
        PaymentStatus::Voided,
        PaymentStatus::Refunded,
    ];
    const OWED: [Option<GatewayOwed>; 5] = [
        None,
        Some(GatewayOwed::Capture),
        Some(GatewayOwed::Void),
        Some(GatewayOwed::Refund),
        Some(GatewayOwed::CaptureThenRefund),
    ];

    /// A live order of 1–4 lines, as checkout would have written it.
    fn pending_order() -> impl Strategy<Value = Order> {
        prop::collection::vec((1u32..5, 1i64..10_000), 1..5).prop_map(|lines| {
            let found: Vec<Option<FoundHold>> = lines
                .iter()
                .enumerate()
                .map(|(i, (q, p))| {
                    Some(FoundHold {
                        hold: hold(i as u8, "u1", *q, *p, "EUR", 0),
                        in_pending_order: false,
                    })
                })
                .collect();
            plan_checkout(&new_order(10), &found).unwrap()
        })
    }

    fn answer() -> impl Strategy<Value = PaymentResult> {
        let reference = prop::option::of("[a-z]{1,4}");
        prop_oneof![
            ("[a-z]{1,4}", any::<bool>())
                .prop_map(|(reference, retake)| PaymentResult::Authorized { reference, retake }),
            (reference.clone(), "[a-z]{1,8}")
                .prop_map(|(reference, reason)| PaymentResult::Declined { reference, reason }),
            "[a-z]{1,4}".prop_map(|reference| PaymentResult::Pending { reference }),
            (reference, "[a-z]{1,8}")
                .prop_map(|(reference, reason)| PaymentResult::Abandoned { reference, reason }),
        ]
    }

    /// The order as a store leaves it after carrying out `s`.
    fn apply(order: &Order, s: &Settlement) -> Order {
        let mut next = order.clone();
        next.status = s.order;
        if let Some(p) = next.payment.as_mut() {
            p.status = s.payment;
            if s.reference.is_some() {
                p.reference.clone_from(&s.reference);
            }
            p.failure_reason.clone_from(&s.failure_reason);
        }
        next
    }

    /// The owed move written with a settlement matches its payment's new status.
    fn owed_matches(s: &Settlement, reference_known: bool) {
        match s.payment {
            PaymentStatus::Captured => assert_eq!(s.owed, Some(GatewayOwed::Capture)),
            PaymentStatus::Voided => {
                assert_eq!(s.owed, reference_known.then_some(GatewayOwed::Void))
            }
            PaymentStatus::Refunded => assert!(matches!(
                s.owed,
                Some(GatewayOwed::Refund | GatewayOwed::CaptureThenRefund)
            )),
            PaymentStatus::Declined => assert_eq!(s.owed, None),
            PaymentStatus::Pending | PaymentStatus::Authorized => {
                panic!("a settlement never leaves the payment {:?}", s.payment)
            }
        }
    }

    /// Checks one settlement against the rules every plan keeps.
    fn check(order: &Order, s: &Settlement) {
        let payment = order.payment.as_ref().unwrap();
        assert_eq!(order.status.transition(s.order), Ok(s.order));
        assert_eq!(payment.status.transition(s.payment), Ok(s.payment));
        let known = s.reference.is_some() || payment.reference.is_some();
        owed_matches(s, known);
        let sold: Vec<(SaleId, u32)> = order
            .items
            .iter()
            .map(|i| (i.sale_id.clone(), i.quantity))
            .collect();
        match s.order {
            // A refund returns exactly what the order sold.
            OrderStatus::Refunded => assert_eq!(s.stock_returned, sold),
            // Failed, cancelled or expired: the order took no stock, so none returns; its
            // holds let go of it.
            OrderStatus::PaymentFailed | OrderStatus::Cancelled => {
                assert!(s.stock_returned.is_empty());
                assert!(s.release_holds);
            }
            OrderStatus::Confirmed => {
                assert!(s.stock_returned.is_empty());
                assert!(!s.release_holds);
            }
            OrderStatus::PendingPayment => panic!("a settlement never leaves an order pending"),
        }
        match (&s.event, s.order) {
            (Some(MoneyEvent::OrderConfirmed), OrderStatus::Confirmed) => {}
            (Some(MoneyEvent::PaymentFailed { reason }), OrderStatus::PaymentFailed) => {
                assert_eq!(Some(reason), s.failure_reason.as_ref());
            }
            (None, OrderStatus::Cancelled | OrderStatus::Refunded) => {}
            (event, status) => panic!("event {event:?} written with a {status:?} order"),
        }
    }

    proptest! {
        #[test]
        fn checkout_totals_are_the_sum_of_the_lines(
            lines in prop::collection::vec((0u8..6, 1u32..10, 0i64..1_000_000), 1..8),
        ) {
            let mut new = new_order(10);
            let found: Vec<Option<FoundHold>> = lines
                .iter()
                .map(|(n, q, p)| Some(FoundHold { hold: hold(*n, "u1", *q, *p, "EUR", 0), in_pending_order: false }))
                .collect();
            new.hold_ids = found.iter().flatten().map(|f| f.hold.id.clone()).collect();
            let order = plan_checkout(&new, &found).unwrap();
            let sum: i64 = order.items.iter().map(|i| i.unit_price.0 * i64::from(i.quantity)).sum();
            prop_assert_eq!(order.total.0, sum);
            let payment = order.payment.as_ref().unwrap();
            prop_assert_eq!(payment.amount, order.total);
            prop_assert_eq!(payment.status, PaymentStatus::Pending);
            prop_assert_eq!(order.status, OrderStatus::PendingPayment);
            // Every hold becomes the line at its place, with its units and price.
            prop_assert_eq!(order.items.len(), found.len());
            for (item, f) in order.items.iter().zip(found.iter().flatten()) {
                prop_assert_eq!(&item.hold_id, &f.hold.id);
                prop_assert_eq!(&item.sale_id, &f.hold.sale_id);
                prop_assert_eq!(item.quantity, f.hold.quantity);
                prop_assert_eq!(item.unit_price, f.hold.unit_price);
            }
        }

        #[test]
        fn checkout_takes_only_live_free_holds_of_the_buyer_in_one_currency(
            holds in prop::collection::vec(
                (prop::option::of((0u8..6, 0u8..4, any::<bool>(), any::<bool>(), any::<bool>())), 1u32..5),
                0..5,
            ),
            now in 0i64..2_000,
        ) {
            let found: Vec<Option<FoundHold>> = holds
                .iter()
                .map(|(h, q)| h.map(|(n, state, other_user, pending, usd)| FoundHold {
                    hold: hold(n, if other_user { "u2" } else { "u1" }, *q, 100, if usd { "USD" } else { "EUR" }, state),
                    in_pending_order: pending,
                }))
                .collect();
            let new = new_order(now);
            let planned = plan_checkout(&new, &found);
            let first_bad = found.iter().find_map(|f| match f {
                None => Some(CheckoutError::HoldNotFound),
                Some(f) if f.hold.user_id != new.user_id => Some(CheckoutError::HoldNotFound),
                Some(f) if !f.hold.is_live_at(new.now) => Some(CheckoutError::HoldExpired),
                Some(f) if f.in_pending_order => Some(CheckoutError::HoldInPendingOrder),
                Some(_) => None,
            });
            match (first_bad, planned) {
                (Some(bad), planned) => prop_assert_eq!(planned, Err(bad)),
                (None, Err(CheckoutError::HoldNotFound)) => prop_assert!(found.is_empty()),
                (None, Err(CheckoutError::MixedCurrencies)) => {
                    let first = &found[0].as_ref().unwrap().hold.currency;
                    prop_assert!(found.iter().flatten().any(|f| &f.hold.currency != first));
                }
                (None, Err(e)) => prop_assert!(false, "unexpected refusal {e:?}"),
                (None, Ok(order)) => prop_assert_eq!(order.items.len(), found.len()),
            }
        }

        #[test]
        fn answers_and_cancels_keep_the_money_rules(
            order in pending_order(),
            steps in prop::collection::vec(
                prop_oneof![
                    answer().prop_map(Some),
                    Just(None), // a cancel by the buyer
                ],
                1..6,
            ),
            honoured in any::<bool>(),
            owed_now in 0usize..5,
        ) {
            let mut order = order;
            for step in steps {
                let was_final = order.status != OrderStatus::PendingPayment
                    && order.status != OrderStatus::Confirmed;
                let settlement = match step {
                    Some(answer) => match plan_answer(&order, &answer).unwrap() {
                        AnswerPlan::AlreadySettled => {
                            prop_assert_ne!(order.status, OrderStatus::PendingPayment);
                            None
                        }
                        AnswerPlan::Await { .. } => {
                            prop_assert_eq!(order.status, OrderStatus::PendingPayment);
                            None
                        }
                        AnswerPlan::Convert { reference, .. } => {
                            Some(plan_authorized(&order, &reference, honoured).unwrap())
                        }
                        AnswerPlan::Settle(s) => Some(s),
                    },
                    None => match plan_cancel(&order, OWED[owed_now]).unwrap() {
                        CancelPlan::Refused(status) => {
                            prop_assert!(was_final);
                            prop_assert_eq!(status, order.status);
                            None
                        }
                        CancelPlan::Refund { settlement, reference, owed } => {
                            prop_assert_eq!(settlement.owed, Some(owed));
                            prop_assert_eq!(Some(&reference), order.payment.as_ref().unwrap().reference.as_ref());
                            prop_assert_eq!(
                                settlement.owed,
                                Some(if matches!(OWED[owed_now], Some(GatewayOwed::Capture | GatewayOwed::CaptureThenRefund)) {
                                    GatewayOwed::CaptureThenRefund
                                } else {
                                    GatewayOwed::Refund
                                })
                            );
                            Some(settlement)
                        }
                        CancelPlan::Cancel(s) => Some(s),
                    },
                };
                if let Some(s) = settlement {
                    // Nothing leaves a final state.
                    prop_assert!(!was_final, "a {:?} order moved", order.status);
                    check(&order, &s);
                    order = apply(&order, &s);
                }
            }
        }
    }

    #[test]
    fn every_status_pair_settles_only_by_legal_moves() {
        // Orders in any status with payments in any status: a plan either refuses (the facts
        // break a rule) or moves both by a legal step.
        for order_status in ORDER_STATUSES {
            for payment_status in PAYMENT_STATUSES {
                for reference in [None, Some("r".to_owned())] {
                    let mut order = plan_checkout(
                        &new_order(10),
                        &[Some(FoundHold {
                            hold: hold(0, "u1", 2, 500, "EUR", 0),
                            in_pending_order: false,
                        })],
                    )
                    .unwrap();
                    order.status = order_status;
                    let p = order.payment.as_mut().unwrap();
                    p.status = payment_status;
                    p.reference = reference;
                    let answers = [
                        PaymentResult::Declined {
                            reference: None,
                            reason: "no".into(),
                        },
                        PaymentResult::Abandoned {
                            reference: None,
                            reason: "gone".into(),
                        },
                    ];
                    for answer in &answers {
                        if let Ok(AnswerPlan::Settle(s)) = plan_answer(&order, answer) {
                            check(&order, &s);
                        }
                    }
                    for honoured in [true, false] {
                        if let Ok(s) = plan_authorized(&order, "r", honoured) {
                            check(&order, &s);
                        }
                    }
                    for owed in OWED {
                        match plan_cancel(&order, owed) {
                            Ok(CancelPlan::Refund { settlement, .. }) => check(&order, &settlement),
                            Ok(CancelPlan::Cancel(s)) => check(&order, &s),
                            Ok(CancelPlan::Refused(_)) | Err(_) => {}
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_authorization_converts_live_lines_and_retakes_lapsed_ones_only_when_allowed() {
        let line = |state, expires_at, hold_quantity| OrderLine {
            hold_id: HoldId::from_trusted("h".into()),
            sale_id: SaleId::from_trusted("s".into()),
            user_id: UserId::from_trusted("u".into()),
            quantity: 2,
            hold_quantity,
            state,
            expires_at: Timestamp(expires_at),
        };
        let now = Timestamp(100);
        let live = line(HoldState::Active, 200, 2);
        assert_eq!(convert_line(&live, false, now), Ok(LineStep::Convert));
        assert!(matches!(
            convert_line(&line(HoldState::Active, 200, 3), true, now),
            Err(PlanError::LineChanged(_))
        ));
        let due = line(HoldState::Active, 100, 2);
        assert_eq!(convert_line(&due, false, now), Ok(LineStep::Lapsed));
        assert_eq!(
            convert_line(&due, true, now),
            Ok(LineStep::Retake { expire_first: true })
        );
        let swept = line(HoldState::Expired, 50, 2);
        assert_eq!(
            convert_line(&swept, true, now),
            Ok(LineStep::Retake {
                expire_first: false
            })
        );
        let sold = line(HoldState::Converted, 50, 2);
        assert_eq!(convert_line(&sold, true, now), Ok(LineStep::Lapsed));
        assert_eq!(LineStep::Convert.hold_ending(), Some(HoldState::Converted));
        assert_eq!(
            LineStep::Retake { expire_first: true }.hold_ending(),
            Some(HoldState::Expired)
        );
        assert_eq!(LineStep::Lapsed.hold_ending(), None);
        assert!(!may_retake(std::slice::from_ref(&live), true, now));
        assert!(!may_retake(&[live.clone(), due.clone()], false, now));
        assert!(may_retake(&[live, due], true, now));
    }

    #[test]
    fn a_capture_then_refund_refunds_only_after_the_capture() {
        assert_eq!(
            GatewayOwed::CaptureThenRefund.after_first_call(),
            Some(GatewayOwed::Refund)
        );
        for owed in OWED.into_iter().flatten() {
            assert_eq!(GatewayOwed::parse(owed.as_str()), Some(owed));
            if owed != GatewayOwed::CaptureThenRefund {
                assert_eq!(owed.after_first_call(), None);
            }
        }
    }
}
