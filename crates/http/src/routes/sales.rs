//! Public sale reads and the live stock stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;

use stampede_app::ports::Event;
use stampede_core::SaleStatus;

use crate::dto::{SaleDto, SalesDto, SalesQuery};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// Lists sales, optionally by status.
#[utoipa::path(get, path = "/api/v1/sales", tag = "sales", params(SalesQuery),
    responses((status = 200, body = SalesDto), (status = 422, body = Problem)))]
pub async fn list(
    State(s): State<AppState>,
    Query(q): Query<SalesQuery>,
) -> Result<Json<SalesDto>, ApiError> {
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
    let now = s.app.clock.now();
    Ok(Json(SalesDto {
        sales: sales.iter().map(|sale| SaleDto::new(sale, now)).collect(),
    }))
}

/// One sale, with `server_time` for countdowns.
#[utoipa::path(get, path = "/api/v1/sales/{sale_id}", tag = "sales",
    params(("sale_id" = String, Path)),
    responses((status = 200, body = SaleDto), (status = 404, body = Problem)))]
pub async fn detail(
    State(s): State<AppState>,
    Path(sale_id): Path<String>,
) -> Result<Json<SaleDto>, ApiError> {
    let sale = s.app.sale(&sale_id).await?;
    Ok(Json(SaleDto::new(&sale, s.app.clock.now())))
}

/// Live `stock` and `status` events for one sale (Server-Sent Events). The first event is the
/// current stock, so a client needs no separate read.
#[utoipa::path(get, path = "/api/v1/sales/{sale_id}/events", tag = "sales",
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
