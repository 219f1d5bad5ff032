//! The order statements both engines agree on: carrying out the core's money plans
//! (`stampede_core::checkout`) and keeping the money moves owed to the gateway. Orders, holds
//! and order lines are keyed by their buyer too, which PostgreSQL's partitions need and SQLite
//! accepts as one more condition. The engines' own parts stay in each backend: how an order
//! is found and locked, its lines' order, and the stock moves.

use stampede_app::ports::{GatewayOwed, OutboxEvent, PortResult};
use stampede_core::checkout::{MoneyEvent, Settlement};
use stampede_core::{HoldId, Order, Payment, PaymentId, Timestamp};

use crate::engine::{statement, Bind, Engine, Write};
use crate::internal;

/// The order's payment; every order has one.
pub fn payment_of(order: &Order) -> PortResult<&Payment> {
    order
        .payment
        .as_ref()
        .ok_or_else(|| internal(format!("order {} has no payment", order.id)))
}

/// The writes of a settlement: both status moves, each guarded by the status read, the money
/// move now owed, and the holds letting go of the order. Stock the settlement returns is moved
/// by the caller first; its outbox event is [`money_event`].
pub fn settle<'q, DB: Engine>(
    order: &'q Order,
    plan: &'q Settlement,
    now: Timestamp,
) -> PortResult<Vec<Write<'q, DB>>> {
    let payment = payment_of(order)?;
    let mut writes = vec![
        Write {
            statement: statement::<DB>(
                "UPDATE orders SET status = $1, updated_at = $2 \
                 WHERE user_id = $3 AND id = $4 AND status = $5",
            )
            .text(plan.order.as_str())
            .int(now.0)
            .text(order.user_id.as_str())
            .text(order.id.as_str())
            .text(order.status.as_str()),
            exactly_one: Some(format!("order {}", order.id)),
        },
        Write {
            statement: statement::<DB>(
                "UPDATE payments SET status = $1, reference = COALESCE($2, reference), \
                 failure_reason = $3, updated_at = $4, gateway_owed = $7 \
                 WHERE id = $5 AND status = $6",
            )
            .text(plan.payment.as_str())
            .opt_text(plan.reference.as_deref())
            .opt_text(plan.failure_reason.as_deref())
            .int(now.0)
            .text(payment.id.as_str())
            .text(payment.status.as_str())
            .opt_text(plan.owed.map(GatewayOwed::as_str)),
            exactly_one: Some(format!("payment {}", payment.id)),
        },
    ];
    if plan.release_holds {
        writes.push(Write {
            statement: statement::<DB>(
                "UPDATE holds SET order_id = NULL WHERE user_id = $1 AND order_id = $2",
            )
            .text(order.user_id.as_str())
            .text(order.id.as_str()),
            exactly_one: None,
        });
    }
    Ok(writes)
}

/// The outbox event a settlement writes in its transaction, if any.
pub fn money_event(order: &Order, plan: &Settlement, now: Timestamp) -> Option<OutboxEvent> {
    match &plan.event {
        Some(MoneyEvent::OrderConfirmed) => Some(OutboxEvent::order_confirmed(order, now)),
        Some(MoneyEvent::PaymentFailed { reason }) => {
            Some(OutboxEvent::payment_failed(order, reason, now))
        }
        None => None,
    }
}

/// The writes of an answer that comes later: the gateway's reference, and the time.
pub fn await_answer<'q, DB: Engine>(
    order: &'q Order,
    reference: &'q str,
    now: Timestamp,
) -> PortResult<Vec<Write<'q, DB>>> {
    let payment = payment_of(order)?;
    Ok(vec![
        Write {
            statement: statement::<DB>(
                "UPDATE payments SET reference = $1, updated_at = $2 WHERE id = $3",
            )
            .text(reference)
            .int(now.0)
            .text(payment.id.as_str()),
            exactly_one: None,
        },
        Write {
            statement: statement::<DB>(
                "UPDATE orders SET updated_at = $1 WHERE user_id = $2 AND id = $3",
            )
            .int(now.0)
            .text(order.user_id.as_str())
            .text(order.id.as_str()),
            exactly_one: None,
        },
    ])
}

/// The writes of a new order that both engines share: the order row, and each hold taken
/// into it. Its lines and its payment are the backend's (PostgreSQL keys them by buyer).
pub fn insert_order<'q, DB: Engine>(order: &'q Order) -> Vec<Write<'q, DB>> {
    let mut writes = vec![Write {
        statement: statement::<DB>(
            "INSERT INTO orders (id, user_id, status, total, currency, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .text(order.id.as_str())
        .text(order.user_id.as_str())
        .text(order.status.as_str())
        .int(order.total.0)
        .text(order.currency.as_str())
        .int(order.created_at.0),
        exactly_one: None,
    }];
    writes.extend(order.items.iter().map(|item| Write {
        statement: link_hold::<DB>(order, &item.hold_id),
        exactly_one: None,
    }));
    writes
}

fn link_hold<'q, DB: Engine>(
    order: &'q Order,
    hold: &'q HoldId,
) -> crate::engine::Statement<'q, DB> {
    statement::<DB>("UPDATE holds SET order_id = $1 WHERE user_id = $2 AND id = $3")
        .text(order.id.as_str())
        .text(order.user_id.as_str())
        .text(hold.as_str())
}

/// The money move owed on a payment (`gateway_owed`, one row, maybe NULL).
pub const OWED_OF: &str = "SELECT gateway_owed FROM payments WHERE id = $1";

/// Payments with a money move owed to the gateway, oldest change first; bind the limit.
pub const OWED: &str = "SELECT id, order_id, reference, gateway_owed FROM payments \
     WHERE gateway_owed IS NOT NULL AND reference IS NOT NULL \
     ORDER BY updated_at, id LIMIT $1";

/// Reads a stored `gateway_owed` word.
pub fn owed_word(word: &str) -> PortResult<GatewayOwed> {
    GatewayOwed::parse(word).ok_or_else(|| internal(format!("unknown gateway_owed {word:?}")))
}

/// The gateway acknowledged `done`: what is owed becomes `next`, if `done` is still owed.
/// Changes one row if it applied.
pub fn owed_done<'q, DB: Engine>(
    payment: &'q PaymentId,
    done: GatewayOwed,
    next: Option<GatewayOwed>,
    now: Timestamp,
) -> crate::engine::Statement<'q, DB> {
    statement::<DB>(
        "UPDATE payments SET gateway_owed = $1, updated_at = $2 \
         WHERE id = $3 AND gateway_owed = $4",
    )
    .opt_text(next.map(GatewayOwed::as_str))
    .int(now.0)
    .text(payment.as_str())
    .text(done.as_str())
}

/// A row of [`OWED`]: `(id, order_id, reference, gateway_owed)`.
pub fn owed_payment(
    (id, order_id, reference, word): (String, String, String, String),
) -> PortResult<stampede_app::ports::OwedPayment> {
    Ok(stampede_app::ports::OwedPayment {
        payment_id: PaymentId::from_trusted(id),
        order_id: stampede_core::OrderId::from_trusted(order_id),
        reference,
        owed: owed_word(&word)?,
    })
}
