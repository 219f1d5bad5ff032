//! A payment gateway the simulation controls: answers decided by the card token, references
//! and webhook ids numbered in order (so a seed replays exactly), asynchronous outcomes queued
//! for the simulation to deliver late, out of order or twice, and a ledger that records every
//! move of money so the checker can prove nobody was charged twice or charged without an order.
//!
//! It outlives crashes of the application, as a real provider would.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use stampede_app::ports::{Authorization, AuthorizeRequest, PaymentGateway, PortError, PortResult};
use stampede_core::{Money, OrderId};

/// Card tokens the simulation pays with.
pub mod tokens {
    /// Authorized at once.
    pub const OK: &str = "tok_ok";
    /// Declined at once.
    pub const DECLINE: &str = "tok_decline";
    /// Pending; a `payment.succeeded` webhook follows.
    pub const ASYNC_OK: &str = "tok_async_ok";
    /// Pending; a `payment.failed` webhook follows.
    pub const ASYNC_FAIL: &str = "tok_async_fail";
    /// The gateway cannot be reached.
    pub const DOWN: &str = "tok_down";
}

/// Where a charge is at the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeState {
    Authorized,
    Pending,
    Captured,
    Voided,
    Refunded,
    Declined,
}

/// One authorization and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub reference: String,
    /// The order it pays for: one authorization per order is the rule the checker holds.
    pub order_id: OrderId,
    pub amount: Money,
    pub state: ChargeState,
    /// Captures that moved money (more than one is a double charge).
    pub captures: u32,
}

/// A webhook the gateway owes the shop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedWebhook {
    /// The event id: a replay carries the same one.
    pub id: String,
    /// `payment.succeeded` or `payment.failed`.
    pub kind: &'static str,
    pub reference: String,
}

impl OwedWebhook {
    /// The JSON body the gateway sends.
    pub fn body(&self) -> Vec<u8> {
        let mut data = serde_json::json!({ "reference": self.reference });
        if self.kind == "payment.failed" {
            data["reason"] = serde_json::json!("card_declined");
        }
        serde_json::json!({ "id": self.id, "type": self.kind, "data": data })
            .to_string()
            .into_bytes()
    }
}

/// Which call of the gateway never answers (the process dies while waiting on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hang {
    /// The authorization is made at the provider, its answer never comes back.
    Authorize,
    /// The capture request never reaches the provider.
    Capture,
}

#[derive(Default)]
struct Ledger {
    /// The fault armed for the next call of its kind.
    hang: Option<Hang>,
    /// The reference of the call that is hanging now, once one is.
    hanging: Option<String>,
    charges: BTreeMap<String, Charge>,
    next: u64,
    owed: Vec<OwedWebhook>,
    /// Calls that moved money the wrong way (a capture of a voided charge, a refund of an
    /// uncaptured one), by reference: each is a bug in the application.
    violations: Vec<(String, String)>,
}

/// The simulation's [`PaymentGateway`].
#[derive(Default)]
pub struct SimGateway {
    ledger: Mutex<Ledger>,
}

