//! Operations: liveness, readiness, Prometheus metrics, the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// Alive: the process answers.
#[utoipa::path(operation_id = "healthz", get, path = "/healthz", tag = "operations", responses((status = 200, body = serde_json::Value)))]
pub async fn healthz() -> impl IntoResponse {
    // A constant answer, written once.
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
}

/// Ready: the stores answer.
#[utoipa::path(operation_id = "readyz", get, path = "/readyz", tag = "operations",
    responses((status = 200, body = serde_json::Value), (status = 503, body = Problem)))]
pub async fn readyz(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    s.app
        .store
        .ping()
        .await
        .map_err(stampede_app::AppError::from)?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

/// Prometheus text exposition.
#[utoipa::path(operation_id = "get_metrics", get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", description = "Prometheus metrics")))]
pub async fn metrics(State(s): State<AppState>) -> Response {
    metrics::gauge!("stampede_rate_limit_keys").set(s.limits.tracked_keys() as f64);
    match &s.prometheus {
        Some(handle) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::OK, "").into_response(),
    }
}
