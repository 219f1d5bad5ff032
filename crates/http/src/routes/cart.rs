//! `/api/v1/cart`: reserve, list, resize, release.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;

use stampede_app::Principal;

use crate::dto::{CartDto, HoldDto, ReserveBody, ResizeBody};
use crate::extract::{ApiJson, Auth};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// The caller of a reserve: [`crate::extract::Auth`] with only the node's own rate limits. In a
/// cluster the shared per-buyer and per-device quotas are counted by the gate's script in the
/// same round trip as the take (one Redis command per reserve), and not at all when the node's
/// sold-out flag answers.
pub struct ReserveCaller(pub Principal);

impl FromRequestParts<AppState> for ReserveCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let principal = crate::extract::bearer_principal(parts, state).await?;
        state
            .limits
            .check_user(principal.user_id.as_str())
            .map_err(crate::rate_limited)?;
        if let Some(device) = crate::extract::device_id(&parts.headers) {
            state
                .limits
                .check_device(device)
                .map_err(crate::rate_limited)?;
        }
        Ok(ReserveCaller(principal))
    }
}

/// Reserves units of a sale: the hot path.
#[utoipa::path(operation_id = "reserve", post, path = "/api/v1/cart/items", tag = "cart", request_body = ReserveBody,
    params(("X-Admission-Token" = Option<String>, Header, description = "required when the sale has queue_required"),
        ("X-Device-Id" = Option<String>, Header, description = "the device that joined the queue; required with X-Admission-Token")),
    responses((status = 201, body = HoldDto), (status = 404, body = Problem, description = "`not_found`: no such sale"),
        (status = 409, body = Problem, description = "sold_out, sale_not_live, or hold_cap_reached (too many unpaid holds open at once for this account or device, across all sales)"),
        (status = 422, body = Problem, description = "limit_exceeded or invalid_input"),
        (status = 403, body = Problem, description = "`not_admitted`: the sale is sold through its waiting room and needs X-Admission-Token (from GET …/queue/me once admitted) with the X-Device-Id it was joined with; the detail says which of token, account, device or expiry failed"), (status = 429, body = Problem)),
    security(("bearer" = [])))]
pub async fn reserve(
    State(s): State<AppState>,
    ReserveCaller(who): ReserveCaller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ReserveBody>,
) -> Result<(StatusCode, Json<HoldDto>), ApiError> {
    let admission = headers
        .get("x-admission-token")
        .and_then(|v| v.to_str().ok());
    let device = crate::extract::device_id(&headers);
    let started = std::time::Instant::now();
    let result = s
        .app
        .reserve(&who, &body.sale_id, body.quantity, admission, device)
        .await
        .map_err(ApiError::from);
    // The dashboard's live view: answers about a real sale only (a made-up id is not_found,
    // a bad body invalid_input), so the window's keys are sales that exist.
    match &result {
        Ok(_) => s
            .reserve_stats
            .record(&body.sale_id, started.elapsed(), None),
        Err(e) if !matches!(e.code(), "not_found" | "invalid_input" | "internal") => s
            .reserve_stats
            .record(&body.sale_id, started.elapsed(), Some(e.code())),
        Err(_) => {}
    }
    let hold = result?;
    Ok((StatusCode::CREATED, Json(HoldDto::from(&hold))))
}

/// The caller's live holds.
#[utoipa::path(operation_id = "get_cart", get, path = "/api/v1/cart", tag = "cart",
    responses((status = 200, body = CartDto), (status = 401, body = Problem)), security(("bearer" = [])))]
pub async fn get_cart(
    State(s): State<AppState>,
    Auth(who): Auth,
) -> Result<Json<CartDto>, ApiError> {
    let cart = s.app.cart(&who).await?;
    Ok(Json(CartDto::from(&cart)))
}

/// Changes a hold's quantity.
#[utoipa::path(operation_id = "resize_hold", patch, path = "/api/v1/cart/items/{hold_id}", tag = "cart", request_body = ResizeBody,
    params(("hold_id" = String, Path)),
    responses((status = 200, body = HoldDto), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn resize(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(hold_id): Path<String>,
    ApiJson(body): ApiJson<ResizeBody>,
) -> Result<Json<HoldDto>, ApiError> {
    let hold = s.app.resize_hold(&who, &hold_id, body.quantity).await?;
    Ok(Json(HoldDto::from(&hold)))
}

/// Releases a hold: its stock is back at once.
#[utoipa::path(operation_id = "release_hold", delete, path = "/api/v1/cart/items/{hold_id}", tag = "cart",
    params(("hold_id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn release(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(hold_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.app.release_hold(&who, &hold_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
