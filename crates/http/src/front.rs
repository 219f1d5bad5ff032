//! The front door: the one layer every request passes through on its way to a handler.
//!
//! A flash sale is mostly a crowd being told "sold out", "not yet" or "your place is 41,207",
//! so what every request pays before any work decides how fast the sale is. This layer does in
//! one step, with one boxed future, what a stack of nine layers used to do with one allocation
//! and one clone each:
//!
//! - a request id (`X-Request-Id`: the client's own if it sent one, else a new one) on the
//!   request's span and its answer;
//! - the per-client-IP quota (429 with `Retry-After` and the `RateLimit` headers);
//! - the body's size limit and read timeout, on requests that have a body;
//! - the request deadline (see [`Front`]'s doc);
//! - a panicking handler answered 500 `internal`, not a dropped connection;
//! - request count and latency per route and status, recorded once, into handles found
//!   without allocating;
//! - a `request` span (debug level: free unless enabled) the handler's logs are recorded in.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::ratelimit::RateLimits;
use crate::ApiError;

/// `X-Request-Id`.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the front door needs to know, shared by every route's copy of the layer.
pub struct FrontSettings {
    /// The per-client-IP quota.
    pub limits: Arc<RateLimits>,
    /// Longest a request may take before the buyer is answered 503 `unavailable`; `None`: no
    /// deadline.
    pub deadline: Option<Duration>,
    /// Longest a request body may stall before the request is answered 408; `None`: no limit.
    pub body_read_timeout: Option<Duration>,
}

/// The [`Front`] layer; cloning it is one reference count.
#[derive(Clone)]
pub struct FrontLayer {
    shared: Arc<Shared>,
}

struct Shared {
    settings: FrontSettings,
    ids: NodeRequestIds,
}

impl FrontLayer {
    /// The front door for a router with these settings.
    pub fn new(settings: FrontSettings) -> Self {
        Self {
            shared: Arc::new(Shared {
                settings,
                ids: NodeRequestIds::default(),
            }),
        }
    }
}

impl<S> Layer<S> for FrontLayer {
    type Service = Front<S>;

