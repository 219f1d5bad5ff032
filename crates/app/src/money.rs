//! The money reconciliation: every move of money the judge decided is finished at the gateway
//! exactly once, whatever crashed in between.
//!
//! The judge records the move it decided (capture, void, refund, see [`GatewayOwed`]) in the
//! same transaction that confirms, fails, cancels or refunds the order. The request that made
//! the decision then calls the gateway and clears the record; if it dies first (kill -9, a
//! gateway error), this job finds the record and finishes the move. Every gateway call is
//! idempotent per reference, so a move finished twice (the request and the job racing, or a
//! crash after the gateway answered but before the record was cleared) moves money once.
//!
//! It also resolves pending orders nobody will settle: a checkout that died while the
//! authorization's answer was on its way leaves an order with no reference and, maybe, money
//! authorized at the gateway that the shop never heard of. After
//! `payment_answer_timeout_secs` the authorization is looked up by the order id, the order
//! fails (its holds let go of it and lapse as usual) and the authorization is voided. An
//! asynchronous payment still unsettled after `payment_deadline_secs` is ended the same way.

use crate::ports::{
    AuditEntry, Event, GatewayOwed, OwedDone, OwedPayment, PaymentApplied, PaymentResult,
};
use crate::{App, AppError};

/// Most owed moves or stuck orders handled in one run (the next run takes the rest).
const BATCH: u32 = 200;

/// Why a pending order whose authorization's answer was never recorded failed.
pub const AUTHORIZATION_LOST: &str = "authorization_lost";
/// Why an asynchronous payment that never settled failed.
pub const PAYMENT_TIMEOUT: &str = "payment_timeout";

/// What one run of the money reconciliation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoneyReport {
    /// Owed moves the gateway acknowledged.
    pub finished: u64,
    /// Owed moves the gateway refused or could not be asked (retried next run).
    pub failed: u64,
    /// Stuck pending orders failed (and their authorization, if any, voided).
    pub stuck_orders: u64,
}

impl MoneyReport {
    /// Nothing was found to do.
    pub fn is_empty(&self) -> bool {
        *self == MoneyReport::default()
    }
}

impl App {
    /// Resolves stuck pending orders, then finishes every money move still owed to the
    /// gateway. Safe to run on every node at once: each step is guarded in the judge and
    /// idempotent at the gateway.
    pub async fn reconcile_payments(&self) -> Result<MoneyReport, AppError> {
        let mut report = MoneyReport::default();
        let now = self.clock.now();
        let unanswered_before = now.plus_millis(
            -self
                .config
                .payment_answer_timeout_secs
                .max(0)
                .saturating_mul(1000),
        );
        let deadline_before = now.plus_millis(
            -self
                .config
                .payment_deadline_secs
                .max(0)
                .saturating_mul(1000),
        );
        for order in self
            .store
            .stuck_orders(unanswered_before, deadline_before, BATCH)
            .await?
        {
            let known = order.payment.as_ref().and_then(|p| p.reference.clone());
            let (reference, reason) = match known {
                Some(r) => (Some(r), PAYMENT_TIMEOUT),
                None => (
                    self.gateway.find_authorization(&order.id).await?,
                    AUTHORIZATION_LOST,
                ),
            };
            let result = PaymentResult::Abandoned {
                reference: reference.clone(),
                reason: reason.into(),
            };
            if let Some(PaymentApplied::Done(o)) =
                self.apply_payment(&order.id, result, Vec::new()).await?
            {
                report.stuck_orders += 1;
                metrics::counter!("stampede_stuck_orders_failed_total", "reason" => reason)
                    .increment(1);
                tracing::warn!(order = %o.id, reason, ?reference, "stuck pending order failed");
                self.audit_as(
                    "reconciler",
                    "payment.abandon",
                    o.id.as_str(),
                    None::<&()>,
                    Some(&reason),
                )
                .await;
                self.bus.publish(Event::PaymentFailed {
                    order_id: o.id,
                    user_id: o.user_id,
                });
                self.outbox_kick.notify_one();
            }
        }
        let owed = self.store.payments_owed(BATCH).await?;
        metrics::gauge!("stampede_payments_owed").set(owed.len() as f64);
        // Together, so their records share a commit (one by one, a run that finds the moves of
        // a crowd's checkouts still in flight would commit once for each).
        let finished = futures::future::join_all(owed.iter().map(|p| self.finish_owed(p))).await;
        for done in finished {
            if done {
                report.finished += 1;
            } else {
                report.failed += 1;
            }
        }
        if report.finished > 0 {
            metrics::counter!("stampede_payments_finished_late_total").increment(report.finished);
            tracing::warn!(
                finished = report.finished,
                "money moves left unfinished were finished"
            );
        }
        Ok(report)
    }

