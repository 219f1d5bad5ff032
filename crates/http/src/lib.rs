//! Stampede's HTTP API: the axum router, problem+json errors, extractors, rate limits,
//! Server-Sent Events, pages, and the OpenAPI document generated from the same route table.

mod contract;
pub mod dto;
pub mod extract;
pub mod live;
pub mod problem;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod state;

use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use problem::{ApiError, Problem};
pub use ratelimit::{RateLimitConfig, RateLimits};
pub use state::AppState;

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
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            // No limit: a year is as good as none, and keeps one layer type.
            state
                .body_read_timeout
                .unwrap_or(Duration::from_secs(365 * 24 * 3600)),
        ))
        .layer(middleware::from_fn_with_state(
            state.request_deadline,
            within_deadline,
        ))
        .layer(middleware::from_fn_with_state(
            state.limits.clone(),
            ip_rate_limit,
        ))
        .layer(middleware::from_fn(record_metrics))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("handler panicked").into_response()
        }))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(NodeRequestIds::default()))
        .with_state(state)
}

/// Request ids unique across nodes and restarts without asking the kernel for randomness per
/// request (a UUID v4 per request cost a `getrandom` system call): 64 random bits drawn once
/// per process, then a counter.
#[derive(Clone)]
struct NodeRequestIds {
    prefix: u64,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Default for NodeRequestIds {
    fn default() -> Self {
        Self {
            // The standard library's per-process random hash keys, as 64 random bits.
            prefix: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                std::process::id(),
            ),
            next: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }
}

impl MakeRequestId for NodeRequestIds {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:016x}-{n:016x}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

/// Answers 503 `unavailable` (with `Retry-After`) when the handler has not answered within the
/// request deadline.
///
/// On the crowd's path — reads (`GET`, `HEAD`), reserves and queue joins — the deadline is a
/// timer on the request's own future: no task is spawned per request, and past the deadline
/// the handler is dropped. Those handlers are cancel-safe by construction: a read changes
/// nothing; a reserve that already took units from the gate hands its pending verdict to
/// `cart::AbandonedVerdict`, which gives the units back unless the hold was committed (and a
/// waiting-room reserve runs on a task of its own); a join is one atomic step of the room.
///
/// Every other write (checkout and payments above all) runs in a task of its own and is left
/// to finish when the deadline passes: cancelling it half-way (between a payment capture and
/// the order that records it, say) would be worse than letting it complete unseen; an outcome
/// the buyer was not told about is found again by a retry with the same `Idempotency-Key`, or
/// ends as a hold that expires. Streams (SSE) answer their head at once and are not cut short.
pub async fn within_deadline(
    State(deadline): State<Option<Duration>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(deadline) = deadline else {
        return next.run(req).await;
    };
    // An `Arc<str>` inside: cloning it allocates nothing.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let answer = if cancel_safe(req.method(), route.as_ref()) {
        match tokio::time::timeout(deadline, next.run(req)).await {
            Ok(res) => return res,
            Err(_) => "the handler was stopped",
        }
    } else {
        // The handler's logs stay in the request's span (and carry its request id).
        let mut handler = tokio::spawn(tracing::Instrument::in_current_span(next.run(req)));
        match tokio::time::timeout(deadline, &mut handler).await {
            Ok(Ok(res)) => return res,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "request handler failed");
                return ApiError::internal("handler panicked").into_response();
            }
            Err(_) => "the handler finishes in the background",
        }
    };
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    metrics::counter!("stampede_request_deadline_exceeded_total", "route" => route.to_owned())
        .increment(1);
    tracing::warn!(%route, deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX), "request deadline passed: answered 503; {answer}");
    ApiError::from(stampede_app::AppError::Unavailable(format!(
        "no answer within the request deadline ({} ms)",
        deadline.as_millis()
    )))
    .into_response()
}

/// Whether a request's handler may be dropped at the deadline (see [`within_deadline`]).
fn cancel_safe(method: &axum::http::Method, route: Option<&MatchedPath>) -> bool {
    use axum::http::Method;
    if method == Method::GET || method == Method::HEAD {
        return true;
    }
    method == Method::POST
        && route.is_some_and(|r| {
            matches!(
                r.as_str(),
                "/api/v1/cart/items" | "/api/v1/sales/{sale_id}/queue"
            )
        })
}

