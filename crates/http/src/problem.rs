//! Every error leaves the server here, as `application/problem+json` (RFC 9457) with a stable
//! `code`. The table from error to status, code and title is `AppError::class` (with the
//! metric label, so the two can never disagree); a 5xx says little to the client and logs the
//! whole cause once.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use stampede_app::AppError;

/// Every `code` a problem can carry: the contract's list, and the `enum` of `Problem.code` in
/// the OpenAPI document. `tests::every_error_maps_to_a_listed_code` keeps it complete.
pub const PROBLEM_CODES: &[&str] = &[
    "invalid_input",
    "unauthenticated",
    "bad_credentials",
    "forbidden",
    "not_found",
    "email_taken",
    "sold_out",
    "sale_not_live",
    "limit_exceeded",
    "hold_cap_reached",
    "not_admitted",
    "hold_expired",
    "payment_declined",
    "rate_limited",
    "bad_signature",
    "idempotency_key_reused",
    "idempotency_in_progress",
    "payload_too_large",
    "request_timeout",
    "method_not_allowed",
    "unavailable",
    "conflict",
    "internal",
];

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem: `/problems/<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable word; see the contract's list.
    pub code: String,
    /// For `payment_declined`: the order that recorded the failed attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// For `payment_declined`: the gateway's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `rate_limited` and `unavailable`: seconds to wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

/// An error on its way to the client. Boxed so that `Result<_, ApiError>` stays small.
#[derive(Debug)]
pub struct ApiError(Box<Details>);

/// What an [`ApiError`] says.
#[derive(Debug)]
pub struct Details {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub order_id: Option<String>,
    pub reason: Option<String>,
    pub retry_after: Option<u64>,
    /// Extra kind marker (e.g. no route at all, as opposed to no such resource).
    pub kind: Option<&'static str>,
}

impl ApiError {
    /// A problem with status, code and detail.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self(Box::new(Details {
            status,
            code,
            title,
            detail: detail.into(),
            order_id: None,
            reason: None,
            retry_after: None,
            kind: None,
        }))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The stable machine-readable code (`sold_out`, `limit_exceeded`, …).
    pub fn code(&self) -> &'static str {
        self.0.code
    }

    /// 422 invalid_input.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "Invalid input",
            detail,
        )
    }

    /// 413 payload_too_large.
    pub fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Payload too large",
            "the request body is larger than the server accepts",
        )
    }

    /// 408 request_timeout: the body stopped arriving.
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "Request timeout",
            "the request body stopped arriving before it was complete",
        )
    }

    /// 404 for a path no route serves.
    pub fn no_route() -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found",
            "no such route",
        );
        e.0.kind = Some("/problems/no_such_route");
        e
    }

    /// 405 method_not_allowed.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            "this route does not accept that method",
        )
    }

    /// 500 internal; the cause is logged, not sent.
    pub fn internal(cause: &str) -> Self {
        tracing::error!(cause, "internal error");
        metrics::counter!("stampede_internal_errors_total").increment(1);
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "something went wrong on our side; it has been logged",
        )
    }

    /// The body as it is sent.
    pub fn problem(&self) -> Problem {
        let d = &self.0;
        Problem {
            kind: d
                .kind
                .map(str::to_owned)
                .unwrap_or_else(|| format!("/problems/{}", d.code)),
            title: d.title.to_owned(),
            status: d.status.as_u16(),
            detail: d.detail.clone(),
            code: d.code.to_owned(),
            order_id: d.order_id.clone(),
            reason: d.reason.clone(),
            retry_after: d.retry_after,
        }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        ApiError::from_ref(&e)
    }
}

impl ApiError {
    /// The problem an error is answered with. Status, code and title come from the one table,
    /// [`AppError::class`]; what follows adds the few fields some problems carry, and keeps a
    /// 5xx's cause in the log only.
    pub fn from_ref(e: &AppError) -> Self {
        let class = e.class();
        let status =
            StatusCode::from_u16(class.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut out = ApiError::new(status, class.code, class.title, e.to_string());
        match e {
            AppError::PaymentDeclined { order_id, reason } => {
                out.0.order_id = Some(order_id.clone());
                out.0.reason = Some(reason.clone());
            }
            AppError::RateLimited { retry_after_secs } => {
                out.0.retry_after = Some(*retry_after_secs)
            }
            AppError::Unavailable(cause) => {
                tracing::warn!(cause, "unavailable");
                out.0.detail = "temporarily unavailable; retry shortly".to_owned();
                out.0.retry_after = Some(1);
            }
            AppError::Internal(cause) => return ApiError::internal(cause),
            AppError::Port(e) if class.status == 503 => {
                tracing::warn!(cause = %chain(e), "unavailable");
                out.0.detail = "temporarily unavailable; retry shortly".to_owned();
                out.0.retry_after = Some(1);
            }
            AppError::Port(e) => return ApiError::internal(&chain(e)),
            AppError::InvalidInput(_)
            | AppError::Unauthenticated
            | AppError::BadCredentials
            | AppError::Forbidden
            | AppError::NotFound
            | AppError::EmailTaken
            | AppError::SoldOut
            | AppError::SaleNotLive
            | AppError::LimitExceeded
            | AppError::NotAdmitted(_)
            | AppError::HoldCapReached(_)
            | AppError::HoldExpired
            | AppError::BadSignature
            | AppError::IdempotencyKeyReused
            | AppError::IdempotencyInProgress
            | AppError::Conflict(_) => {}
        }
        out
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let d = &self.0;
        let mut res = (d.status, body).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = d.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if d.status == StatusCode::UNAUTHORIZED && d.code == "unauthenticated" {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// An error and every cause under it, for the log: `a: b: c` without repeating a cause whose
/// words its parent already shows.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let words = cause.to_string();
        if !out.contains(&words) {
            out.push_str(": ");
            out.push_str(&words);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_a_listed_code() {
        let errors = [
            AppError::InvalidInput("x".into()),
            AppError::Unauthenticated,
            AppError::BadCredentials,
            AppError::Forbidden,
            AppError::NotFound,
            AppError::EmailTaken,
            AppError::SoldOut,
            AppError::SaleNotLive,
            AppError::LimitExceeded,
            AppError::HoldCapReached("x".into()),
            AppError::NotAdmitted(stampede_app::error::NotAdmitted::GrowingNeedsAdmission),
            AppError::HoldExpired,
            AppError::PaymentDeclined {
                order_id: "o".into(),
                reason: "r".into(),
            },
            AppError::RateLimited {
                retry_after_secs: 1,
            },
            AppError::BadSignature,
            AppError::IdempotencyKeyReused,
            AppError::IdempotencyInProgress,
            AppError::Conflict("x".into()),
            AppError::Unavailable("x".into()),
            AppError::Internal("x".into()),
        ];
        let mut codes: Vec<&str> = errors
            .into_iter()
            .map(|e| ApiError::from(e).code())
            .collect();
        codes.extend([
            ApiError::too_large().code(),
            ApiError::body_timeout().code(),
            ApiError::no_route().code(),
            ApiError::method_not_allowed().code(),
        ]);
        for code in codes {
            assert!(PROBLEM_CODES.contains(&code), "{code} is not listed");
        }
    }
}
