//! The catalog: products (`/api/v1/products`, admin `/api/v1/admin/products`) and drops
//! (`/api/v1/drops`, admin `/api/v1/admin/drops`). Reads are public and cacheable like the
//! sale reads; changes are the admin's.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use stampede_app::catalog::{BrowseQuery, DropDraft, DropPatch, ProductDraft, ProductPatch};
use stampede_core::{DropEvent, Product, Timestamp};

use crate::dto::{parse_time, rfc3339, SaleDto};
use crate::extract::{Admin, ApiJson, ApiQuery};
use crate::problem::{ApiError, Problem};
use crate::routes::sales::cacheable;
use crate::state::AppState;

/// A product of the catalog.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductDto {
    pub product_id: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub image_urls: Vec<String>,
    /// Decimal string, e.g. "120.00".
    pub regular_price: String,
    pub currency: String,
    /// `active | out_of_stock | discontinued`.
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Product> for ProductDto {
    fn from(p: &Product) -> Self {
        Self {
            product_id: p.id.to_string(),
            name: p.name.clone(),
            description: p.description.clone(),
            category: p.category.clone(),
            image_urls: p.image_urls.clone(),
            regular_price: p.regular_price.format(&p.currency),
            currency: p.currency.as_str().to_owned(),
            status: p.status.as_str().to_owned(),
            created_at: rfc3339(p.created_at),
            updated_at: rfc3339(p.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductsDto {
    pub products: Vec<ProductDto>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// A drop: several sales (SKUs) under one schedule and one per-buyer limit.
#[derive(Debug, Serialize, ToSchema)]
pub struct DropDto {
    pub drop_id: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub starts_at: String,
    pub ends_at: String,
    /// `scheduled | live | ended`, from the drop's schedule (each sale has its own status).
    pub status: String,
    /// Units one buyer may hold plus own across all the drop's sales; absent: no such limit.
    pub per_user_limit: Option<u32>,
    /// The server's clock now: run countdowns against this.
    pub server_time: String,
}

impl DropDto {
    fn new(d: &DropEvent, now: Timestamp) -> Self {
        Self {
            drop_id: d.id.to_string(),
            name: d.name.clone(),
            description: d.description.clone(),
            category: d.category.clone(),
            starts_at: rfc3339(d.starts_at),
            ends_at: rfc3339(d.ends_at),
            status: d.status_at(now).as_str().to_owned(),
            per_user_limit: d.per_user_limit,
            server_time: rfc3339(now),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DropsDto {
    pub drops: Vec<DropDto>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// A drop's page: the drop and every one of its sales.
#[derive(Debug, Serialize, ToSchema)]
pub struct DropDetailDto {
    pub drop: DropDto,
    pub sales: Vec<SaleDto>,
}

/// Filters of a browse of products or drops; every one optional.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CatalogQuery {
    /// Exact category.
    pub category: Option<String>,
    /// Comma-separated statuses. Products: active,out_of_stock,discontinued. Drops:
    /// scheduled,live,ended.
    pub status: Option<String>,
    /// Search: every word must start a word of the name.
    pub q: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<i64>,
}

impl CatalogQuery {
    fn browse(self) -> BrowseQuery {
        BrowseQuery {
            category: self.category,
            status: self.status,
            q: self.q,
            drop_id: None,
            after: self.after,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProductBody {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub category: String,
    /// http(s) URLs, at most 20.
    #[serde(default)]
    pub image_urls: Vec<String>,
    /// Decimal string in `currency`, e.g. "120.00".
    pub regular_price: String,
    pub currency: String,
    /// `active` (default), `out_of_stock` or `discontinued`.
    pub status: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchProductBody {
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    pub image_urls: Option<Vec<String>>,
    pub regular_price: Option<String>,
    pub currency: Option<String>,
    pub status: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDropBody {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub category: String,
    /// RFC 3339; the default schedule of the drop's sales.
    pub starts_at: String,
    pub ends_at: String,
    /// Units one buyer may hold plus own across all the drop's sales (1–1000); absent: none.
    pub per_user_limit: Option<i64>,
}

/// Absent stays absent; `null` becomes `Some(None)` (clear); a value `Some(Some(v))`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchDropBody {
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    /// A new limit across the drop's sales, or `null` to remove it. Applies to reservations
    /// from now on; units already held or bought are kept.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub per_user_limit: Option<Option<i64>>,
}

/// Products by category, status and name, a page at a time.
#[utoipa::path(operation_id = "list_products", get, path = "/api/v1/products", tag = "catalog", params(CatalogQuery),
    responses((status = 200, body = ProductsDto), (status = 304, description = "not modified (If-None-Match)"),
        (status = 422, body = Problem)))]
pub async fn list_products(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<CatalogQuery>,
) -> Result<Response, ApiError> {
    let page = s.app.browse_products(&q.browse()).await?;
    let body = ProductsDto {
        products: page.items.iter().map(ProductDto::from).collect(),
        next: page.next,
    };
    Ok(cacheable(&s, &headers, body))
}

/// One product.
#[utoipa::path(operation_id = "get_product", get, path = "/api/v1/products/{product_id}", tag = "catalog",
    params(("product_id" = String, Path)),
    responses((status = 200, body = ProductDto), (status = 304, description = "not modified (If-None-Match)"),
        (status = 404, body = Problem)))]
pub async fn product(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(product_id): Path<String>,
) -> Result<Response, ApiError> {
    let p = s.app.product(&product_id).await?;
    Ok(cacheable(&s, &headers, ProductDto::from(&p)))
}

/// Adds a product to the catalog.
#[utoipa::path(operation_id = "create_product", post, path = "/api/v1/admin/products", tag = "admin", request_body = CreateProductBody,
    responses((status = 201, body = ProductDto), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_product(
    State(s): State<AppState>,
    Admin(who): Admin,
    ApiJson(b): ApiJson<CreateProductBody>,
) -> Result<(StatusCode, Json<ProductDto>), ApiError> {
    let draft = ProductDraft {
        name: b.name,
        description: b.description,
        category: b.category,
        image_urls: b.image_urls,
        regular_price: b.regular_price,
        currency: b.currency,
        status: b.status,
    };
    let p = s.app.create_product(&who, draft).await?;
    Ok((StatusCode::CREATED, Json(ProductDto::from(&p))))
}

/// Edits a product; sales already made from it keep their own terms.
#[utoipa::path(operation_id = "update_product", patch, path = "/api/v1/admin/products/{product_id}", tag = "admin",
    request_body = PatchProductBody, params(("product_id" = String, Path)),
    responses((status = 200, body = ProductDto), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn patch_product(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(product_id): Path<String>,
    ApiJson(b): ApiJson<PatchProductBody>,
) -> Result<Json<ProductDto>, ApiError> {
    let patch = ProductPatch {
        name: b.name,
        description: b.description,
        category: b.category,
        image_urls: b.image_urls,
        regular_price: b.regular_price,
        currency: b.currency,
        status: b.status,
    };
    let p = s.app.patch_product(&who, &product_id, patch).await?;
    Ok(Json(ProductDto::from(&p)))
}

/// Retires a product: no new sale may reference it; existing sales are untouched.
#[utoipa::path(operation_id = "retire_product", post, path = "/api/v1/admin/products/{product_id}/retire", tag = "admin",
    params(("product_id" = String, Path)),
    responses((status = 200, body = ProductDto), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn retire_product(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(product_id): Path<String>,
) -> Result<Json<ProductDto>, ApiError> {
    let p = s.app.retire_product(&who, &product_id).await?;
    Ok(Json(ProductDto::from(&p)))
}

/// Drops by category, status and name, a page at a time.
#[utoipa::path(operation_id = "list_drops", get, path = "/api/v1/drops", tag = "catalog", params(CatalogQuery),
    responses((status = 200, body = DropsDto), (status = 304, description = "not modified (If-None-Match)"),
        (status = 422, body = Problem)))]
pub async fn list_drops(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<CatalogQuery>,
) -> Result<Response, ApiError> {
    let page = s.app.browse_drops(&q.browse()).await?;
    let now = s.app.clock.now();
    let body = DropsDto {
        drops: page.items.iter().map(|d| DropDto::new(d, now)).collect(),
        next: page.next,
    };
    Ok(cacheable(&s, &headers, body))
}

/// One drop with every one of its sales.
#[utoipa::path(operation_id = "get_drop", get, path = "/api/v1/drops/{drop_id}", tag = "catalog",
    params(("drop_id" = String, Path)),
    responses((status = 200, body = DropDetailDto), (status = 304, description = "not modified (If-None-Match)"),
        (status = 404, body = Problem)))]
pub async fn drop_detail(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(drop_id): Path<String>,
) -> Result<Response, ApiError> {
    let found = s.app.drop_with_sales(&drop_id).await?;
    let now = s.app.clock.now();
    let body = DropDetailDto {
        drop: DropDto::new(&found.drop, now),
        sales: found.sales.iter().map(|x| SaleDto::new(x, now)).collect(),
    };
    Ok(cacheable(&s, &headers, body))
}

/// Creates a drop; create its sales with its `drop_id`.
#[utoipa::path(operation_id = "create_drop", post, path = "/api/v1/admin/drops", tag = "admin", request_body = CreateDropBody,
    responses((status = 201, body = DropDto), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_drop(
    State(s): State<AppState>,
    Admin(who): Admin,
    ApiJson(b): ApiJson<CreateDropBody>,
) -> Result<(StatusCode, Json<DropDto>), ApiError> {
    let draft = DropDraft {
        name: b.name,
        description: b.description,
        category: b.category,
        starts_at: parse_time("starts_at", &b.starts_at)?,
        ends_at: parse_time("ends_at", &b.ends_at)?,
        per_user_limit: b.per_user_limit,
    };
    let d = s.app.create_drop(&who, draft).await?;
    Ok((
        StatusCode::CREATED,
        Json(DropDto::new(&d, s.app.clock.now())),
    ))
}

/// Edits a drop's name, description, category or limit.
#[utoipa::path(operation_id = "update_drop", patch, path = "/api/v1/admin/drops/{drop_id}", tag = "admin",
    request_body = PatchDropBody, params(("drop_id" = String, Path)),
    responses((status = 200, body = DropDto), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn patch_drop(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(drop_id): Path<String>,
    ApiJson(b): ApiJson<PatchDropBody>,
) -> Result<Json<DropDto>, ApiError> {
    let patch = DropPatch {
        name: b.name,
        description: b.description,
        category: b.category,
        per_user_limit: b.per_user_limit,
    };
    let d = s.app.patch_drop(&who, &drop_id, patch).await?;
    Ok(Json(DropDto::new(&d, s.app.clock.now())))
}