/// Counts one request per client IP; past the quota it is 429 with `Retry-After` and the
/// `RateLimit-Policy` / `RateLimit` headers.
async fn ip_rate_limit(
    State(limits): State<std::sync::Arc<RateLimits>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(ip) = extract::client_ip(req.extensions()) {
        if let Err(refused) = limits.check_ip(ip) {
            return rate_limited(refused);
        }
    }
    next.run(req).await
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

/// The handles one (method, route, status) records into.
#[derive(Clone)]
struct RouteMetrics {
    /// The route's text, to tell apart two routes that came to share an address.
    route: std::sync::Arc<str>,
    requests: metrics::Counter,
    seconds: metrics::Histogram,
}

/// Handles per (method, route, status), registered on first use and kept: a request records
/// into handles found in a sharded map, without allocating or asking the registry. The route
/// is keyed by the address of the router's own copy of its path (every request of a route
/// carries the same one), checked against the text. Bounded by the route table.
static ROUTE_METRICS: std::sync::OnceLock<
    dashmap::DashMap<(&'static str, usize, u16), RouteMetrics>,
> = std::sync::OnceLock::new();

fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Request count and latency per route and status, recorded once per request.
async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    // A clone of the router's `Arc<str>`: no allocation.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = method_label(req.method());
    let res = next.run(req).await;
    let path = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let key = (method, path.as_ptr() as usize, res.status().as_u16());
    let seconds = started.elapsed().as_secs_f64();
    let table = ROUTE_METRICS.get_or_init(dashmap::DashMap::new);
    if let Some(h) = table.get(&key).filter(|h| &*h.route == path) {
        h.requests.increment(1);
        h.seconds.record(seconds);
        return res;
    }
    let h = RouteMetrics {
        route: std::sync::Arc::from(path),
        requests: metrics::counter!("stampede_http_requests_total", "method" => method, "route" => path.to_owned(), "status" => key.2.to_string()),
        seconds: metrics::histogram!("stampede_http_request_seconds", "method" => method, "route" => path.to_owned()),
    };
    h.requests.increment(1);
    h.seconds.record(seconds);
    table.insert(key, h);
    res
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

#[cfg(test)]
mod deadline_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    use super::*;

    fn app(deadline: Option<Duration>, finished: Arc<AtomicBool>) -> Router {
        let hung = move || async move {
            // A dependency that answers long after the deadline.
            tokio::time::sleep(Duration::from_millis(400)).await;
            finished.store(true, Ordering::SeqCst);
            "late"
        };
        Router::new()
            .route("/fast", get(|| async { "ok" }))
            .route("/hung", get(hung.clone()).post(hung))
            .layer(middleware::from_fn_with_state(deadline, within_deadline))
    }

    fn get_req(path: &str) -> Request {
        Request::builder().uri(path).body(Body::empty()).unwrap()
    }

    fn post_req(path: &str) -> Request {
        Request::builder()
            .method("POST")
            .uri(path)
            .body(Body::empty())
            .unwrap()
    }

    /// A read past its deadline is answered 503 and dropped: nothing of it runs on.
    #[tokio::test]
    async fn a_hung_read_is_answered_503_unavailable_and_stopped() {
        let finished = Arc::new(AtomicBool::new(false));
        let app = app(Some(Duration::from_millis(50)), finished.clone());
        let started = std::time::Instant::now();
        let res = app.clone().oneshot(get_req("/hung")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(started.elapsed() < Duration::from_millis(300));
        assert_eq!(res.headers()["retry-after"], "1");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            !finished.load(Ordering::SeqCst),
            "a read is cancelled at the deadline"
        );
    }

    /// A write past its deadline (a checkout, say) is answered 503 and runs to its end.
    #[tokio::test]
    async fn a_hung_write_is_answered_503_unavailable_and_still_finishes() {
        let finished = Arc::new(AtomicBool::new(false));
        let app = app(Some(Duration::from_millis(50)), finished.clone());
        let res = app.clone().oneshot(post_req("/hung")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["retry-after"], "1");
        let body = axum::body::to_bytes(res.into_body(), 64 * 1024)
            .await
            .unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "unavailable");
        assert!(
            !finished.load(Ordering::SeqCst),
            "answered before the handler"
        );
        // Not cancelled: the work completes on its own.
        for _ in 0..100 {
            if finished.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            finished.load(Ordering::SeqCst),
            "the handler ran to its end"
        );

        let res = app.oneshot(get_req("/fast")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn without_a_deadline_the_handler_is_awaited() {
        let finished = Arc::new(AtomicBool::new(false));
        let res = app(None, finished.clone())
            .oneshot(get_req("/hung"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(finished.load(Ordering::SeqCst));
    }
}
