//! Extractors that turn a request into checked input or a problem: JSON bodies (malformed,
//! wrong types, unknown fields → 422; too large → 413) and the bearer token (→ [`Principal`],
//! after which the per-user rate limit is counted).

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use stampede_app::{AppError, Principal};

use crate::problem::ApiError;
use crate::state::AppState;

/// A JSON body that must parse into `T`, or the request gets a problem.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_problem(&rejection)),
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

/// Maps a JSON rejection: too large → 413, everything else → 422 with serde's message.
pub fn json_problem(rejection: &JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large()
    } else {
        ApiError::invalid(rejection.body_text())
    }
}

/// Parses a JSON body already read as bytes (for routes that also need the raw bytes).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// The authenticated caller. Rejects with 401 without a valid token, 429 past the user's rate.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
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
        let principal = state
            .app
            .authenticate(token)
            .await
            .map_err(|e| ApiError::from(e).into_response())?;
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
