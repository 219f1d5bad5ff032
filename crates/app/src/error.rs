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
    /// The denial-of-inventory guard: the account or device already has as many unpaid
    /// holds open as allowed.
    #[error("{0}")]
    HoldCapReached(String),
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
    /// An adapter failed; kept whole (with its client library's error as the source) so the
    /// log shows the chain. A 503 when a retry may cure it, else a 500.
    #[error("{0}")]
    Port(#[from] PortError),
}

/// How an error shows outside the process: the HTTP status, the problem `code` and title the
/// client reads, and the `outcome` label metrics count it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClass {
    /// The HTTP status code.
    pub status: u16,
    /// The stable problem `code` (the contract's list).
    pub code: &'static str,
    /// The problem's human title.
    pub title: &'static str,
    /// The metric label: the code for a refusal a dashboard tells apart, `error` for the rest.
    pub label: &'static str,
}

impl ErrorClass {
    const fn new(
        status: u16,
        code: &'static str,
        title: &'static str,
        label: &'static str,
    ) -> Self {
        Self {
            status,
            code,
            title,
            label,
        }
    }
}

impl AppError {
    /// The one table from error to status, code, title and metric label. No catch-all: a new
    /// variant does not compile until it has its row.
    pub fn class(&self) -> ErrorClass {
        const ERROR: &str = "error";
        let c = ErrorClass::new;
        match self {
            AppError::InvalidInput(_) => c(422, "invalid_input", "Invalid input", "invalid_input"),
            AppError::Unauthenticated => {
                c(401, "unauthenticated", "Authentication required", ERROR)
            }
            AppError::BadCredentials => c(401, "bad_credentials", "Bad credentials", ERROR),
            AppError::Forbidden => c(403, "forbidden", "Forbidden", ERROR),
            AppError::NotFound => c(404, "not_found", "Not found", "not_found"),
            AppError::EmailTaken => c(409, "email_taken", "Email taken", ERROR),
            AppError::SoldOut => c(409, "sold_out", "Sold out", "sold_out"),
            AppError::SaleNotLive => c(409, "sale_not_live", "Sale not live", "sale_not_live"),
            AppError::LimitExceeded => c(422, "limit_exceeded", "Limit exceeded", "limit_exceeded"),
            AppError::NotAdmitted(_) => c(403, "not_admitted", "Not admitted", "not_admitted"),
            AppError::HoldCapReached(_) => c(
                409,
                "hold_cap_reached",
                "Too many unpaid holds",
                "hold_cap_reached",
            ),
            AppError::HoldExpired => c(409, "hold_expired", "Hold expired", ERROR),
            AppError::PaymentDeclined { .. } => {
                c(402, "payment_declined", "Payment declined", ERROR)
            }
            AppError::RateLimited { .. } => {
                c(429, "rate_limited", "Too many requests", "rate_limited")
            }
            AppError::BadSignature => c(401, "bad_signature", "Bad signature", ERROR),
            AppError::IdempotencyKeyReused => c(
                422,
                "idempotency_key_reused",
                "Idempotency key reused",
                ERROR,
            ),
            AppError::IdempotencyInProgress => {
                c(409, "idempotency_in_progress", "Request in progress", ERROR)
            }
            AppError::Conflict(_) => c(409, "conflict", "Conflict", ERROR),
            AppError::Unavailable(_) => c(503, "unavailable", "Service unavailable", ERROR),
            AppError::Internal(_) => c(500, "internal", "Internal error", ERROR),
            AppError::Port(PortError::Internal { .. }) => {
                c(500, "internal", "Internal error", ERROR)
            }
            AppError::Port(PortError::Unavailable { .. } | PortError::RoomNotLoaded) => {
                c(503, "unavailable", "Service unavailable", ERROR)
            }
        }
    }
}

impl AppError {
    /// A 503: the store or a service is down or slow, and a retry may succeed.
    pub fn is_unavailable(&self) -> bool {
        self.class().status == 503
    }

    /// A 500: a bug or a broken expectation, never the client's fault.
    pub fn is_internal(&self) -> bool {
        self.class().status == 500
    }

    /// Shorthand for an input error with a message for the client.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidInput(msg.into())
    }
}

impl From<Refusal> for AppError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::SaleNotLive => AppError::SaleNotLive,
            Refusal::LimitExceeded => AppError::LimitExceeded,
            Refusal::SoldOut => AppError::SoldOut,
            Refusal::HoldCapReached => AppError::HoldCapReached(
                "too many unpaid holds open at once (per account or per device, across all \
                 sales): pay for or release one first"
                    .into(),
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_under_their_own_code() {
        for e in [
            AppError::SoldOut,
            AppError::LimitExceeded,
            AppError::SaleNotLive,
            AppError::NotAdmitted(NotAdmitted::GrowingNeedsAdmission),
            AppError::HoldCapReached("x".into()),
            AppError::NotFound,
            AppError::invalid("x"),
            AppError::RateLimited {
                retry_after_secs: 1,
            },
        ] {
            let class = e.class();
            assert_eq!(class.label, class.code, "{e:?}");
        }
        for e in [
            AppError::Internal("x".into()),
            AppError::Unavailable("x".into()),
            AppError::HoldExpired,
            AppError::Conflict("x".into()),
        ] {
            assert_eq!(e.class().label, "error", "{e:?}");
        }
    }

    #[test]
    fn an_adapter_failure_keeps_its_cause_and_its_class() {
        use std::error::Error as _;
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = AppError::from(PortError::unavailable_because("redis", refused));
        assert_eq!(e.class().status, 503);
        assert!(e.is_unavailable());
        let port = e.source().expect("the port error is the source");
        assert_eq!(port.to_string(), "unavailable: redis: refused");
        let cause = port.source().expect("the client error is kept");
        assert!(cause.downcast_ref::<std::io::Error>().is_some());
        assert!(AppError::from(PortError::internal("x")).is_internal());
        assert!(AppError::from(PortError::RoomNotLoaded).is_unavailable());
    }
}
