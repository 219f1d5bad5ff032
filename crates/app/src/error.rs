//! The application layer's one error type. Every use case returns it; the HTTP layer maps each
//! variant to a status and a stable `code` in one table.

use stampede_core::judge::Refusal;

use crate::ports::{CheckoutError, HoldError, PortError};

/// Why a waiting-room sale refused a reservation: which of token, account, device or expiry
/// failed, so the buyer (and the shop's developer) can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    #[error("{0}")]
    Token(stampede_core::admission::TokenRefusal),
    #[error("growing a hold takes a new admission from the waiting room")]
    GrowingNeedsAdmission,
}

/// Why a use case did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("authentication required")]
    Unauthenticated,
    #[error("wrong email or password")]
    BadCredentials,
    #[error("you are not allowed to do this")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("sold out")]
    SoldOut,
    #[error("the sale is not live")]
    SaleNotLive,
    #[error("this would take you over the per-buyer limit")]
    LimitExceeded,
    #[error("not admitted: {0}")]
    NotAdmitted(NotAdmitted),
    #[error("a hold in this order has expired")]
    HoldExpired,
    #[error("payment declined: {reason}")]
    PaymentDeclined { order_id: String, reason: String },
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    #[error("bad or missing webhook signature")]
    BadSignature,
    #[error("this Idempotency-Key was used with another request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still in progress")]
    IdempotencyInProgress,
    #[error("{0}")]
    Conflict(String),
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    /// Shorthand for an input error with a message for the client.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidInput(msg.into())
    }
}

fn e_room_not_loaded() -> String {
    PortError::RoomNotLoaded.to_string()
}

impl From<PortError> for AppError {
    fn from(e: PortError) -> Self {
        match e {
            PortError::Unavailable(m) => AppError::Unavailable(m),
            PortError::Internal(m) => AppError::Internal(m),
            PortError::RoomNotLoaded => AppError::Unavailable(e_room_not_loaded()),
        }
    }
}

impl From<Refusal> for AppError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::SaleNotLive => AppError::SaleNotLive,
            Refusal::LimitExceeded => AppError::LimitExceeded,
            Refusal::SoldOut => AppError::SoldOut,
        }
    }
}

impl From<HoldError> for AppError {
    fn from(e: HoldError) -> Self {
        match e {
            HoldError::NotFound => AppError::NotFound,
            HoldError::Expired => AppError::HoldExpired,
            HoldError::InPendingOrder => {
                AppError::Conflict("the hold is part of an order awaiting payment".into())
            }
            HoldError::Refused(r) => r.into(),
        }
    }
}

impl From<CheckoutError> for AppError {
    fn from(e: CheckoutError) -> Self {
        match e {
            CheckoutError::HoldNotFound => AppError::NotFound,
            CheckoutError::HoldExpired => AppError::HoldExpired,
            CheckoutError::HoldInPendingOrder => {
                AppError::Conflict("a hold is already part of an order awaiting payment".into())
            }
            CheckoutError::MixedCurrencies => {
                AppError::invalid("all holds of one order must be in the same currency")
            }
        }
    }
}
