//! What every handler can reach.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use stampede_app::App;

use crate::ratelimit::RateLimits;

/// Shared handler state: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub app: Arc<App>,
    pub limits: Arc<RateLimits>,
    /// Renders `/metrics`; `None` when no recorder is installed (e.g. in unit tests).
    pub prometheus: Option<PrometheusHandle>,
}