    fn layer(&self, inner: S) -> Front<S> {
        Front {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The front door around one route (see the module's doc).
///
/// **The deadline.** On the crowd's path — reads (`GET`, `HEAD`), reserves and queue joins —
/// the deadline is a timer on the request's own future: no task is spawned per request, and
/// past the deadline the handler is dropped. Those handlers are cancel-safe by construction: a
/// read changes nothing; a reserve that already took units from the gate hands its pending
/// verdict to `cart::AbandonedVerdict`, which gives the units back unless the hold was
/// committed (and a waiting-room reserve runs on a task of its own); a join is one atomic step
/// of the room.
///
/// Every other write (checkout and payments above all) runs in a task of its own and is left
/// to finish when the deadline passes: cancelling it half-way (between a payment capture and
/// the order that records it, say) would be worse than letting it complete unseen; an outcome
/// the buyer was not told about is found again by a retry with the same `Idempotency-Key`, or
/// ends as a hold that expires. Streams (SSE) answer their head at once and are not cut short.
#[derive(Clone)]
pub struct Front<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request> for Front<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The clone is the one that will be made ready next; the ready one serves this request.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let shared = self.shared.clone();
        Box::pin(async move { Ok(shared.serve(inner, req).await) })
    }
}

impl Shared {
    async fn serve<S>(&self, inner: S, mut req: Request) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        let started = Instant::now();
        // The client's (or its proxy's) id if it sent one; it travels with the request's span.
        let request_id = match req.headers().get(&X_REQUEST_ID) {
            Some(given) => given.clone(),
            None => self.ids.next(),
        };
        // An `Arc<str>` inside: cloning it allocates nothing.
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = method_label(req.method());

        let mut res = match self.admit(&req) {
            Err(refused) => crate::rate_limited(refused),
            Ok(()) => {
                if has_body(&req) {
                    req = self.bounded(req);
                }
                let span = tracing::debug_span!(
                    "request",
                    method = %req.method(),
                    uri = %req.uri(),
                    request_id = ?request_id,
                );
                let cancel_safe = cancel_safe(req.method(), route.as_ref());
                self.run(inner, req, route.as_ref(), cancel_safe)
                    .instrument(span)
                    .await
            }
        };

        res.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        let path = route.as_ref().map_or("unmatched", MatchedPath::as_str);
        let elapsed = started.elapsed();
        record(method, path, res.status().as_u16(), elapsed.as_secs_f64());
        if res.status().is_server_error() {
            tracing::error!(
                status = res.status().as_u16(),
                route = path,
                latency_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                "request failed"
            );
        } else {
            tracing::debug!(
                status = res.status().as_u16(),
                route = path,
                latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                "request answered"
            );
        }
        res
    }

    /// A request body that may not outgrow [`crate::MAX_BODY_BYTES`] (413) nor stall past the
    /// body-read timeout (408). Only requests with a body pay for it.
    fn bounded(&self, req: Request) -> Request {
        let timeout = self.settings.body_read_timeout;
        req.map(|body| {
            let limited = http_body_util::Limited::new(body, crate::MAX_BODY_BYTES);
            match timeout {
                Some(limit) => Body::new(tower_http::timeout::TimeoutBody::new(limit, limited)),
                None => Body::new(limited),
            }
        })
    }

    /// The per-client-IP quota: past it, the 429 to answer.
    fn admit(&self, req: &Request) -> Result<(), crate::ratelimit::Refused> {
        match crate::extract::client_ip(req.extensions()) {
            Some(ip) => self.settings.limits.check_ip(ip),
            None => Ok(()),
        }
    }

    /// Runs the handler under the deadline, answering 500 if it panics.
    async fn run<S>(
        &self,
        mut inner: S,
        req: Request,
        route: Option<&MatchedPath>,
        cancel_safe: bool,
    ) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        let handler = match std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(req))) {
            Ok(future) => AssertUnwindSafe(future).catch_unwind(),
            Err(_) => return panicked(),
        };
        let answered = |outcome: Result<Result<Response, Infallible>, _>| match outcome {
            Ok(Ok(res)) => res,
            Ok(Err(never)) => match never {},
            Err(_) => panicked(),
        };
        let Some(deadline) = self.settings.deadline else {
            return answered(handler.await);
        };
        let answer = if cancel_safe {
            match tokio::time::timeout(deadline, handler).await {
                Ok(outcome) => return answered(outcome),
                Err(_) => "the handler was stopped",
            }
        } else {
            // The handler's logs stay in the request's span (and carry its request id).
            let mut task = tokio::spawn(handler.in_current_span());
            match tokio::time::timeout(deadline, &mut task).await {
                Ok(Ok(outcome)) => return answered(outcome),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "request handler failed");
                    return panicked();
                }
                Err(_) => "the handler finishes in the background",
            }
        };
        let route = route.map_or("unmatched", MatchedPath::as_str);
        metrics::counter!("stampede_request_deadline_exceeded_total", "route" => route.to_owned())
            .increment(1);
        tracing::warn!(%route, deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX), "request deadline passed: answered 503; {answer}");
        ApiError::from(stampede_app::AppError::Unavailable(format!(
            "no answer within the request deadline ({} ms)",
            deadline.as_millis()
        )))
        .into_response()
    }
}

fn panicked() -> Response {
    ApiError::internal("handler panicked").into_response()
}

