//! Public sale reads and the live stock stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::BroadcastStream;

use stampede_app::ports::Event;
use stampede_core::SaleStatus;

use crate::dto::{SaleDto, SalesDto, SalesQuery};
use crate::extract::ApiQuery;
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// A cacheable JSON answer: `Cache-Control` allows a CDN or browser to keep it as long as the
/// server's own read cache may lag, and a weak `ETag` over the content (without `server_time`,
/// which changes every millisecond) lets a client revalidate with `If-None-Match` for a 304.
pub(crate) fn cacheable<T: serde::Serialize>(
    s: &AppState,
    headers: &HeaderMap,
    body: T,
) -> Response {
    let value = match serde_json::to_value(&body) {
        Ok(v) => v,
        Err(_) => return Json(body).into_response(),
    };
    let mut content = value.clone();
    strip_server_time(&mut content);
    let digest = Sha256::digest(content.to_string().as_bytes());
    let etag = format!("W/\"{}\"", hex::encode(&digest[..12]));
    let max_age = s.app.config.read_cache_ms.div_ceil(1000);
    let cache_control = if max_age == 0 {
        "no-cache".to_owned()
    } else {
        format!("public, max-age={max_age}")
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(value).into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cache_control) {
        h.insert(header::CACHE_CONTROL, v);
    }
    response
}

fn strip_server_time(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("server_time");
            map.values_mut().for_each(strip_server_time);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_server_time),
        _ => {}
    }
}

/// Lists sales: every sale (optionally by status), or with any browse parameter a page of
/// them by category, status, drop and name.
#[utoipa::path(operation_id = "list_sales", get, path = "/api/v1/sales", tag = "sales", params(SalesQuery),
    responses((status = 200, body = SalesDto), (status = 304, description = "not modified (If-None-Match)"),
        (status = 422, body = Problem)))]
pub async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<SalesQuery>,
) -> Result<Response, ApiError> {
    let now = s.app.clock.now();
    if q.is_browse() {
        let page = s.app.browse_sales(&q.browse()).await?;
        let body = SalesDto {
            sales: page
                .items
                .iter()
                .map(|sale| SaleDto::new(sale, now))
                .collect(),
            next: page.next,
        };
        return Ok(cacheable(&s, &headers, body));
    }
    let statuses = match q.status.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            text.split(',')
                .map(|w| {
                    SaleStatus::parse(w.trim()).ok_or_else(|| {
                        ApiError::invalid(format!(
                            "unknown status {w:?}; use live, scheduled, paused or ended"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let sales = s.app.list_sales(statuses.as_deref()).await?;
    let body = SalesDto {
        sales: sales.iter().map(|sale| SaleDto::new(sale, now)).collect(),
        next: None,
    };
    Ok(cacheable(&s, &headers, body))
}

/// One sale, with `server_time` for countdowns.
#[utoipa::path(operation_id = "get_sale", get, path = "/api/v1/sales/{sale_id}", tag = "sales",
    params(("sale_id" = String, Path)),
    responses((status = 200, body = SaleDto), (status = 304, description = "not modified (If-None-Match)"),
        (status = 404, body = Problem)))]
pub async fn detail(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(sale_id): Path<String>,
) -> Result<Response, ApiError> {
    let sale = s.app.sale(&sale_id).await?;
    Ok(cacheable(
        &s,
        &headers,
        SaleDto::new(&sale, s.app.clock.now()),
    ))
}

/// Live `stock` and `status` events for one sale (Server-Sent Events). The first event is the
/// current stock, so a client needs no separate read.
#[utoipa::path(operation_id = "stream_sale_events", get, path = "/api/v1/sales/{sale_id}/events", tag = "sales",
    params(("sale_id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", description = "stock and status events"),
        (status = 404, body = Problem)))]
pub async fn events(
    State(s): State<AppState>,
    Path(sale_id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let sale = s.app.sale(&sale_id).await?;
    let now = s.app.clock.now();
    let id = sale.id.clone();
    let first = stock_event(sale.stock.available, sale.stock.held, sale.stock.sold);
    let first_status = SseEvent::default()
        .event("status")
        .data(serde_json::json!({ "status": sale.status_at(now).as_str() }).to_string());
    let live = BroadcastStream::new(s.app.bus.subscribe()).filter_map(move |ev| {
        let id = id.clone();
        async move {
            match ev {
                Ok(Event::Stock {
                    sale_id,
                    available,
                    held,
                    sold,
                }) if sale_id == id => Some(Ok(stock_event(available, held, sold))),
                Ok(Event::SaleStatus { sale_id, status }) if sale_id == id => {
                    Some(Ok(SseEvent::default()
                        .event("status")
                        .data(serde_json::json!({ "status": status }).to_string())))
                }
                _ => None,
            }
        }
    });
    let stream = stream::iter([Ok(first), Ok(first_status)])
        .chain(live)
        .take_until(s.shutting_down());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn stock_event(available: i64, held: i64, sold: i64) -> SseEvent {
    SseEvent::default()
        .event("stock")
        .data(serde_json::json!({ "available": available, "held": held, "sold": sold }).to_string())
}
