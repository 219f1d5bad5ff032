//! `/api/v1/admin/*`: sale management, metrics and the audit log (role `admin`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;

use stampede_app::ports::AuditFilter;
use stampede_app::sales::{SaleAction, SaleDraft, SalePatch};

use crate::dto::{
    parse_time, AuditDto, AuditEntryDto, AuditQuery, CreateSaleBody, PatchSaleBody, SaleDto,
    SaleMetricsDto,
};
use crate::extract::{ApiJson, Auth};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// Creates a sale.
#[utoipa::path(post, path = "/api/v1/admin/sales", tag = "admin", request_body = CreateSaleBody,
    responses((status = 201, body = SaleDto), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_sale(
    State(s): State<AppState>,
    Auth(who): Auth,
    ApiJson(b): ApiJson<CreateSaleBody>,
) -> Result<(StatusCode, Json<SaleDto>), ApiError> {
    s.app.require_admin(&who)?;
    let draft = SaleDraft {
        name: b.name,
        description: b.description,
        original_price: b.original_price,
        sale_price: b.sale_price,
        currency: b.currency,
        total_stock: b.total_stock,
        starts_at: parse_time("starts_at", &b.starts_at)?,
        ends_at: parse_time("ends_at", &b.ends_at)?,
        per_user_limit: b.per_user_limit,
        queue_required: b.queue_required,
        hold_seconds: b.hold_seconds,
    };
    let sale = s.app.create_sale(&who, draft).await?;
    Ok((
        StatusCode::CREATED,
        Json(SaleDto::new(&sale, s.app.clock.now())),
    ))
}

/// Changes a sale before it starts.
#[utoipa::path(patch, path = "/api/v1/admin/sales/{sale_id}", tag = "admin", request_body = PatchSaleBody,
    params(("sale_id" = String, Path)),
    responses((status = 200, body = SaleDto), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn patch_sale(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(sale_id): Path<String>,
    ApiJson(b): ApiJson<PatchSaleBody>,
) -> Result<Json<SaleDto>, ApiError> {
    s.app.require_admin(&who)?;
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
#[utoipa::path(post, path = "/api/v1/admin/sales/{sale_id}/pause", tag = "admin", params(("sale_id" = String, Path)),
    responses((status = 200, body = SaleDto), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn pause(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<Json<SaleDto>, ApiError> {
    control(s, who, id, SaleAction::Pause).await
}

/// Resumes a paused sale.
#[utoipa::path(post, path = "/api/v1/admin/sales/{sale_id}/resume", tag = "admin", params(("sale_id" = String, Path)),
    responses((status = 200, body = SaleDto), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn resume(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<Json<SaleDto>, ApiError> {
    control(s, who, id, SaleAction::Resume).await
}

/// Ends a sale for good.
#[utoipa::path(post, path = "/api/v1/admin/sales/{sale_id}/stop", tag = "admin", params(("sale_id" = String, Path)),
    responses((status = 200, body = SaleDto), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn stop(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<Json<SaleDto>, ApiError> {
    control(s, who, id, SaleAction::Stop).await
}

/// A sale's figures and invariant check, from the judge.
#[utoipa::path(get, path = "/api/v1/admin/sales/{sale_id}/metrics", tag = "admin", params(("sale_id" = String, Path)),
    responses((status = 200, body = SaleMetricsDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn metrics(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<Json<SaleMetricsDto>, ApiError> {
    Ok(Json(s.app.sale_metrics(&who, &id).await?.into()))
}

/// The append-only audit log, oldest first.
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = AuditDto), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn audit(
    State(s): State<AppState>,
    Auth(who): Auth,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditDto>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
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