/// Whether the request carries a body to read (and so to time).
fn has_body(req: &Request) -> bool {
    let headers = req.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Whether a request's handler may be dropped at the deadline (see [`Front`]).
fn cancel_safe(method: &Method, route: Option<&MatchedPath>) -> bool {
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

/// Request ids unique across nodes and restarts without asking the kernel for randomness per
/// request (a UUID v4 per request cost a `getrandom` system call): 64 random bits drawn once
/// per process, then a counter.
struct NodeRequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl Default for NodeRequestIds {
    fn default() -> Self {
        Self {
            // The standard library's per-process random hash keys, as 64 random bits.
            prefix: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                std::process::id(),
            ),
            next: AtomicU64::new(0),
        }
    }
}

impl NodeRequestIds {
    /// `{prefix:016x}-{counter:016x}`, written without the formatting machinery.
    fn next(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = [b'-'; 33];
        for (i, word) in [self.prefix, n].into_iter().enumerate() {
            for d in 0..16 {
                let nibble = (word >> (60 - 4 * d)) & 0xf;
                id[i * 17 + d] = HEX[nibble as usize];
            }
        }
        // Hex digits and a dash are always a valid header value.
        HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }
}

/// The handles one (method, route, status) records into.
struct RouteMetrics {
    /// The route's text, to tell apart two routes that came to share an address.
    route: Box<str>,
    requests: metrics::Counter,
    seconds: metrics::Histogram,
}

/// Handles per (method, route, status), registered on first use and kept: a request records
/// into handles found in a sharded map, without allocating or asking the registry. The route
/// is keyed by the address of the router's own copy of its path (every request of a route
/// carries the same one), checked against the text. Bounded by the route table.
static ROUTE_METRICS: std::sync::OnceLock<
    dashmap::DashMap<(&'static str, usize, u16), RouteMetrics, foldhash::fast::RandomState>,
> = std::sync::OnceLock::new();

fn method_label(method: &Method) -> &'static str {
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

/// Request count and latency per route and status.
fn record(method: &'static str, path: &str, status: u16, seconds: f64) {
    let key = (method, path.as_ptr() as usize, status);
    let table = ROUTE_METRICS.get_or_init(|| dashmap::DashMap::with_hasher(Default::default()));
    if let Some(h) = table.get(&key).filter(|h| &*h.route == path) {
        h.requests.increment(1);
        h.seconds.record(seconds);
        return;
    }
    let h = RouteMetrics {
        route: Box::from(path),
        requests: metrics::counter!("stampede_http_requests_total", "method" => method, "route" => path.to_owned(), "status" => status.to_string()),
        seconds: metrics::histogram!("stampede_http_request_seconds", "method" => method, "route" => path.to_owned()),
    };
    h.requests.increment(1);
    h.seconds.record(seconds);
    table.insert(key, h);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::extract::ConnectInfo;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::Router;
    use tower::ServiceExt;

    use super::*;
    use crate::ratelimit::RateLimitConfig;

    fn front(deadline: Option<Duration>, ip_per_sec: u32) -> FrontLayer {
        FrontLayer::new(FrontSettings {
            limits: Arc::new(RateLimits::new(RateLimitConfig {
                per_ip_per_sec: ip_per_sec,
                burst_factor: 1,
                ..RateLimitConfig::default()
            })),
            deadline,
            body_read_timeout: Some(Duration::from_millis(200)),
        })
    }

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
            .route(
                "/panics",
                get(|| async {
                    if std::hint::black_box(true) {
                        panic!("a handler bug");
                    }
                    "never"
                }),
            )
            .route(
                "/echo",
                post(
                    |crate::extract::ApiBytes(body): crate::extract::ApiBytes| async move { body },
                ),
            )
            .layer(front(deadline, 1_000_000))
    }

    fn req(method: &str, path: &str) -> Request {
        axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap()
    }

    async fn problem(res: Response) -> serde_json::Value {
        let body = axum::body::to_bytes(res.into_body(), 64 * 1024)
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// A read past its deadline is answered 503 and dropped: nothing of it runs on.
    #[tokio::test]
    async fn a_hung_read_is_answered_503_unavailable_and_stopped() {
        let finished = Arc::new(AtomicBool::new(false));
        let app = app(Some(Duration::from_millis(50)), finished.clone());
        let started = std::time::Instant::now();
        let res = app.clone().oneshot(req("GET", "/hung")).await.unwrap();
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
        let res = app.clone().oneshot(req("POST", "/hung")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["retry-after"], "1");
        assert_eq!(problem(res).await["code"], "unavailable");
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

        let res = app.oneshot(req("GET", "/fast")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn without_a_deadline_the_handler_is_awaited() {
        let finished = Arc::new(AtomicBool::new(false));
        let res = app(None, finished.clone())
            .oneshot(req("GET", "/hung"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn every_answer_carries_a_request_id_and_a_given_one_is_kept() {
        let app = app(None, Arc::default());
        let a = app.clone().oneshot(req("GET", "/fast")).await.unwrap();
        let b = app.clone().oneshot(req("GET", "/nowhere")).await.unwrap();
        let (a, b) = (&a.headers()["x-request-id"], &b.headers()["x-request-id"]);
        assert_ne!(a, b, "ids are unique");
        let text = a.to_str().unwrap();
        assert_eq!(text.len(), 33);
        assert!(text
            .split('-')
            .all(|half| half.len() == 16 && half.bytes().all(|c| c.is_ascii_hexdigit())));

        let mut given = req("GET", "/fast");
        given
            .headers_mut()
            .insert("x-request-id", HeaderValue::from_static("from-the-edge-42"));
        let res = app.oneshot(given).await.unwrap();
        assert_eq!(res.headers()["x-request-id"], "from-the-edge-42");
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_internal() {
        let app = app(Some(Duration::from_secs(5)), Arc::default());
        let res = app.clone().oneshot(req("GET", "/panics")).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(res.headers().contains_key("x-request-id"));
        assert_eq!(problem(res).await["code"], "internal");
        // Without a deadline too.
        let res = self::app(None, Arc::default())
            .oneshot(req("GET", "/panics"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        // The service still answers.
        let res = app.oneshot(req("GET", "/fast")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn past_the_ip_quota_a_client_is_answered_429_with_its_headers() {
        let app = Router::new()
            .route("/fast", get(|| async { "ok" }))
            .layer(front(None, 2));
        let from = |ip: [u8; 4]| {
            let mut r = req("GET", "/fast");
            r.extensions_mut()
                .insert(ConnectInfo(SocketAddr::from((ip, 4000))));
            r
        };
        for _ in 0..2 {
            let res = app.clone().oneshot(from([10, 0, 0, 1])).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        let res = app.clone().oneshot(from([10, 0, 0, 1])).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(res.headers().contains_key("retry-after"));
        assert!(res.headers().contains_key("ratelimit-policy"));
        assert!(res.headers().contains_key("x-request-id"));
        // Another client is not held back.
        let res = app.oneshot(from([10, 0, 0, 2])).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_answered_408() {
        let app = app(None, Arc::default());
        let (mut tx, body) =
            futures::channel::mpsc::channel::<Result<axum::body::Bytes, Infallible>>(1);
        tx.try_send(Ok(axum::body::Bytes::from_static(b"part")))
            .unwrap();
        let stalled = axum::http::Request::builder()
            .method("POST")
            .uri("/echo")
            .header("content-length", "100")
            .body(Body::from_stream(body))
            .unwrap();
        let res = app.oneshot(stalled).await.unwrap();
        drop(tx);
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(problem(res).await["code"], "request_timeout");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_answered_413() {
        let app = app(None, Arc::default());
        let big = vec![b'x'; crate::MAX_BODY_BYTES + 1];
        for declared in [true, false] {
            let mut r = axum::http::Request::builder().method("POST").uri("/echo");
            r = if declared {
                r.header("content-length", big.len().to_string())
            } else {
                r.header("transfer-encoding", "chunked")
            };
            let stream = futures::stream::iter(
                big.chunks(4096)
                    .map(|c| Ok::<_, Infallible>(axum::body::Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>(),
            );
            let res = app
                .clone()
                .oneshot(r.body(Body::from_stream(stream)).unwrap())
                .await
                .unwrap();
            assert_eq!(
                res.status(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "declared: {declared}"
            );
            assert_eq!(problem(res).await["code"], "payload_too_large");
        }
        let mut ok = req("POST", "/echo");
        *ok.body_mut() = Body::from("small");
        ok.headers_mut()
            .insert("content-length", HeaderValue::from_static("5"));
        let res = app.oneshot(ok).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[test]
    fn request_ids_count_up_under_one_prefix() {
        let ids = NodeRequestIds::default();
        let a = ids.next();
        let b = ids.next();
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert_eq!(a[..16], b[..16]);
        assert_eq!(&a[17..], "0000000000000000");
        assert_eq!(&b[17..], "0000000000000001");
    }
}
