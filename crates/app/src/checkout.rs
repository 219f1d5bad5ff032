//! Checkout: holds become an order, the gateway authorizes, and the capture is decided (and
//! recorded as owed) in the same store transaction that turns held units into sold ones; the
//! request then captures, and the money reconciliation (`money.rs`) finishes it if the
//! request could not. A hold that lapsed first means the
//! authorization is voided and nothing is charged. Orders, cancellations and webhooks.

use std::sync::Arc;

use serde::Deserialize;

use stampede_core::checkout::HOLD_EXPIRED;
use stampede_core::{HoldId, Order, OrderId, OrderStatus, PaymentId, SaleId, Timestamp};

use crate::auth::Principal;
use crate::money::Recording;
use crate::ports::{
    AuditEntry, Authorization, AuthorizeRequest, Cancelled, CheckoutIds, Event, GatewayOwed,
    IdempotencyAnswer, IdempotencyClaim, IdempotencyStart, KeyedOrder, NewOrder, OwedDone,
    OwedPayment, PaymentAnswer, PaymentApplied, PaymentResult, PortError,
};
use crate::{webhook, App, AppError};

/// Most holds one order may name.
pub const MAX_HOLDS_PER_ORDER: usize = 50;

/// A checkout request after parsing.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub hold_ids: Vec<String>,
    pub method: String,
    pub token: String,
}

/// A gateway event delivered to `POST /api/v1/payments/webhook`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEvent {
    /// Unique per event: replays are recognised by it.
    pub id: String,
    /// `payment.succeeded` or `payment.failed`.
    #[serde(rename = "type")]
    pub kind: String,
    pub data: WebhookData,
}

/// The payment a webhook is about.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookData {
    pub reference: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// New ids for a checkout's order and payment.
fn fresh_ids(now: Timestamp) -> CheckoutIds {
    CheckoutIds {
        order_id: OrderId::generate(now.millis(), rand::random()),
        payment_id: PaymentId::generate(now.millis(), rand::random()),
    }
}

