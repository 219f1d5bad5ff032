//! Holds, orders and payments, and the only ways each may change state.
//!
//! A hold is pending until it ends exactly once: converted (paid), released (by its buyer) or
//! expired (by the sweeper or the judge's clock). An order records one checkout attempt over
//! some holds; a payment records the gateway's side of it. Every transition goes through a
//! function here that refuses an illegal move, so no adapter can invent one.

use serde::{Deserialize, Serialize};

use crate::{Currency, HoldId, Money, OrderId, PaymentId, SaleId, Timestamp, UserId};

/// An illegal state change: a bug or a race that lost; callers map it to a conflict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: &'static str,
    pub to: &'static str,
}

macro_rules! word_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The stored and wire word.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $word),+ }
            }

            /// Parses the stored word.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($word => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

word_enum!(
    /// Where a hold is in its life. Only `Active` is not final.
    HoldState {
        Active => "active",
        Converted => "converted",
        Released => "released",
        Expired => "expired",
    }
);

impl HoldState {
    /// Ends an active hold; any other start is refused, which is what makes "ends exactly once"
    /// hold.
    pub fn end(self, to: HoldState) -> Result<HoldState, TransitionError> {
        match (self, to) {
            (
                HoldState::Active,
                HoldState::Converted | HoldState::Released | HoldState::Expired,
            ) => Ok(to),
            _ => Err(TransitionError {
                from: self.as_str(),
                to: to.as_str(),
            }),
        }
    }
}

word_enum!(
    /// The contract's order statuses.
    OrderStatus {
        PendingPayment => "pending_payment",
        Confirmed => "confirmed",
        PaymentFailed => "payment_failed",
        Cancelled => "cancelled",
        Refunded => "refunded",
    }
);

impl OrderStatus {
    /// The legal moves: a pending order is paid, fails or is cancelled; a paid one can only be
    /// refunded; the rest are final.
    pub fn transition(self, to: OrderStatus) -> Result<OrderStatus, TransitionError> {
        use OrderStatus::*;
        match (self, to) {
            (PendingPayment, Confirmed | PaymentFailed | Cancelled) | (Confirmed, Refunded) => {
                Ok(to)
            }
            _ => Err(TransitionError {
                from: self.as_str(),
                to: to.as_str(),
            }),
        }
    }
}

word_enum!(
    /// The gateway's side of one payment attempt.
    PaymentStatus {
        Pending => "pending",
        Authorized => "authorized",
        Captured => "captured",
        Declined => "declined",
        Voided => "voided",
        Refunded => "refunded",
    }
);

impl PaymentStatus {
    /// The legal moves. `Captured` is the only state in which money has moved to the shop, and
    /// it can only be left by a refund.
    pub fn transition(self, to: PaymentStatus) -> Result<PaymentStatus, TransitionError> {
        use PaymentStatus::*;
        match (self, to) {
            (Pending, Authorized | Captured | Declined | Voided)
            | (Authorized, Captured | Voided)
            | (Captured, Refunded) => Ok(to),
            _ => Err(TransitionError {
                from: self.as_str(),
                to: to.as_str(),
            }),
        }
    }
}

/// A reservation of units of one sale for one buyer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: HoldId,
    pub sale_id: SaleId,
    pub user_id: UserId,
    pub quantity: u32,
    /// The price at the moment of reserving: what the buyer will be charged.
    pub unit_price: Money,
    pub currency: Currency,
    pub state: HoldState,
    pub created_at: Timestamp,
    /// When the stock returns by itself, by the judge's clock.
    pub expires_at: Timestamp,
}

impl Hold {
    /// Active and not past its expiry at `now`: the only hold an order may use.
    pub fn is_live_at(&self, now: Timestamp) -> bool {
        self.state == HoldState::Active && now < self.expires_at
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub sale_id: SaleId,
    pub hold_id: HoldId,
    pub quantity: u32,
    pub unit_price: Money,
}

/// One payment attempt, with the gateway's reference and, if it failed, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub id: PaymentId,
    pub order_id: OrderId,
    pub status: PaymentStatus,
    pub method: String,
    /// The gateway's id for this payment; how webhooks find it.
    pub reference: Option<String>,
    pub amount: Money,
    pub failure_reason: Option<String>,
    pub updated_at: Timestamp,
}

/// One checkout attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub user_id: UserId,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total: Money,
    pub currency: Currency,
    pub created_at: Timestamp,
    pub payment: Option<Payment>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_ends_once() {
        let ended = HoldState::Active.end(HoldState::Expired).unwrap();
        assert!(ended.end(HoldState::Converted).is_err());
        assert!(HoldState::Active.end(HoldState::Active).is_err());
        assert!(HoldState::Released.end(HoldState::Expired).is_err());
    }

    #[test]
    fn orders_and_payments_only_move_forward() {
        use OrderStatus::*;
        assert!(PendingPayment.transition(Confirmed).is_ok());
        assert!(Confirmed.transition(Refunded).is_ok());
        assert!(Refunded.transition(Confirmed).is_err());
        assert!(PaymentFailed.transition(Confirmed).is_err());
        assert!(Cancelled.transition(Refunded).is_err());
        assert!(PaymentStatus::Captured
            .transition(PaymentStatus::Voided)
            .is_err());
        assert!(PaymentStatus::Declined
            .transition(PaymentStatus::Captured)
            .is_err());
    }

    #[test]
    fn words_round_trip() {
        for s in [
            OrderStatus::PendingPayment,
            OrderStatus::Confirmed,
            OrderStatus::PaymentFailed,
            OrderStatus::Cancelled,
            OrderStatus::Refunded,
        ] {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
    }
}
