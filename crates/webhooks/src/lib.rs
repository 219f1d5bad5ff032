//! Stampede's outgoing webhooks: the [`ShopWebhooks`] port over HTTP. Each call is one signed
//! POST of one order event to the shop's own systems; retries, backoff and de-duplication are
//! the delivery job's (in `stampede-app`), not this adapter's.
//!
//! The request:
//! * body (JSON): `{"id": <event id>, "type": <kind>, "created_at": <RFC 3339>, "data": {…}}`;
//! * `Stampede-Event-Id: <event id>`: the same event may arrive more than once (delivery is at
//!   least once), the shop de-duplicates by it;
//! * `Stampede-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">` with the
//!   shop's secret: the same scheme as inbound payment webhooks
//!   (`stampede_app::webhook::sign`), so one verifier fits both;
//! * `Content-Type: application/json`, `User-Agent: stampede`.
//!
//! Only a 2xx answer counts as delivered. Every call has a 5 s timeout, so a shop that hangs
//! cannot hold a delivery lease.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use stampede_app::ports::{PortError, PortResult, ShopWebhooks, WebhookDelivery};
use stampede_app::webhook;
use stampede_core::{Clock, Timestamp};

/// How long one delivery may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Sends order events to the shop's webhook URL, signed with its secret.
pub struct HttpShopWebhooks {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: String,
    /// Stamps the signature (`t=`): the shop refuses signatures too far from its own clock.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for HttpShopWebhooks {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpShopWebhooks")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl HttpShopWebhooks {
    /// A sender to `url` (http or https) signing with `secret`. Fails on a URL that is not
    /// absolute http(s) or an empty secret, so a misconfiguration stops the start instead of
    /// failing every delivery later.
    pub fn new(url: &str, secret: &str, clock: Arc<dyn Clock>) -> Result<Self, PortError> {
        let url = reqwest::Url::parse(url)
            .map_err(|e| PortError::internal(format!("shop webhook URL {url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(PortError::internal(format!(
                "shop webhook URL {url}: must be an absolute http:// or https:// URL"
            )));
        }
        if secret.is_empty() {
            return Err(PortError::internal("shop webhook secret must not be empty"));
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .user_agent("stampede")
            // A redirect would re-send the event elsewhere: the shop gives the final URL.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| PortError::internal_because("building the webhook client", e))?;
        Ok(Self {
            client,
            url,
            secret: secret.to_owned(),
            clock,
        })
    }
}

/// The body of a delivery, exactly as sent and signed.
pub fn body(delivery: &WebhookDelivery) -> Vec<u8> {
    serde_json::json!({
        "id": delivery.event_id,
        "type": delivery.kind.as_str(),
        "created_at": rfc3339(delivery.created_at),
        "data": delivery.payload,
    })
    .to_string()
    .into_bytes()
}

/// RFC 3339 UTC text of a timestamp (as the HTTP API writes times).
fn rfc3339(t: Timestamp) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.millis()) * 1_000_000)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[async_trait]
impl ShopWebhooks for HttpShopWebhooks {
    async fn send(&self, delivery: &WebhookDelivery) -> PortResult<()> {
        let body = body(delivery);
        let signature = webhook::sign(&self.secret, self.clock.now(), &body);
        let answer = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Stampede-Event-Id", &delivery.event_id)
            .header("Stampede-Signature", signature)
            .body(body)
            .send()
            .await
            // Without the URL: it may carry credentials in its query.
            .map_err(|e| PortError::unavailable(format!("shop webhook: {}", e.without_url())))?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(PortError::unavailable(format!(
                "shop webhook answered {status}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::http::{HeaderMap, StatusCode};
    use stampede_core::{ManualClock, UserId};

    use super::*;

    fn delivery() -> WebhookDelivery {
        WebhookDelivery {
            event_id: "01JEVENT".into(),
            kind: stampede_app::ports::EventKind::OrderConfirmed,
            user_id: UserId::generate(1_700_000_000_000, 1),
            payload: serde_json::json!({ "order_id": "o1", "total": "25.00", "currency": "EUR" }),
            created_at: Timestamp(1_700_000_000_123),
            attempts: 0,
            next_attempt_at: Timestamp(0),
            last_error: None,
        }
    }

    type Seen = Arc<Mutex<Vec<(HeaderMap, String)>>>;

    /// A shop answering `status` to everything, recording what it got.
    async fn shop(status: StatusCode) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let record = record.clone();
                async move {
                    record.lock().unwrap().push((headers, body));
                    status
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hooks"), seen)
    }

    #[tokio::test]
    async fn sends_a_signed_event_and_counts_only_2xx() {
        let clock = ManualClock::new(Timestamp(1_700_000_100_000));
        let (url, seen) = shop(StatusCode::NO_CONTENT).await;
        let sender = HttpShopWebhooks::new(&url, "shh", Arc::new(clock.clone())).unwrap();
        sender.send(&delivery()).await.unwrap();
        let (headers, body) = seen.lock().unwrap().pop().unwrap();
        assert_eq!(headers["stampede-event-id"], "01JEVENT");
        assert_eq!(headers["user-agent"], "stampede");
        assert_eq!(headers["content-type"], "application/json");
        let signature = headers["stampede-signature"].to_str().unwrap();
        assert!(webhook::verify(
            "shh",
            signature,
            body.as_bytes(),
            clock.now(),
            300
        ));
        assert!(signature.starts_with("t=1700000100,v1="));
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "01JEVENT",
                "type": "order_confirmed",
                "created_at": "2023-11-14T22:13:20.123Z",
                "data": { "order_id": "o1", "total": "25.00", "currency": "EUR" },
            })
        );

        let (url, _) = shop(StatusCode::INTERNAL_SERVER_ERROR).await;
        let failing = HttpShopWebhooks::new(&url, "shh", Arc::new(clock.clone())).unwrap();
        let e = failing.send(&delivery()).await.unwrap_err();
        assert!(e.to_string().contains("500"), "{e}");
        let (url, _) = shop(StatusCode::MOVED_PERMANENTLY).await;
        let moved = HttpShopWebhooks::new(&url, "shh", Arc::new(clock)).unwrap();
        assert!(moved.send(&delivery()).await.is_err());
    }

    #[tokio::test]
    async fn an_unreachable_shop_is_an_error_not_a_hang() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let clock = Arc::new(ManualClock::new(Timestamp(0)));
        let sender = HttpShopWebhooks::new(&format!("http://{addr}/x"), "s", clock).unwrap();
        assert!(matches!(
            sender.send(&delivery()).await,
            Err(PortError::Unavailable { .. })
        ));
    }

    #[test]
    fn refuses_bad_urls_and_empty_secrets() {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Timestamp(0)));
        assert!(HttpShopWebhooks::new("not a url", "s", clock.clone()).is_err());
        assert!(HttpShopWebhooks::new("ftp://shop.example/x", "s", clock.clone()).is_err());
        assert!(HttpShopWebhooks::new("https://shop.example/x", "", clock.clone()).is_err());
        let ok = HttpShopWebhooks::new("https://shop.example/x", "s", clock).unwrap();
        assert!(!format!("{ok:?}").contains("\"s\""));
    }
}