    /// Does the owed move at the gateway and records it done. Returns whether it is all done;
    /// a failure is logged and counted and left owed for the next run.
    pub(crate) async fn finish_owed(&self, payment: &OwedPayment) -> bool {
        self.finish_owed_noting(payment, Vec::new(), Recording::Awaited)
            .await
    }

    /// [`App::finish_owed`], writing `audit` in the transaction that records the first move
    /// (or by itself if no move gets recorded). With [`Recording::Behind`], the record of the
    /// last move is written without waiting for its commit.
    pub(crate) async fn finish_owed_noting(
        &self,
        payment: &OwedPayment,
        mut audit: Vec<AuditEntry>,
        recording: Recording,
    ) -> bool {
        let mut owed = payment.owed;
        let done = loop {
            let reference = payment.reference.as_str();
            // The capture first; the refund only once the judge knows it was done, so a retry
            // never captures after a refund.
            let call = match owed {
                GatewayOwed::Capture | GatewayOwed::CaptureThenRefund => {
                    self.gateway.capture(reference).await
                }
                GatewayOwed::Void => self.gateway.void(reference).await,
                GatewayOwed::Refund => self.gateway.refund(reference).await,
            };
            let next = owed.after_first_call();
            if let Err(e) = call {
                metrics::counter!("stampede_payment_moves_failed_total", "move" => owed.as_str())
                    .increment(1);
                tracing::error!(error = %e, order = %payment.order_id, owed = owed.as_str(), "gateway move failed; it stays owed");
                break false;
            }
            let now = self.clock.now();
            if next.is_none() && recording == Recording::Behind {
                let writes = self.checkout_writes.clone();
                let (order, done) = (
                    payment.order_id.clone(),
                    OwedDone {
                        payment: payment.payment_id.clone(),
                        done: owed,
                        next,
                        now,
                        audit: std::mem::take(&mut audit),
                    },
                );
                tokio::spawn(async move {
                    if let Err(e) = writes.owed_done(done).await {
                        tracing::warn!(error = %e, %order, "could not record a finished money move; it will be repeated (idempotent)");
                    }
                });
                break true;
            }
            let recorded = self
                .payment_owed_done(&payment.payment_id, owed, next, now, audit.clone())
                .await;
            if recorded.is_ok() {
                audit.clear();
            }
            match recorded {
                Ok(true) => {}
                // Someone else (a racing request or node) recorded it, or the judge decided
                // something later: what is owed now is theirs to finish.
                Ok(false) => break true,
                Err(e) => {
                    tracing::warn!(error = %e, order = %payment.order_id, "could not record a finished money move; it will be repeated (idempotent)");
                    break false;
                }
            }
            match next {
                Some(n) => owed = n,
                None => break true,
            }
        };
        self.write_audits(audit).await;
        done
    }
}

/// Whether a caller of [`App::finish_owed_noting`] waits for the record of the last move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recording {
    /// Every record committed before it returns (the reconciliation counts what it finished).
    Awaited,
    /// The last record is written behind the caller: a buyer's answer waits for the capture at
    /// the gateway, not for the judge to note it. If the process dies before that commit, the
    /// move stays owed and the money reconciliation repeats it (the gateway answers a
    /// reference's move once), so nothing is lost and nobody is charged twice.
    Behind,
}