fn check_checkout(req: &CheckoutRequest) -> Result<Vec<HoldId>, AppError> {
    if req.hold_ids.is_empty() || req.hold_ids.len() > MAX_HOLDS_PER_ORDER {
        return Err(AppError::invalid(format!(
            "hold_ids must name 1 to {MAX_HOLDS_PER_ORDER} holds"
        )));
    }
    if req.method.trim().is_empty() || req.method.chars().count() > 32 {
        return Err(AppError::invalid(
            "payment.method must be 1 to 32 characters",
        ));
    }
    if req.token.trim().is_empty() || req.token.chars().count() > 256 {
        return Err(AppError::invalid(
            "payment.token must be 1 to 256 characters",
        ));
    }
    let mut ids = Vec::with_capacity(req.hold_ids.len());
    for raw in &req.hold_ids {
        let id = HoldId::parse(raw).ok_or(AppError::NotFound)?;
        if ids.contains(&id) {
            return Err(AppError::invalid("hold_ids must not repeat"));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// What a gateway failure leaves as the order's failure reason.
const GATEWAY_UNAVAILABLE: &str = "gateway_unavailable";

/// A keyed checkout's answer on its way to the store.
#[derive(Debug, Clone)]
pub(crate) struct AnswerInFlight {
    request_hash: String,
    status: u16,
    body: String,
}

/// The answer to a checkout under an `Idempotency-Key`.
#[derive(Debug)]
pub enum KeyedCheckout {
    /// It ran now: its result, and the answer stored for the key (what the client gets).
    Ran {
        result: Box<Result<Order, AppError>>,
        status: u16,
        body: String,
    },
    /// The key's first answer, as it was stored.
    Replay { status: u16, body: String },
}

impl App {
    /// Records a gateway's answer for an order now, with `audit` in the same transaction,
    /// sharing a commit with other checkouts'.
    pub(crate) async fn apply_payment(
        &self,
        order: &OrderId,
        result: PaymentResult,
        audit: Vec<AuditEntry>,
    ) -> Result<Option<PaymentApplied>, PortError> {
        let answer = PaymentAnswer {
            order: order.clone(),
            result,
            now: self.clock.now(),
            audit,
        };
        self.checkout_writes.payment(answer).await
    }

    /// Records that the gateway did a payment's owed move, sharing a commit with others'.
    pub(crate) async fn payment_owed_done(
        &self,
        payment: &PaymentId,
        done: GatewayOwed,
        next: Option<GatewayOwed>,
        now: Timestamp,
        audit: Vec<AuditEntry>,
    ) -> Result<bool, PortError> {
        let payment = payment.clone();
        let moved = OwedDone {
            payment,
            done,
            next,
            now,
            audit,
        };
        self.checkout_writes.owed_done(moved).await
    }

    /// A checkout under an `Idempotency-Key`, the whole protocol: the key is claimed with the
    /// ids its order will have; the checkout runs, or resumes if the key's earlier claim died
    /// unanswered (a crash at any step: its order, if committed, is found under the same ids,
    /// and the gateway answers an order once); `render` turns the result into the answer the
    /// client gets, which is stored for replays, unless it is a 5xx (nothing was decided: the
    /// claim is dropped so a retry runs afresh).
    pub async fn checkout_keyed(
        self: &Arc<Self>,
        who: &Principal,
        req: CheckoutRequest,
        key: &str,
        request_hash: &str,
        render: impl FnOnce(&Result<Order, AppError>) -> (u16, String) + Send,
    ) -> Result<KeyedCheckout, AppError> {
        if key.is_empty() || key.len() > 255 || !key.is_ascii() {
            return Err(AppError::invalid(
                "Idempotency-Key must be 1 to 255 ASCII characters",
            ));
        }
        let (user, lease) = (&who.user_id, self.config.idempotency_lease_ms);
        let in_flight_key = (user.clone(), key.to_owned());
        if let Some(given) = self.answers_in_flight.get(&in_flight_key) {
            return match given.request_hash == request_hash {
                true => Ok(KeyedCheckout::Replay {
                    status: given.status,
                    body: given.body.clone(),
                }),
                false => Err(AppError::IdempotencyKeyReused),
            };
        }
        let now = self.clock.now();
        let ids = fresh_ids(now);
        let claim = IdempotencyClaim {
            user: user.clone(),
            key: key.to_owned(),
            request_hash: request_hash.to_owned(),
            now,
            lease_ms: lease,
            ids,
        };
        // A well-formed checkout's order is written with its claim (one commit); a malformed
        // one claims alone and is refused by `checkout_as`, an answer stored like any other.
        let (start, created) = match check_checkout(&req) {
            Ok(hold_ids) => {
                let order = NewOrder {
                    order_id: claim.ids.order_id.clone(),
                    payment_id: claim.ids.payment_id.clone(),
                    user_id: user.clone(),
                    hold_ids,
                    method: req.method.clone(),
                    now,
                };
                let keyed = Box::new(KeyedOrder { claim, order });
                self.checkout_writes.keyed_order(keyed).await?
            }
            Err(_) => (self.checkout_writes.claim(claim).await?, None),
        };
        let (ids, resumed) = match start {
            IdempotencyStart::Replay { status, body } => {
                return Ok(KeyedCheckout::Replay { status, body })
            }
            IdempotencyStart::Mismatch => return Err(AppError::IdempotencyKeyReused),
            IdempotencyStart::InProgress => return Err(AppError::IdempotencyInProgress),
            IdempotencyStart::Proceed { ids, resumed } => (ids, resumed),
        };
        let result = match (resumed, created) {
            (true, _) => self.resume_checkout(who, req, ids).await,
            (false, Some(Ok(order))) => self.pay(who, order, ids.payment_id, req).await,
            (false, Some(Err(refused))) => Err(refused.into()),
            (false, None) => self.checkout_as(who, req, ids).await,
        };
        let (status, body) = render(&result);
        if status >= 500 {
            self.store.idempotency_abandon(user, key).await?;
        } else {
            let answer = IdempotencyAnswer {
                user: user.clone(),
                key: key.to_owned(),
                status,
                body: body.clone(),
            };
            // Stored behind the answer: until it commits, a replay on this node is answered
            // from memory, and one elsewhere (or after a crash) finds the claim and resumes
            // under its ids, which gives the same order and status.
            let given = AnswerInFlight {
                request_hash: request_hash.to_owned(),
                status,
                body: body.clone(),
            };
            self.answers_in_flight.insert(in_flight_key.clone(), given);
            let (writes, app) = (self.checkout_writes.clone(), self.clone());
            tokio::spawn(async move {
                if let Err(e) = writes.answer(answer).await {
                    metrics::counter!("stampede_idempotency_answer_failures_total").increment(1);
                    tracing::warn!(error = %e, "an idempotency key's answer was not stored; a retry resumes instead");
                }
                app.answers_in_flight.remove(&in_flight_key);
            });
        }
        fail::fail_point!("checkout.before_respond");
        Ok(KeyedCheckout::Ran {
            result: Box::new(result),
            status,
            body,
        })
    }

    /// Waits, up to `limit`, until every keyed checkout's answer written behind its response
    /// is stored; whether they all were. A graceful stop calls it, so a retry after the
    /// restart replays the answer the client got (after a kill -9 the retry resumes instead,
    /// under the claim's ids). The in-flight answers are the ones still in the map.
    pub async fn store_answers_in_flight(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.answers_in_flight.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        true
    }

    /// Turns the caller's holds into an order and pays for it.
    pub async fn checkout(&self, who: &Principal, req: CheckoutRequest) -> Result<Order, AppError> {
        self.checkout_as(who, req, fresh_ids(self.clock.now()))
            .await
    }

    /// [`App::checkout`] creating its order and payment under `ids`.
    async fn checkout_as(
        &self,
        who: &Principal,
        req: CheckoutRequest,
        ids: CheckoutIds,
    ) -> Result<Order, AppError> {
        let hold_ids = check_checkout(&req)?;
        let new = NewOrder {
            order_id: ids.order_id,
            payment_id: ids.payment_id.clone(),
            user_id: who.user_id.clone(),
            hold_ids,
            method: req.method.clone(),
            now: self.clock.now(),
        };
        let order = self.checkout_writes.order(new).await??;
        self.pay(who, order, ids.payment_id, req).await
    }

    /// Picks up a keyed checkout whose first attempt died unanswered, under its ids: runs it if
    /// its order never committed, asks the gateway again if the order is still unpaid (the
    /// gateway answers an order once, so nobody is charged twice), and otherwise answers from
    /// what the order became.
    async fn resume_checkout(
        &self,
        who: &Principal,
        req: CheckoutRequest,
        ids: CheckoutIds,
    ) -> Result<Order, AppError> {
        let Some(order) = self.store.order(&who.user_id, &ids.order_id).await? else {
            return self.checkout_as(who, req, ids).await;
        };
        metrics::counter!("stampede_checkouts_resumed_total").increment(1);
        let reason = order
            .payment
            .as_ref()
            .and_then(|p| p.failure_reason.clone());
        match (order.status, reason) {
            (OrderStatus::PendingPayment, _) => self.pay(who, order, ids.payment_id, req).await,
            (OrderStatus::PaymentFailed, Some(r)) if r == HOLD_EXPIRED => {
                Err(AppError::HoldExpired)
            }
            // The first attempt answered 5xx for this: so does its retry, which drops the claim.
            (OrderStatus::PaymentFailed, Some(r)) if r == GATEWAY_UNAVAILABLE => Err(
                AppError::Unavailable("the payment gateway did not answer".into()),
            ),
            (OrderStatus::PaymentFailed, reason) => Err(AppError::PaymentDeclined {
                order_id: order.id.to_string(),
                reason: reason.unwrap_or_default(),
            }),
            _ => Ok(order),
        }
    }

    /// Authorizes an order's payment at the gateway and records the answer.
    async fn pay(
        &self,
        who: &Principal,
        order: Order,
        payment_id: PaymentId,
        req: CheckoutRequest,
    ) -> Result<Order, AppError> {
        let auth_req = AuthorizeRequest {
            payment_id,
            order_id: order.id.clone(),
            amount: order.total,
            currency: order.currency.clone(),
            method: req.method,
            token: req.token,
        };
        fail::fail_point!("checkout.before_authorize");
        let authorization = match self.gateway.authorize(&auth_req).await {
            Ok(a) => a,
            Err(e) => {
                let failed = PaymentResult::Declined {
                    reference: None,
                    reason: GATEWAY_UNAVAILABLE.into(),
                };
                self.apply_payment(&order.id, failed, Vec::new()).await?;
                return Err(e.into());
            }
        };
        fail::fail_point!("checkout.after_authorize");
        // Written with the answer, in its transaction.
        let noted = vec![self.audit_entry(
            who.user_id.as_str(),
            "payment.authorize",
            order.id.as_str(),
            None::<&()>,
            Some(&authorization_word(&authorization)),
        )];
        match authorization {
            Authorization::Authorized { reference } => {
                self.settle(who.user_id.as_str(), &order.id, reference, false, noted)
                    .await
            }
            Authorization::Declined { reference, reason } => {
                let result = PaymentResult::Declined {
                    reference: Some(reference),
                    reason: reason.clone(),
                };
                self.apply_payment(&order.id, result, noted).await?;
                metrics::counter!("stampede_payments_total", "outcome" => "declined").increment(1);
                self.bus.publish(Event::PaymentFailed {
                    order_id: order.id.clone(),
                    user_id: who.user_id.clone(),
                });
                self.outbox_kick.notify_one();
                Err(AppError::PaymentDeclined {
                    order_id: order.id.to_string(),
                    reason,
                })
            }
            Authorization::Pending { reference } => {
                let result = PaymentResult::Pending { reference };
                match self.apply_payment(&order.id, result, noted).await? {
                    Some(
                        PaymentApplied::Done(o)
                        | PaymentApplied::Retook { order: o, .. }
                        | PaymentApplied::AlreadySettled(o)
                        | PaymentApplied::HoldLapsed(o),
                    ) => Ok(o),
                    None => Err(AppError::NotFound),
                }
            }
        }
    }

    /// Records an authorized payment: capture and confirm if every hold can be honoured, else
    /// void. `retake` lets a late asynchronous payment take lapsed stock again if it is there.
    async fn settle(
        &self,
        actor: &str,
        order_id: &OrderId,
        reference: String,
        retake: bool,
        noted: Vec<AuditEntry>,
    ) -> Result<Order, AppError> {
        let result = PaymentResult::Authorized {
            reference: reference.clone(),
            retake,
        };
        let applied = self
            .apply_payment(order_id, result, noted)
            .await?
            .ok_or(AppError::NotFound)?;
        match applied {
            PaymentApplied::Done(order) => self.confirmed(actor, order, &reference, &[]).await,
            PaymentApplied::Retook { order, sales } => {
                self.confirmed(actor, order, &reference, &sales).await
            }
            PaymentApplied::HoldLapsed(order) => {
                let id = order.id.as_str();
                let noted =
                    self.audit_entry(actor, "payment.void", id, None::<&()>, Some(&reference));
                let void = owed(&order, &reference, GatewayOwed::Void)?;
                if !self
                    .finish_owed_noting(&void, vec![noted], Recording::Behind)
                    .await
                {
                    metrics::counter!("stampede_void_failures_total").increment(1);
                }
                metrics::counter!("stampede_payments_total", "outcome" => "voided").increment(1);
                self.outbox_kick.notify_one();
                Err(AppError::HoldExpired)
            }
            PaymentApplied::AlreadySettled(order) => Ok(order),
        }
    }

    /// A payment's confirmation committed: capture (or leave it owed), count, tell; and if
    /// stock was `retaken` after a hold lapsed, bring those sales' gate counts in line.
    async fn confirmed(
        &self,
        actor: &str,
        order: Order,
        reference: &str,
        retaken: &[SaleId],
    ) -> Result<Order, AppError> {
        fail::fail_point!("checkout.after_commit");
        // The judge recorded the capture as owed with the confirmation: if this call
        // fails or the process dies first, the money reconciliation finishes it.
        let id = order.id.as_str();
        let noted = self.audit_entry(actor, "payment.capture", id, None::<&()>, Some(&reference));
        let capture = owed(&order, reference, GatewayOwed::Capture)?;
        if !self
            .finish_owed_noting(&capture, vec![noted], Recording::Behind)
            .await
        {
            metrics::counter!("stampede_capture_failures_total").increment(1);
        }
        fail::fail_point!("checkout.after_capture");
        metrics::counter!("stampede_payments_total", "outcome" => "captured").increment(1);
        metrics::counter!("stampede_orders_confirmed_total").increment(1);
        for sale_id in sales_of(&order) {
            self.stock_changed(&sale_id);
            self.shopping_ended(&sale_id, &order.user_id).await;
        }
        if !retaken.is_empty() {
            // Stock was taken again straight into "sold": bring those sales' gate
            // counts in line (nothing else moved).
            self.reconcile_sales(retaken).await?;
        }
        self.bus.publish(Event::OrderConfirmed {
            order_id: order.id.clone(),
            user_id: order.user_id.clone(),
        });
        self.outbox_kick.notify_one();
        Ok(order)
    }

    /// The caller's orders, newest first.
    pub async fn orders(&self, who: &Principal) -> Result<Vec<Order>, AppError> {
        Ok(self.store.orders(&who.user_id).await?)
    }

    /// One of the caller's orders; someone else's is "not found".
    pub async fn order(&self, who: &Principal, id: &str) -> Result<Order, AppError> {
        let id = OrderId::parse(id).ok_or(AppError::NotFound)?;
        self.store
            .order(&who.user_id, &id)
            .await?
            .ok_or(AppError::NotFound)
    }

    /// Cancels one of the caller's orders: a paid one is refunded and its units return.
    pub async fn cancel_order(
        self: &std::sync::Arc<Self>,
        who: &Principal,
        id: &str,
    ) -> Result<Order, AppError> {
        let id = OrderId::parse(id).ok_or(AppError::NotFound)?;
        let user = who.user_id.clone();
        let outcome = self
            .paired(move |app| async move {
                let outcome = app
                    .store
                    .cancel_order(&user, &id, app.clock.now())
                    .await?
                    .ok_or(AppError::NotFound)?
                    .map_err(|status| {
                        AppError::Conflict(format!(
                            "a {} order cannot be cancelled",
                            status.as_str()
                        ))
                    })?;
                if let Cancelled::Refunded { order, .. } = &outcome {
                    for item in &order.items {
                        app.return_to_gate(&item.sale_id, &user, item.quantity)
                            .await;
                    }
                }
                Ok(outcome)
            })
            .await?;
        match outcome {
            Cancelled::Refunded {
                order,
                reference,
                owed: move_owed,
            } => {
                if !self
                    .finish_owed(&owed(&order, &reference, move_owed)?)
                    .await
                {
                    metrics::counter!("stampede_refund_failures_total").increment(1);
                }
                for sale_id in sales_of(&order) {
                    self.stock_changed(&sale_id);
                    self.stock_returned(&sale_id);
                }
                metrics::counter!("stampede_orders_refunded_total").increment(1);
                self.audit(
                    who,
                    "payment.refund",
                    order.id.as_str(),
                    None::<&()>,
                    Some(&reference),
                )
                .await;
                Ok(order)
            }
            Cancelled::Cancelled(order) => {
                if let Some(reference) = order.payment.as_ref().and_then(|p| p.reference.clone()) {
                    if !self
                        .finish_owed(&owed(&order, &reference, GatewayOwed::Void)?)
                        .await
                    {
                        metrics::counter!("stampede_void_failures_total").increment(1);
                    }
                }
                Ok(order)
            }
        }
    }

    /// A gateway event: verified, de-duplicated by id, then applied.
    pub async fn payment_webhook(
        &self,
        raw_body: &[u8],
        signature: Option<&str>,
    ) -> Result<(), AppError> {
        let now = self.clock.now();
        let valid = signature.is_some_and(|sig| {
            webhook::verify(
                &self.config.webhook_secret,
                sig,
                raw_body,
                now,
                self.config.webhook_tolerance_secs,
            )
        });
        if !valid {
            metrics::counter!("stampede_webhooks_total", "outcome" => "bad_signature").increment(1);
            return Err(AppError::BadSignature);
        }
        let event: WebhookEvent = serde_json::from_slice(raw_body)
            .map_err(|e| AppError::invalid(format!("webhook body: {e}")))?;
        if event.id.is_empty() || event.id.len() > 255 {
            return Err(AppError::invalid("webhook id must be 1 to 255 characters"));
        }
        // A seen id has no effect, whatever it carries. The id is recorded only after the
        // effect, so a crash in between means a retried delivery applies it (not that it is
        // lost); a replay racing the first delivery is harmless because applying is idempotent
        // by the order's state machine (a settled order ignores further events).
        if self.store.webhook_event_seen(&event.id).await? {
            metrics::counter!("stampede_webhooks_total", "outcome" => "replay").increment(1);
            return Ok(());
        }
        let order = self
            .store
            .order_by_payment_reference(&event.data.reference)
            .await?;
        match (event.kind.as_str(), order) {
            (_, None) => {
                tracing::warn!(reference = %event.data.reference, "webhook for unknown payment");
            }
            ("payment.succeeded", Some(order)) => {
                match self
                    .settle(
                        "gateway",
                        &order.id,
                        event.data.reference.clone(),
                        true,
                        Vec::new(),
                    )
                    .await
                {
                    Ok(_) | Err(AppError::HoldExpired) => {}
                    Err(e) => return Err(e),
                }
            }
            ("payment.failed", Some(order)) => {
                let result = PaymentResult::Declined {
                    reference: Some(event.data.reference.clone()),
                    reason: event
                        .data
                        .reason
                        .clone()
                        .unwrap_or_else(|| "declined".into()),
                };
                if let Some(PaymentApplied::Done(o)) =
                    self.apply_payment(&order.id, result, Vec::new()).await?
                {
                    self.outbox_kick.notify_one();
                    self.bus.publish(Event::PaymentFailed {
                        order_id: o.id,
                        user_id: o.user_id,
                    });
                }
            }
            (other, Some(_)) => {
                return Err(AppError::invalid(format!("unknown webhook type {other:?}")));
            }
        }
        let first = self.store.record_webhook_event(&event.id, now).await?;
        let outcome = if first { "applied" } else { "replay" };
        metrics::counter!("stampede_webhooks_total", "outcome" => outcome).increment(1);
        Ok(())
    }
}

/// The money move the judge just recorded as owed for this order's payment.
fn owed(order: &Order, reference: &str, owed: GatewayOwed) -> Result<OwedPayment, AppError> {
    let payment = order
        .payment
        .as_ref()
        .ok_or_else(|| AppError::Internal(format!("order {} has no payment", order.id)))?;
    Ok(OwedPayment {
        payment_id: payment.id.clone(),
        order_id: order.id.clone(),
        reference: reference.to_string(),
        owed,
    })
}

fn sales_of(order: &Order) -> Vec<SaleId> {
    let mut ids: Vec<SaleId> = order.items.iter().map(|i| i.sale_id.clone()).collect();
    ids.sort();
    ids.dedup();
    ids
}

fn authorization_word(a: &Authorization) -> &'static str {
    match a {
        Authorization::Authorized { .. } => "authorized",
        Authorization::Declined { .. } => "declined",
        Authorization::Pending { .. } => "pending",
    }
}
