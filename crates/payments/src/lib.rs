//! The built-in sandbox payment gateway. It behaves like a real provider for the test tokens of
//! the contract — `tok_ok` authorizes, `tok_decline` is declined, `tok_slow` authorizes after a
//! delay, `tok_async` answers "pending" and confirms later through an HMAC-signed webhook — and
//! keeps a ledger so tests can prove nobody was charged twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::mpsc;

use stampede_app::ports::{Authorization, AuthorizeRequest, PaymentGateway, PortError, PortResult};
use stampede_app::webhook;
use stampede_core::{Clock, Money};

/// Where a sandbox charge is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeState {
    Authorized,
    Pending,
    Captured,
    Voided,
    Refunded,
    Declined,
}

/// One charge in the sandbox's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Charge {
    pub reference: String,
    pub amount: Money,
    pub state: ChargeState,
    /// How many captures actually moved money (must never exceed 1).
    pub captures: u32,
}

/// A signed webhook the sandbox wants delivered to the shop.
#[derive(Debug, Clone)]
pub struct SignedEvent {
    pub body: Vec<u8>,
    /// Value of the `Stampede-Signature` header.
    pub signature: String,
}

/// Sandbox timings.
#[derive(Debug, Clone, Copy)]
pub struct SandboxTimings {
    /// How long `tok_slow` takes to answer.
    pub slow: Duration,
    /// How long after authorization `tok_async` reports success by webhook.
    pub async_confirm: Duration,
}

impl Default for SandboxTimings {
    fn default() -> Self {
        Self {
            slow: Duration::from_secs(2),
            async_confirm: Duration::from_secs(2),
        }
    }
}

/// The sandbox [`PaymentGateway`].
pub struct SandboxGateway {
    secret: String,
    clock: Arc<dyn Clock>,
    timings: SandboxTimings,
    webhooks: mpsc::Sender<SignedEvent>,
    ledger: Mutex<HashMap<String, Charge>>,
}

impl SandboxGateway {
    /// A sandbox that signs webhooks with `secret` and hands them to `webhooks`.
    pub fn new(
        secret: String,
        clock: Arc<dyn Clock>,
        timings: SandboxTimings,
        webhooks: mpsc::Sender<SignedEvent>,
    ) -> Self {
        Self {
            secret,
            clock,
            timings,
            webhooks,
            ledger: Mutex::new(HashMap::new()),
        }
    }

    /// Every charge so far.
    pub fn charges(&self) -> Vec<Charge> {
        self.ledger
            .lock()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default()
    }

    fn record(&self, charge: Charge) {
        if let Ok(mut l) = self.ledger.lock() {
            l.insert(charge.reference.clone(), charge);
        }
    }

    fn transition(&self, reference: &str, to: ChargeState) -> PortResult<()> {
        let mut l = self
            .ledger
            .lock()
            .map_err(|_| PortError::Internal("sandbox ledger poisoned".into()))?;
        let charge = l
            .get_mut(reference)
            .ok_or_else(|| PortError::Internal(format!("unknown reference {reference}")))?;
        use ChargeState::*;
        let allowed = match (charge.state, to) {
            (a, b) if a == b => return Ok(()), // idempotent per reference
            (Authorized | Pending, Captured | Voided) => true,
            (Captured, Refunded) => true,
            _ => false,
        };
        if !allowed {
            return Err(PortError::Internal(format!(
                "sandbox: {:?} -> {:?} not allowed for {reference}",
                charge.state, to
            )));
        }
        if to == Captured {
            charge.captures += 1;
            metrics::counter!("stampede_sandbox_captures_total").increment(1);
        }
        charge.state = to;
        Ok(())
    }

    fn schedule_webhook(&self, reference: String, kind: &'static str) {
        let secret = self.secret.clone();
        let clock = self.clock.clone();
        let sink = self.webhooks.clone();
        let delay = self.timings.async_confirm;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let body = serde_json::json!({
                "id": format!("evt_{}", ulid::Ulid::new()),
                "type": kind,
                "data": { "reference": reference },
            })
            .to_string()
            .into_bytes();
            let signature = webhook::sign(&secret, clock.now(), &body);
            if sink.send(SignedEvent { body, signature }).await.is_err() {
                tracing::warn!("sandbox webhook dropped: receiver gone");
            }
        });
    }
}