impl SimGateway {
    /// An empty gateway.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> PortResult<T> {
        let mut ledger = self
            .ledger
            .lock()
            .map_err(|_| PortError::internal("sim gateway ledger poisoned"))?;
        Ok(f(&mut ledger))
    }

    /// Every charge, by reference.
    pub fn charges(&self) -> Vec<Charge> {
        self.with(|l| l.charges.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Wrong-way money moves seen so far: (reference, what happened).
    pub fn violations(&self) -> Vec<(String, String)> {
        self.with(|l| l.violations.clone()).unwrap_or_default()
    }

    /// Arms (or, with `None`, disarms) a call that will never answer.
    pub fn hang_next(&self, hang: Option<Hang>) {
        let _ = self.with(|l| {
            l.hang = hang;
            l.hanging = None;
        });
    }

    /// The reference whose call is hanging, once the armed call was made.
    pub fn hanging(&self) -> Option<String> {
        self.with(|l| l.hanging.clone()).ok().flatten()
    }

    /// Whether the armed fault applies to this call; if so, it is used up and recorded.
    fn hangs(&self, call: Hang, reference: &str) -> bool {
        self.with(|l| {
            if l.hang == Some(call) {
                l.hang = None;
                l.hanging = Some(reference.to_string());
                true
            } else {
                false
            }
        })
        .unwrap_or(false)
    }

    /// Webhooks not yet handed over.
    pub fn owed(&self) -> Vec<OwedWebhook> {
        self.with(|l| l.owed.clone()).unwrap_or_default()
    }

    /// Takes the owed webhook at `index` (the caller delivers it, and keeps it for replays).
    pub fn take_owed(&self, index: usize) -> Option<OwedWebhook> {
        self.with(|l| (index < l.owed.len()).then(|| l.owed.remove(index)))
            .ok()
            .flatten()
    }

    /// Puts a webhook back (its delivery failed; the gateway tries again later).
    pub fn owe_again(&self, hook: OwedWebhook) {
        let _ = self.with(|l| l.owed.push(hook));
    }

    fn transition(&self, reference: &str, to: ChargeState) -> PortResult<()> {
        self.with(|l| {
            let Some(charge) = l.charges.get_mut(reference) else {
                l.violations.push((
                    reference.to_string(),
                    format!("{to:?} of unknown reference {reference}"),
                ));
                return Err(PortError::internal(format!(
                    "unknown reference {reference}"
                )));
            };
            use ChargeState::*;
            let allowed = match (charge.state, to) {
                (a, b) if a == b => return Ok(()),
                (Authorized | Pending, Captured | Voided) | (Captured, Refunded) => true,
                // Voiding what was declined is a harmless no-op at a real provider.
                (Declined, Voided) => return Ok(()),
                _ => false,
            };
            if !allowed {
                l.violations.push((
                    reference.to_string(),
                    format!(
                        "{reference}: {:?} -> {to:?} (order {})",
                        charge.state, charge.order_id
                    ),
                ));
                return Err(PortError::internal(format!(
                    "{:?} -> {to:?} not allowed",
                    charge.state
                )));
            }
            if to == Captured {
                charge.captures += 1;
            }
            charge.state = to;
            Ok(())
        })?
    }
}

#[async_trait]
impl PaymentGateway for SimGateway {
    async fn authorize(&self, req: &AuthorizeRequest) -> PortResult<Authorization> {
        if req.token == tokens::DOWN {
            return Err(PortError::unavailable("sim gateway down"));
        }
        let answer = self.with(|l| {
            l.next += 1;
            let reference = format!("sim_pay_{:06}", l.next);
            let (answer, state) = match req.token.as_str() {
                tokens::OK => (
                    Authorization::Authorized {
                        reference: reference.clone(),
                    },
                    ChargeState::Authorized,
                ),
                tokens::ASYNC_OK | tokens::ASYNC_FAIL => {
                    let ok = req.token == tokens::ASYNC_OK;
                    l.owed.push(OwedWebhook {
                        id: format!("evt_{:06}", l.next),
                        kind: if ok {
                            "payment.succeeded"
                        } else {
                            "payment.failed"
                        },
                        reference: reference.clone(),
                    });
                    let state = if ok {
                        ChargeState::Pending
                    } else {
                        ChargeState::Declined
                    };
                    (
                        Authorization::Pending {
                            reference: reference.clone(),
                        },
                        state,
                    )
                }
                _ => (
                    Authorization::Declined {
                        reference: reference.clone(),
                        reason: "card_declined".into(),
                    },
                    ChargeState::Declined,
                ),
            };
            l.charges.insert(
                reference.clone(),
                Charge {
                    reference,
                    order_id: req.order_id.clone(),
                    amount: req.amount,
                    state,
                    captures: 0,
                },
            );
            answer
        })?;
        let reference = match &answer {
            Authorization::Authorized { reference }
            | Authorization::Pending { reference }
            | Authorization::Declined { reference, .. } => reference.clone(),
        };
        if self.hangs(Hang::Authorize, &reference) {
            futures::future::pending::<()>().await;
        }
        Ok(answer)
    }

    async fn capture(&self, reference: &str) -> PortResult<()> {
        if self.hangs(Hang::Capture, reference) {
            futures::future::pending::<()>().await;
        }
        self.transition(reference, ChargeState::Captured)
    }

    async fn void(&self, reference: &str) -> PortResult<()> {
        self.transition(reference, ChargeState::Voided)
    }

    async fn refund(&self, reference: &str) -> PortResult<()> {
        self.transition(reference, ChargeState::Refunded)
    }

    async fn find_authorization(&self, order: &OrderId) -> PortResult<Option<String>> {
        self.with(|l| {
            l.charges
                .values()
                .find(|c| &c.order_id == order)
                .map(|c| c.reference.clone())
        })
    }
}
