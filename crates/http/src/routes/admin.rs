//! `/api/v1/admin/*`: sale management, metrics and the audit log (role `admin`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use serde::Serialize;
use utoipa::ToSchema;

use stampede_app::ports::AuditFilter;
use stampede_app::sales::{SaleAction, SaleDraft, SalePatch};

use crate::dto::{
    parse_time, rfc3339, AuditDto, AuditEntryDto, AuditQuery, CreateSaleBody, PatchSaleBody,
    SaleDto, SaleMetricsDto,
};
use crate::extract::{Admin, ApiJson, ApiQuery};
use crate::live::ReserveSnapshot;
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// Creates a sale.
#[utoipa::path(operation_id = "create_sale", post, path = "/api/v1/admin/sales", tag = "admin", request_body = CreateSaleBody,
    responses((status = 201, body = SaleDto), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_sale(
    State(s): State<AppState>,
    Admin(who): Admin,
    ApiJson(b): ApiJson<CreateSaleBody>,
) -> Result<(StatusCode, Json<SaleDto>), ApiError> {
    let draft = SaleDraft {
        name: b.name,
        description: b.description,
        original_price: b.original_price,
        sale_price: b.sale_price,
        discount_percent: b.discount_percent,
        currency: b.currency,
        total_stock: b.total_stock,
        starts_at: b
            .starts_at
            .map(|t| parse_time("starts_at", &t))
            .transpose()?,
        ends_at: b.ends_at.map(|t| parse_time("ends_at", &t)).transpose()?,
        per_user_limit: b.per_user_limit,
        queue_required: b.queue_required,
        hold_seconds: b.hold_seconds,
        product_id: b.product_id,
        drop_id: b.drop_id,
        category: b.category,
    };
    let sale = s.app.create_sale(&who, draft).await?;
    Ok((
        StatusCode::CREATED,
        Json(SaleDto::new(&sale, s.app.clock.now())),
    ))
}

/// Changes a sale before it starts.
#[utoipa::path(operation_id = "update_sale", patch, path = "/api/v1/admin/sales/{sale_id}", tag = "admin", request_body = PatchSaleBody,
    params(("sale_id" = String, Path)),
    responses((status = 200, body = SaleDto), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn patch_sale(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(sale_id): Path<String>,
    ApiJson(b): ApiJson<PatchSaleBody>,
) -> Result<Json<SaleDto>, ApiError> {
    let patch = SalePatch {
        name: b.name,
        description: b.description,
        original_price: b.original_price,
        sale_price: b.sale_price,
        currency: b.currency,
        total_stock: b.total_stock,
        starts_at: b
            .starts_at
            .map(|t| parse_time("starts_at", &t))
            .transpose()?,
        ends_at: b.ends_at.map(|t| parse_time("ends_at", &t)).transpose()?,
        per_user_limit: b.per_user_limit,
        queue_required: b.queue_required,
        hold_seconds: b.hold_seconds,
    };
    let sale = s.app.patch_sale(&who, &sale_id, patch).await?;
    Ok(Json(SaleDto::new(&sale, s.app.clock.now())))
}

async fn control(
    s: AppState,
    who: stampede_app::Principal,
    id: String,
    action: SaleAction,
) -> Result<Json<SaleDto>, ApiError> {
    let sale = s.app.control_sale(&who, &id, action).await?;
    Ok(Json(SaleDto::new(&sale, s.app.clock.now())))
}

/// Pauses a sale: no new reservations until resumed.
#[utoipa::path(operation_id = "pause_sale", post, path = "/api/v1/admin/sales/{sale_id}/pause", tag = "admin", params(("sale_id" = String, Path)),
    responses((status = 200, body = SaleDto), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn pause(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(id): Path<String>,
) -> Result<Json<SaleDto>, ApiError> {
    control(s, who, id, SaleAction::Pause).await
}

/// Resumes a paused sale.
#[utoipa::path(operation_id = "resume_sale", post, path = "/api/v1/admin/sales/{sale_id}/resume", tag = "admin", params(("sale_id" = String, Path)),
    responses((status = 200, body = SaleDto), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn resume(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(id): Path<String>,
) -> Result<Json<SaleDto>, ApiError> {
    control(s, who, id, SaleAction::Resume).await
}

/// Ends a sale for good.
#[utoipa::path(operation_id = "stop_sale", post, path = "/api/v1/admin/sales/{sale_id}/stop", tag = "admin", params(("sale_id" = String, Path)),
    responses((status = 200, body = SaleDto), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn stop(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(id): Path<String>,
) -> Result<Json<SaleDto>, ApiError> {
    control(s, who, id, SaleAction::Stop).await
}

/// A sale's figures and invariant check, from the judge.
#[utoipa::path(operation_id = "get_sale_metrics", get, path = "/api/v1/admin/sales/{sale_id}/metrics", tag = "admin", params(("sale_id" = String, Path)),
    responses((status = 200, body = SaleMetricsDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn metrics(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(id): Path<String>,
) -> Result<Json<SaleMetricsDto>, ApiError> {
    Ok(Json(s.app.sale_metrics(&who, &id).await?.into()))
}

/// The append-only audit log, oldest first.
#[utoipa::path(operation_id = "list_audit_entries", get, path = "/api/v1/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = AuditDto), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn audit(
    State(s): State<AppState>,
    Admin(who): Admin,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditDto>, ApiError> {
    let limit = crate::dto::page_limit(q.limit, 100, 1000)?;
    let entries = s
        .app
        .audit_log(
            &who,
            AuditFilter {
                actor: q.actor,
                action: q.action,
                after: q.after,
                limit,
            },
        )
        .await?;
    let next = if entries.len() == limit as usize {
        entries.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok(Json(AuditDto {
        entries: entries.into_iter().map(AuditEntryDto::from).collect(),
        next,
    }))
}

/// One second of a sale, for the admin dashboard: the judge's figures, rates derived from
/// them, the waiting room's, and this node's view of the reserve path.
#[derive(Debug, Serialize, ToSchema)]
pub struct SaleLiveDto {
    /// The server's clock when the figures were read.
    pub at: String,
    /// scheduled | live | paused | ended
    pub status: String,
    /// Stock, orders, expiries and the invariant check, from the judge (as `…/metrics`).
    pub metrics: SaleMetricsDto,
    /// Orders confirmed per second: the judge's order count, difference over the last tick.
    pub orders_per_sec: f64,
    /// Holds expired per second, the same way.
    pub holds_expired_per_sec: f64,
    /// Buyers admitted from the waiting room per second (0 without a room).
    pub admission_rate_per_sec: f64,
    /// Admission tokens refused, by reason (forged, expired, replayed, …); empty without a room.
    pub room_refusals: BTreeMap<String, u64>,
    /// Reserve latency p50/p99 over the last 10 s and refusals by code, as answered by this
    /// node (each node keeps its own window).
    pub reserve: ReserveSnapshot,
}

/// Where a live stream is between ticks: the previous counts, to turn them into rates.
struct LiveTick {
    at: Instant,
    orders: i64,
    holds_expired: i64,
}

async fn live_figures(
    s: &AppState,
    who: &stampede_app::Principal,
    id: &str,
    last: &mut Option<LiveTick>,
) -> Result<SaleLiveDto, ApiError> {
    let metrics = s.app.sale_metrics(who, id).await?;
    let sale = s.app.sale(id).await?;
    let now = Instant::now();
    let (orders_per_sec, holds_expired_per_sec) = match last.as_ref() {
        Some(prev) => {
            let secs = now.duration_since(prev.at).as_secs_f64().max(0.001);
            (
                (metrics.orders - prev.orders).max(0) as f64 / secs,
                (metrics.holds_expired - prev.holds_expired).max(0) as f64 / secs,
            )
        }
        None => (0.0, 0.0),
    };
    *last = Some(LiveTick {
        at: now,
        orders: metrics.orders,
        holds_expired: metrics.holds_expired,
    });
    // A sale without a waiting room has no report: its room figures are zero.
    let room = s.app.room_report(who, id).await.ok();
    let at = s.app.clock.now();
    Ok(SaleLiveDto {
        at: rfc3339(at),
        status: sale.status_at(at).as_str().to_owned(),
        metrics: metrics.into(),
        orders_per_sec,
        holds_expired_per_sec,
        admission_rate_per_sec: room.as_ref().map_or(0.0, |r| r.admission_rate_per_sec),
        room_refusals: room.map(|r| r.refusals).unwrap_or_default(),
        reserve: s.reserve_stats.snapshot(id),
    })
}

/// A sale's figures, live: one `figures` event (`SaleLiveDto`) per second, for the admin
/// dashboard. Each tick reads the judge's counts (as `…/metrics` does), so it costs one stock
/// audit per second per viewer.
#[utoipa::path(operation_id = "stream_sale_live", get, path = "/api/v1/admin/sales/{sale_id}/live", tag = "admin", params(("sale_id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", description = "one figures event (SaleLiveDto) per second"),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn live(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let mut last = None;
    let first = live_figures(&s, &who, &id, &mut last).await?;
    let first_event = figures_event(&first);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = s.clone();
    let live = stream::unfold((tick, last, false), move |(mut tick, mut last, started)| {
        let s = state.clone();
        let who = who.clone();
        let id = id.clone();
        async move {
            if !started {
                // The interval's first tick is immediate: the first figures were just sent.
                tick.tick().await;
            }
            loop {
                tick.tick().await;
                match live_figures(&s, &who, &id, &mut last).await {
                    Ok(dto) => return Some((Ok(figures_event(&dto)), (tick, last, true))),
                    // The sale went away or the admin lost the role: end the stream.
                    Err(e) if matches!(e.code(), "not_found" | "forbidden" | "unauthenticated") => {
                        return None
                    }
                    Err(_) => continue,
                }
            }
        }
    });
    let stream = stream::iter([Ok(first_event)])
        .chain(live)
        .take_until(s.shutting_down());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn figures_event(dto: &SaleLiveDto) -> SseEvent {
    SseEvent::default()
        .event("figures")
        .data(serde_json::to_string(dto).unwrap_or_default())
}
