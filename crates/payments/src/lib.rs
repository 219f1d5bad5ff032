//! The built-in sandbox payment gateway. It behaves like a real provider for the test tokens of
//! the contract — `tok_ok` authorizes, `tok_decline` is declined, `tok_slow` authorizes after a
//! delay, `tok_async` answers "pending" and confirms later through an HMAC-signed webhook — and
//! keeps a ledger so tests can prove nobody was charged twice.
//!
//! A real provider outlives the shop's process; so does the sandbox's ledger when it is given a
//! journal file ([`SandboxGateway::with_journal`], `stampede serve` keeps one in the data
//! dir): every change of a charge is appended as one JSON line before the call answers, and a
//! restarted sandbox reads it back, so a capture or void the shop finishes after a kill -9 finds
//! its authorization, and tests can read what every charge became ([`read_journal`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use stampede_app::ports::{Authorization, AuthorizeRequest, PaymentGateway, PortError, PortResult};
use stampede_app::webhook;
use stampede_core::{Clock, Money, OrderId};

/// Where a sandbox charge is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub reference: String,
    /// The order it was authorized for (how a lost authorization is found again).
    #[serde(default)]
    pub order_id: String,
    pub amount: Money,
    pub state: ChargeState,
    /// How many captures actually moved money (must never exceed 1).
    pub captures: u32,
    /// Why it was declined, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    /// The authorization made for each order, by order id: how a checkout that died before
    /// hearing the answer finds its authorization again (a real provider looks it up by the
    /// metadata or idempotency key sent with it).
    by_order: Mutex<HashMap<String, String>>,
    /// Where every change of a charge is appended, if the ledger must outlive the process.
    journal: Option<Mutex<std::fs::File>>,
}

