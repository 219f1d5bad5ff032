//! A thin client of Stampede's HTTP API (the contract in API.md): what the drill's buyers and
//! its admin call, and nothing else. Answers come back as (status, JSON body); a transport
//! failure is status 0, so every buyer's visit ends with a counted outcome.

use std::time::Duration;

use reqwest::{Client, Method};
use serde_json::{json, Value};

use crate::DrillError;

/// A sale as the admin API returns it (only what the drill uses).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Sale {
    pub sale_id: String,
    pub server_time: Option<String>,
}

/// `GET /api/v1/admin/sales/{id}/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct SaleMetrics {
    pub total_stock: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    #[serde(default)]
    pub orders: i64,
    #[serde(default)]
    pub holds_expired: i64,
    pub invariant_ok: bool,
}

/// The API of one server.
#[derive(Debug, Clone)]
pub struct Api {
    http: Client,
    base: String,
}

/// A status and a JSON body (`Value::Null` when there is none).
pub type Answer = (u16, Value);

impl Api {
    /// A client keeping up to `connections` connections to `base` open.
    pub fn new(base: &str, connections: usize) -> Result<Self, DrillError> {
        let http = Client::builder()
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| DrillError::Setup(format!("HTTP client: {e}")))?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// One call. Never fails: a transport error is status 0 with the error as the body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.unwrap_or_default();
                let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                (status, value)
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    /// Like [`Api::call`], for setup steps that must succeed with `want`.
    async fn must(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        want: u16,
    ) -> Result<Value, DrillError> {
        let (status, value) = self.call(method.clone(), path, token, body, &[]).await;
        if status != want {
            return Err(DrillError::Http(format!(
                "{method} {path}: expected {want}, got {status}: {value}"
            )));
        }
        Ok(value)
    }

    /// Logs in; returns the bearer token.
    pub async fn login(&self, email: &str, password: &str) -> Result<String, DrillError> {
        let v = self
            .must(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(&json!({"email": email, "password": password})),
                200,
            )
            .await?;
        v["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| DrillError::Http(format!("login answered without a token: {v}")))
    }

    /// Registers a buyer (an existing account is fine: drills may be rerun on a server).
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        name: &str,
    ) -> Result<(), DrillError> {
        let (status, value) = self
            .call(
                Method::POST,
                "/api/v1/auth/register",
                None,
                Some(&json!({"email": email, "password": password, "name": name})),
                &[],
            )
            .await;
        match status {
            201 | 409 => Ok(()),
            _ => Err(DrillError::Http(format!(
                "register {email}: {status}: {value}"
            ))),
        }
    }

    /// Creates the drill's sale, live at once.
    pub async fn create_sale(
        &self,
        admin: &str,
        name: &str,
        stock: i64,
        per_user_limit: i64,
        hold_seconds: i64,
        queue_required: bool,
    ) -> Result<Sale, DrillError> {
        let body = json!({
            "name": name,
            "description": "a flash-sale rehearsal",
            "original_price": "100.00",
            "sale_price": "20.00",
            "currency": "EUR",
            "total_stock": stock,
            "starts_at": "2020-01-01T00:00:00Z",
            "ends_at": "2099-01-01T00:00:00Z",
            "per_user_limit": per_user_limit,
            "queue_required": queue_required,
            "hold_seconds": hold_seconds,
        });
        let v = self
            .must(
                Method::POST,
                "/api/v1/admin/sales",
                Some(admin),
                Some(&body),
                201,
            )
            .await?;
        serde_json::from_value(v).map_err(|e| DrillError::Http(format!("sale: {e}")))
    }

    /// The sale as buyers see it (its `server_time` is the judge's clock).
    pub async fn sale(&self, sale_id: &str) -> Result<Sale, DrillError> {
        let v = self
            .must(
                Method::GET,
                &format!("/api/v1/sales/{sale_id}"),
                None,
                None,
                200,
            )
            .await?;
        serde_json::from_value(v).map_err(|e| DrillError::Http(format!("sale: {e}")))
    }

    pub async fn metrics(&self, admin: &str, sale_id: &str) -> Result<SaleMetrics, DrillError> {
        let v = self
            .must(
                Method::GET,
                &format!("/api/v1/admin/sales/{sale_id}/metrics"),
                Some(admin),
                None,
                200,
            )
            .await?;
        serde_json::from_value(v).map_err(|e| DrillError::Http(format!("metrics: {e}")))
    }
}

/// The stable error word of a problem+json answer, if any.
pub fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("")
}
