//! What every handler can reach.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use stampede_app::App;

use crate::live::ReserveStats;
use crate::ratelimit::RateLimits;

/// Shared handler state: one reference count to clone, because axum clones the state for every
/// request of every route, whether its handler reads the state or not.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    /// The state handlers share.
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct AppParts {
    pub app: Arc<App>,
    pub limits: Arc<RateLimits>,
    /// Renders `/metrics`; `None` when no recorder is installed (e.g. in unit tests).
    pub prometheus: Option<PrometheusHandle>,
    /// Turns true when the server is shutting down: live streams end so that graceful
    /// shutdown is not held open by viewers.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// This node's recent reserve latencies and refusals, for the admin dashboard's live view.
    pub reserve_stats: Arc<ReserveStats>,
    /// Longest a request may take before the buyer is answered 503 `unavailable` (with
    /// `Retry-After`): a hung dependency (a partitioned database) must not hang buyers.
    /// `None`: no deadline.
    pub request_deadline: Option<std::time::Duration>,
    /// Longest a request body may stall between two pieces before the request is answered
    /// 408 `request_timeout`: a client that opens a body and stops must not hold a handler.
    /// `None`: no limit.
    pub body_read_timeout: Option<std::time::Duration>,
}

impl AppParts {
    /// Resolves once shutdown has begun.
    pub fn shutting_down(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.clone();
        async move {
            // An error means the sender is gone, which also means shutdown.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}
