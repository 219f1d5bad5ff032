//! Stampede's HTTP API: the axum router, problem+json errors, extractors, rate limits,
//! Server-Sent Events, pages, and the OpenAPI document generated from the same route table.

mod contract;
pub mod dto;
pub mod extract;
pub mod front;
pub mod live;
pub mod problem;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod state;

use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use problem::{ApiError, Problem};
pub use ratelimit::{RateLimitConfig, RateLimits};
pub use state::{AppParts, AppState};

use routes::{
    accounts, admin, cart, catalog, notifications, ops, orders, pages, queue, sales, users,
};

/// Largest request body accepted; larger is 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(title = "Stampede", description = "Flash-sale engine HTTP API v1", version = "1"),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(accounts::register))
        .routes(routes!(accounts::login))
        .routes(routes!(accounts::logout))
        .routes(routes!(accounts::me))
        .routes(routes!(notifications::list))
        .routes(routes!(notifications::stream))
        .routes(routes!(sales::list))
        .routes(routes!(sales::detail))
        .routes(routes!(sales::events))
        .routes(routes!(catalog::list_products))
        .routes(routes!(catalog::product))
        .routes(routes!(catalog::list_drops))
        .routes(routes!(catalog::drop_detail))
        .routes(routes!(queue::join))
        .routes(routes!(queue::me))
        .routes(routes!(queue::me_events))
        .routes(routes!(queue::challenge))
        .routes(routes!(queue::draws))
        .routes(routes!(queue::jwks))
        .routes(routes!(cart::reserve))
        .routes(routes!(cart::get_cart))
        .routes(routes!(cart::resize, cart::release))
        .routes(routes!(orders::create, orders::list))
        .routes(routes!(orders::detail))
        .routes(routes!(orders::cancel))
        .routes(routes!(orders::webhook))
        .routes(routes!(admin::create_sale))
        .routes(routes!(admin::patch_sale))
        .routes(routes!(admin::pause))
        .routes(routes!(admin::resume))
        .routes(routes!(admin::stop))
        .routes(routes!(admin::metrics))
        .routes(routes!(admin::live))
        .routes(routes!(admin::audit))
        .routes(routes!(catalog::create_product))
        .routes(routes!(catalog::patch_product))
        .routes(routes!(catalog::retire_product))
        .routes(routes!(catalog::create_drop))
        .routes(routes!(catalog::patch_drop))
        .routes(routes!(users::list))
        .routes(routes!(users::detail))
        .routes(routes!(users::set_status))
        .routes(routes!(users::hoarders))
        .routes(routes!(users::ban_hoarder))
        .routes(routes!(queue::report))
        .routes(routes!(queue::set_rules))
        .routes(routes!(queue::lottery))
        .routes(routes!(queue::pause_admission))
        .routes(routes!(queue::resume_admission))
        .routes(routes!(queue::set_admission_ceiling))
        .routes(routes!(queue::queue_everyone))
        .routes(routes!(queue::broadcast))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
}

/// The OpenAPI document, generated from the same table the router is built from and completed
/// with what every route shares (`contract`).
pub fn openapi() -> serde_json::Value {
    document(api().split_for_parts().1)
}

fn document(generated: utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut doc = serde_json::to_value(generated).unwrap_or_default();
    contract::complete(&mut doc);
    doc
}

/// The whole HTTP service.
pub fn router(state: AppState) -> Router {
    let (api_router, doc) = api().split_for_parts();
    let doc_json = serde_json::to_string_pretty(&document(doc)).unwrap_or_default();
    api_router
        .route(
            "/openapi.json",
            get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    doc_json,
                )
            }),
        )
        .route("/", get(pages::storefront))
        .route("/sales/{sale_id}", get(pages::sale))
        .route("/drops/{drop_id}", get(pages::drop_page))
        .route("/sales/{sale_id}/queue", get(pages::queue))
        .route("/sales/{sale_id}/queue/place", get(pages::queue_place))
        .route("/cart", get(pages::cart))
        .route("/orders", get(pages::orders))
        .route("/login", get(pages::login))
        .route("/signup", get(pages::signup))
        .route("/admin", get(pages::admin))
        .route("/assets/{file}", get(pages::asset))
        .fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        // The body limit is the front door's, applied only to requests with a body.
        .layer(front::FrontLayer::new(front::FrontSettings {
            limits: state.limits.clone(),
            deadline: state.request_deadline,
            body_read_timeout: state.body_read_timeout,
        }))
        .with_state(state)
}

/// The 429 for a refused request: `Retry-After`, and the IETF `RateLimit-Policy` /
/// `RateLimit` headers naming the quota that refused.
pub(crate) fn rate_limited(refused: ratelimit::Refused) -> Response {
    metrics::counter!("stampede_rate_limited_total", "scope" => refused.scope).increment(1);
    let mut res = ApiError::from(stampede_app::AppError::RateLimited {
        retry_after_secs: refused.retry_after_secs,
    })
    .into_response();
    add_rate_headers(
        &mut res,
        refused.limit,
        refused.burst,
        refused.scope,
        refused.retry_after_secs,
    );
    res
}

fn add_rate_headers(res: &mut Response, limit: u32, burst: u32, scope: &str, reset_secs: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{limit};w=1;burst={burst};comment=\"per {scope}\""
    )) {
        res.headers_mut().insert("ratelimit-policy", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("limit={burst}, remaining=0, reset={reset_secs}"))
    {
        res.headers_mut().insert("ratelimit", v);
    }
}

/// Drops idle rate-limit keys every `every`, until the task is aborted.
pub fn spawn_rate_limit_janitor(
    limits: std::sync::Arc<RateLimits>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            limits.forget_idle();
        }
    })
}
