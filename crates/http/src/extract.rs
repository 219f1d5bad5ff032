//! Extractors that turn a request into checked input or a problem: JSON bodies (malformed,
//! wrong types, unknown fields → 422; too large → 413) and the bearer token (→ [`Principal`],
//! after which the per-user rate limit is counted).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use stampede_app::{AppError, Principal};

use crate::problem::ApiError;
use crate::state::AppState;

/// A JSON body that must parse into `T`, or the request gets a problem.
///
/// A number written with a zero fraction (`3.0`) is the integer it equals, as JSON Schema
/// reads it (and so the OpenAPI document): where `T` wants an integer, it is taken.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(req.headers()) {
            return Err(ApiError::invalid(
                "expected a body with `Content-Type: application/json`",
            ));
        }
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        parse_body(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body as [`ApiJson`] does once the body is read: a body that does not parse
/// is 422 with serde's message.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match serde_json::from_slice::<T>(bytes) {
        Ok(v) => Ok(v),
        Err(first) => {
            // Rare: only a body that did not parse as sent pays for the second reading.
            serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .filter(has_integral_float)
                .and_then(|mut v| {
                    integral_floats_as_integers(&mut v);
                    serde_json::from_value::<T>(v).ok()
                })
                .ok_or_else(|| ApiError::invalid(format!("invalid JSON body: {first}")))
        }
    }
}

fn has_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| mime.trim().to_ascii_lowercase())
        .is_some_and(|mime| {
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
}

fn has_integral_float(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(items) => items.iter().any(has_integral_float),
        serde_json::Value::Object(fields) => fields.values().any(has_integral_float),
        _ => false,
    }
}

/// Rewrites every number with a zero fraction that fits an `i64` as that integer.
fn integral_floats_as_integers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                // The range check keeps the cast exact (2^63 itself does not fit).
                if f.fract() == 0.0
                    && (-9.223_372_036_854_775e18..9.223_372_036_854_775e18).contains(&f)
                {
                    #[allow(clippy::cast_possible_truncation)]
                    let i = f as i64;
                    *v = serde_json::Value::from(i);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        serde_json::Value::Object(fields) => {
            fields.values_mut().for_each(integral_floats_as_integers);
        }
        _ => {}
    }
}

/// The raw body (for routes that check a signature over its bytes), with the same problems as
/// [`ApiJson`] when it cannot be read: too large → 413, stalled → 408.
pub struct ApiBytes(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(ApiBytes(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::too_large())
            }
            Err(rejection) if has_timeout_cause(&rejection) => Err(ApiError::body_timeout()),
            Err(rejection) => Err(ApiError::invalid(rejection.body_text())),
        }
    }
}

/// axum's `Query`, but a query string that does not parse (a word where a number goes, a
/// negative limit) is a 422 problem like every other bad input, not a plain-text 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(ApiError::invalid(rejection.body_text())),
        }
    }
}

/// Whether a body read failed because the body timeout (`RequestBodyTimeoutLayer`) fired.
fn has_timeout_cause(rejection: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = cause {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Parses a JSON body already read as bytes (for routes that also need the raw bytes), as
/// [`ApiJson`] does.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_body(bytes)
}

/// The caller named by the `Authorization: Bearer` token, or the 401 for its absence or
/// refusal. The rate limits are the extractor's to count ([`Auth`], or the reserve's own).
pub(crate) async fn bearer_principal(
    parts: &Parts,
    state: &AppState,
) -> Result<Principal, Response> {
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| ApiError::from(AppError::Unauthenticated).into_response())?;
    state
        .app
        .authenticate(token)
        .await
        .map_err(|e| ApiError::from(e).into_response())
}

/// The authenticated caller. Rejects with 401 without a valid token, 429 past the user's rate.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let principal = bearer_principal(parts, state).await?;
        state
            .limits
            .check_user_everywhere(principal.user_id.as_str())
            .await
            .map_err(crate::rate_limited)?;
        if let Some(device) = device_id(&parts.headers) {
            state
                .limits
                .check_device_everywhere(device)
                .await
                .map_err(crate::rate_limited)?;
        }
        Ok(Auth(principal))
    }
}

/// An authenticated admin: 401 without a valid token, 403 for anyone else, decided before
/// the body is read (a buyer learns nothing about what an admin route would accept).
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Auth(who) = Auth::from_request_parts(parts, state).await?;
        state
            .app
            .require_admin(&who)
            .map_err(|e| ApiError::from(e).into_response())?;
        Ok(Admin(who))
    }
}

/// The client's `X-Device-Id`, if it sent one (checked by the use cases where it matters).
pub fn device_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get("x-device-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// The client's address as seen on the socket.
pub fn client_ip(parts_ext: &axum::http::Extensions) -> Option<IpAddr> {
    parts_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}