/// Every charge in a sandbox journal, as last written (for tests and drills that inspect
/// the money after the server is gone).
pub fn read_journal(path: &std::path::Path) -> std::io::Result<Vec<Charge>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut last: HashMap<String, Charge> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for line in text.lines() {
        // A line cut short by a kill mid-write is the change that never answered: skip it.
        let Ok(charge) = serde_json::from_str::<Charge>(line) else {
            continue;
        };
        if !last.contains_key(&charge.reference) {
            order.push(charge.reference.clone());
        }
        last.insert(charge.reference.clone(), charge);
    }
    Ok(order.into_iter().filter_map(|r| last.remove(&r)).collect())
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
            by_order: Mutex::new(HashMap::new()),
            journal: None,
        }
    }

    /// Keeps the ledger in `path` (created if missing): what it holds is loaded now, and
    /// every change is appended before the call that made it answers.
    pub fn with_journal(mut self, path: &std::path::Path) -> std::io::Result<Self> {
        let charges = read_journal(path)?;
        if let (Ok(mut ledger), Ok(mut orders)) = (self.ledger.lock(), self.by_order.lock()) {
            for charge in charges {
                if !charge.order_id.is_empty() {
                    orders.insert(charge.order_id.clone(), charge.reference.clone());
                }
                ledger.insert(charge.reference.clone(), charge);
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        self.journal = Some(Mutex::new(file));
        Ok(self)
    }

    /// Appends the charge's new state to the journal (a sandbox has no better place to
    /// report a failed write than the log and the error it returns).
    fn journal(&self, charge: &Charge) -> PortResult<()> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let mut line = serde_json::to_vec(charge)
            .map_err(|e| PortError::internal_because("sandbox journal", e))?;
        line.push(b'\n');
        let mut file = journal
            .lock()
            .map_err(|_| PortError::internal("sandbox journal poisoned"))?;
        std::io::Write::write_all(&mut *file, &line)
            .map_err(|e| PortError::internal_because("sandbox journal", e))
    }

    /// Every charge so far.
    pub fn charges(&self) -> Vec<Charge> {
        self.ledger
            .lock()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The answer the order's authorization got, if it has one: a charge that has moved on
    /// since (captured, voided, refunded) was authorized.
    fn first_answer(&self, order: &OrderId) -> PortResult<Option<Authorization>> {
        let poisoned = || PortError::internal("sandbox ledger poisoned");
        let Some(reference) = self
            .by_order
            .lock()
            .map_err(|_| poisoned())?
            .get(order.as_str())
            .cloned()
        else {
            return Ok(None);
        };
        let ledger = self.ledger.lock().map_err(|_| poisoned())?;
        let Some(charge) = ledger.get(&reference) else {
            return Ok(None);
        };
        Ok(Some(match charge.state {
            ChargeState::Pending => Authorization::Pending { reference },
            ChargeState::Declined => Authorization::Declined {
                reference,
                reason: charge
                    .reason
                    .clone()
                    .unwrap_or_else(|| "card_declined".into()),
            },
            _ => Authorization::Authorized { reference },
        }))
    }

    fn record(&self, charge: Charge) -> PortResult<()> {
        self.journal(&charge)?;
        if let Ok(mut l) = self.ledger.lock() {
            l.insert(charge.reference.clone(), charge);
        }
        Ok(())
    }

    fn transition(&self, reference: &str, to: ChargeState) -> PortResult<()> {
        let mut l = self
            .ledger
            .lock()
            .map_err(|_| PortError::internal("sandbox ledger poisoned"))?;
        let charge = l
            .get_mut(reference)
            .ok_or_else(|| PortError::internal(format!("unknown reference {reference}")))?;
        use ChargeState::*;
        let allowed = match (charge.state, to) {
            (a, b) if a == b => return Ok(()), // idempotent per reference
            // Nothing to release: a no-op, as at a real provider (a checkout that died after a
            // decline has its lost authorization voided by the money reconciliation).
            (Declined, Voided) => return Ok(()),
            (Authorized | Pending, Captured | Voided) => true,
            (Captured, Refunded) => true,
            _ => false,
        };
        if !allowed {
            return Err(PortError::internal(format!(
                "sandbox: {:?} -> {:?} not allowed for {reference}",
                charge.state, to
            )));
        }
        if to == Captured {
            charge.captures += 1;
            metrics::counter!("stampede_sandbox_captures_total").increment(1);
        }
        charge.state = to;
        // Journaled under the ledger's lock, so lines of one charge are in the order of its moves.
        let changed = charge.clone();
        self.journal(&changed)
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
        // One authorization per order: asking again (a checkout resumed after a crash) gets
        // the first answer, as a provider's idempotency key does; nobody is charged twice.
        if let Some(first) = self.first_answer(&req.order_id)? {
            return Ok(first);
        }
        let reference = format!("pay_{}", ulid::Ulid::new());
        let charge = |state, reason: Option<&String>| Charge {
            reference: reference.clone(),
            order_id: req.order_id.to_string(),
            amount: req.amount,
            state,
            captures: 0,
            reason: reason.cloned(),
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
        self.record(match &answer {
            Authorization::Authorized { .. } => charge(ChargeState::Authorized, None),
            Authorization::Pending { .. } => charge(ChargeState::Pending, None),
            Authorization::Declined { reason, .. } => charge(ChargeState::Declined, Some(reason)),
        })?;
        if let Ok(mut orders) = self.by_order.lock() {
            orders.insert(req.order_id.to_string(), reference.clone());
        }
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

    async fn find_authorization(&self, order: &OrderId) -> PortResult<Option<String>> {
        let orders = self
            .by_order
            .lock()
            .map_err(|_| PortError::internal("sandbox ledger poisoned"))?;
        Ok(orders.get(order.as_str()).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stampede_core::{Currency, ManualClock, PaymentId, Timestamp};

    fn gateway() -> (SandboxGateway, mpsc::Receiver<SignedEvent>) {
        let (tx, rx) = mpsc::channel(8);
        let clock = Arc::new(ManualClock::new(Timestamp(1_700_000_000_000)));
        let timings = SandboxTimings {
            slow: Duration::from_millis(1),
            async_confirm: Duration::from_millis(1),
        };
        (SandboxGateway::new("secret".into(), clock, timings, tx), rx)
    }

    /// A request for order number `order`.
    fn req_for(order: u8, token: &str) -> AuthorizeRequest {
        AuthorizeRequest {
            payment_id: PaymentId::generate(1, order.into()),
            order_id: OrderId::generate(1, order.into()),
            amount: Money(500),
            currency: Currency::parse("EUR").unwrap(),
            method: "card".into(),
            token: token.into(),
        }
    }

    /// A request for an order of its own per token.
    fn req(token: &str) -> AuthorizeRequest {
        req_for(token.len() as u8, token)
    }

    #[tokio::test]
    async fn an_order_is_authorized_once_however_often_it_asks() {
        let (g, _rx) = gateway();
        for token in ["tok_ok", "tok_decline", "tok_async"] {
            let first = g.authorize(&req(token)).await.unwrap();
            let again = g.authorize(&req(token)).await.unwrap();
            assert_eq!(first, again, "{token}: a retry gets the first answer");
        }
        // Even with another card: the order's authorization is settled.
        let declined = g.authorize(&req_for(200, "tok_decline")).await.unwrap();
        assert_eq!(
            g.authorize(&req_for(200, "tok_ok")).await.unwrap(),
            declined
        );
        assert_eq!(g.charges().len(), 4, "one charge per order");
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