#[async_trait]
impl PaymentGateway for SandboxGateway {
    async fn authorize(&self, req: &AuthorizeRequest) -> PortResult<Authorization> {
        let reference = format!("pay_{}", ulid::Ulid::new());
        let charge = |state| Charge {
            reference: reference.clone(),
            amount: req.amount,
            state,
            captures: 0,
        };
        let answer = match req.token.as_str() {
            "tok_ok" => Authorization::Authorized {
                reference: reference.clone(),
            },
            "tok_slow" => {
                tokio::time::sleep(self.timings.slow).await;
                Authorization::Authorized {
                    reference: reference.clone(),
                }
            }
            "tok_async" => Authorization::Pending {
                reference: reference.clone(),
            },
            "tok_decline" => Authorization::Declined {
                reference: reference.clone(),
                reason: "card_declined".into(),
            },
            _ => Authorization::Declined {
                reference: reference.clone(),
                reason: "invalid_token".into(),
            },
        };
        self.record(charge(match &answer {
            Authorization::Authorized { .. } => ChargeState::Authorized,
            Authorization::Pending { .. } => ChargeState::Pending,
            Authorization::Declined { .. } => ChargeState::Declined,
        }));
        if matches!(answer, Authorization::Pending { .. }) {
            self.schedule_webhook(reference, "payment.succeeded");
        }
        Ok(answer)
    }

    async fn capture(&self, reference: &str) -> PortResult<()> {
        self.transition(reference, ChargeState::Captured)
    }

    async fn void(&self, reference: &str) -> PortResult<()> {
        self.transition(reference, ChargeState::Voided)
    }

    async fn refund(&self, reference: &str) -> PortResult<()> {
        self.transition(reference, ChargeState::Refunded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stampede_core::{Currency, ManualClock, OrderId, PaymentId, Timestamp};

    fn gateway() -> (SandboxGateway, mpsc::Receiver<SignedEvent>) {
        let (tx, rx) = mpsc::channel(8);
        let clock = Arc::new(ManualClock::new(Timestamp(1_700_000_000_000)));
        let timings = SandboxTimings {
            slow: Duration::from_millis(1),
            async_confirm: Duration::from_millis(1),
        };
        (SandboxGateway::new("secret".into(), clock, timings, tx), rx)
    }

    fn req(token: &str) -> AuthorizeRequest {
        AuthorizeRequest {
            payment_id: PaymentId::generate(1, 1),
            order_id: OrderId::generate(1, 1),
            amount: Money(500),
            currency: Currency::parse("EUR").unwrap(),
            method: "card".into(),
            token: token.into(),
        }
    }

    #[tokio::test]
    async fn test_tokens_behave_as_documented() {
        let (g, mut rx) = gateway();
        let Authorization::Authorized { reference } = g.authorize(&req("tok_ok")).await.unwrap()
        else {
            panic!("tok_ok must authorize")
        };
        g.capture(&reference).await.unwrap();
        g.capture(&reference).await.unwrap();
        let c = g
            .charges()
            .into_iter()
            .find(|c| c.reference == reference)
            .unwrap();
        assert_eq!((c.state, c.captures), (ChargeState::Captured, 1));
        assert!(
            g.void(&reference).await.is_err(),
            "a capture cannot be voided"
        );
        g.refund(&reference).await.unwrap();

        assert!(matches!(
            g.authorize(&req("tok_decline")).await.unwrap(),
            Authorization::Declined { .. }
        ));
        assert!(matches!(
            g.authorize(&req("tok_slow")).await.unwrap(),
            Authorization::Authorized { .. }
        ));
        let Authorization::Pending { reference } = g.authorize(&req("tok_async")).await.unwrap()
        else {
            panic!("tok_async must be pending")
        };
        let event = rx.recv().await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
        assert_eq!(body["data"]["reference"], reference.as_str());
        assert_eq!(body["type"], "payment.succeeded");
        assert!(webhook::verify(
            "secret",
            &event.signature,
            &event.body,
            Timestamp(1_700_000_000_000),
            300
        ));
    }
}
