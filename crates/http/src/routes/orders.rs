//! `/api/v1/orders` and the payment webhook. Checkout honours `Idempotency-Key`: the first
//! answer is stored and replayed byte for byte; the same key with another body is 422; a
//! duplicate while the first is in flight is 409.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};

use stampede_app::checkout::{CheckoutRequest, KeyedCheckout};
use stampede_app::{AppError, Principal};
use stampede_core::Order;

use crate::dto::{OrderBody, OrderDto, OrdersDto};
use crate::extract::{parse_json, ApiBytes, Auth};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// Turns holds into an order and pays for it.
#[utoipa::path(operation_id = "create_order", post, path = "/api/v1/orders", tag = "orders", request_body = OrderBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key get the first answer")),
    responses((status = 201, body = OrderDto), (status = 402, body = Problem, description = "payment_declined"),
        (status = 404, body = Problem), (status = 409, body = Problem, description = "hold_expired, idempotency_in_progress"),
        (status = 422, body = Problem, description = "invalid_input, idempotency_key_reused")),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    Auth(who): Auth,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<Response, ApiError> {
    // Checkout moves money: a stricter per-user limit on top of the general one.
    if let Err(refused) = s
        .limits
        .check_checkout_everywhere(who.user_id.as_str())
        .await
    {
        return Ok(crate::rate_limited(refused));
    }
    let parsed: OrderBody = parse_json(&body)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid("Idempotency-Key must be ASCII"))?
                .to_owned(),
        ),
    };
    let Some(key) = key else {
        let (status, bytes) = render(&checkout(&s, &who, parsed).await);
        return Ok(json_response(status, bytes, false));
    };
    // The same order in other whitespace or field order is the same request.
    let canonical = serde_json::to_value(&parsed)
        .map(|v| v.to_string())
        .unwrap_or_default();
    let request_hash = hex::encode(Sha256::digest(canonical.as_bytes()));
    let render_text = |result: &Result<Order, AppError>| {
        let (status, bytes) = render(result);
        (
            status.as_u16(),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    };
    let answer = s
        .app
        .checkout_keyed(&who, request(parsed), &key, &request_hash, render_text)
        .await?;
    let (status, body, replayed) = match answer {
        KeyedCheckout::Ran { status, body, .. } => (status, body, false),
        KeyedCheckout::Replay { status, body } => (status, body, true),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok(json_response(status, body.into_bytes(), replayed))
}

/// The answer a checkout's result gets: 201 and the order, or the problem.
fn render(result: &Result<Order, AppError>) -> (StatusCode, Vec<u8>) {
    match result {
        Ok(order) => (
            StatusCode::CREATED,
            serde_json::to_vec(&OrderDto::from(order)).unwrap_or_default(),
        ),
        Err(e) => {
            let e = ApiError::from_ref(e);
            (
                e.status(),
                serde_json::to_vec(&e.problem()).unwrap_or_default(),
            )
        }
    }
}

fn request(body: OrderBody) -> CheckoutRequest {
    CheckoutRequest {
        hold_ids: body.hold_ids,
        method: body.payment.method,
        token: body.payment.token,
    }
}

async fn checkout(s: &AppState, who: &Principal, body: OrderBody) -> Result<Order, AppError> {
    s.app.checkout(who, request(body)).await
}

fn json_response(status: StatusCode, body: Vec<u8>, replayed: bool) -> Response {
    let mut res = (status, body).into_response();
    let ct = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    if replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

/// The caller's orders, newest first.
#[utoipa::path(operation_id = "list_orders", get, path = "/api/v1/orders", tag = "orders",
    responses((status = 200, body = OrdersDto), (status = 401, body = Problem)), security(("bearer" = [])))]
pub async fn list(State(s): State<AppState>, Auth(who): Auth) -> Result<Json<OrdersDto>, ApiError> {
    let orders = s.app.orders(&who).await?;
    Ok(Json(OrdersDto {
        orders: orders.iter().map(OrderDto::from).collect(),
    }))
}

/// One of the caller's orders (someone else's is 404).
#[utoipa::path(operation_id = "get_order", get, path = "/api/v1/orders/{order_id}", tag = "orders", params(("order_id" = String, Path)),
    responses((status = 200, body = OrderDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn detail(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(order_id): Path<String>,
) -> Result<Json<OrderDto>, ApiError> {
    Ok(Json(OrderDto::from(&s.app.order(&who, &order_id).await?)))
}

/// Cancels an order: a paid one is refunded and its stock returns.
#[utoipa::path(operation_id = "cancel_order", post, path = "/api/v1/orders/{order_id}/cancel", tag = "orders", params(("order_id" = String, Path)),
    responses((status = 200, body = OrderDto), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(order_id): Path<String>,
) -> Result<Json<OrderDto>, ApiError> {
    Ok(Json(OrderDto::from(
        &s.app.cancel_order(&who, &order_id).await?,
    )))
}

/// A payment gateway event, signed with `Stampede-Signature`.
#[utoipa::path(operation_id = "payment_webhook", post, path = "/api/v1/payments/webhook", tag = "payments",
    params(("Stampede-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">")),
    request_body(content = serde_json::Value, description = "{id, type: payment.succeeded | payment.failed, data: {reference, reason?}}"),
    responses((status = 204), (status = 401, body = Problem), (status = 422, body = Problem)))]
pub async fn webhook(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<StatusCode, ApiError> {
    let signature = headers
        .get("stampede-signature")
        .and_then(|v| v.to_str().ok());
    s.app.payment_webhook(&body, signature).await?;
    Ok(StatusCode::NO_CONTENT)
}
