//! Outgoing webhooks: every order event, told to the shop's own systems by a signed HTTP call,
//! at least once.
//!
//! [`App::apply_outbox_event`] queues one delivery per event in the store (keyed by the
//! event's id, so redeliveries of the event queue nothing more). The delivery job here leases
//! due deliveries, sends each through the [`ShopWebhooks`] port, and records the outcome: done,
//! or failed and due again after a backoff of `min(500 ms × 2^attempts, 5 min)`.
//!
//! Invariants:
//! * a delivery is sent by one sender at a time: claims lease it (`FOR UPDATE SKIP LOCKED` in
//!   PostgreSQL), for longer than one pass can take, so several nodes and workers can run the
//!   job at once;
//! * a delivery is never given up on: the shop may be down for hours, and the backlog and lag
//!   gauges are what tell an operator;
//! * the shop may see an event more than once (a sender that dies after the shop answered but
//!   before recording it): it de-duplicates by the event id.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use crate::ports::{ShopWebhooks, WebhookDelivery};
use crate::{App, AppError};

/// Deliveries one pass leases at a time. With [`CONCURRENCY`] sends at once and the sender's
/// 5 s timeout, a pass takes at most ~10 s: well inside [`LEASE_MS`].
const BATCH: u32 = 16;
/// Sends in flight at once per node: a slow shop must not hold up every other delivery, nor
/// get a flood from one node.
const CONCURRENCY: usize = 8;
/// How long a claim keeps other senders off a delivery: longer than a whole pass.
const LEASE_MS: i64 = 30_000;
/// The first retry's delay; each further failure doubles it.
const BACKOFF_BASE_MS: i64 = 500;
/// The longest wait between two attempts.
const BACKOFF_MAX_MS: i64 = 5 * 60 * 1000;
/// Longest error text kept on a delivery (a shop's error page can be big).
const MAX_ERROR_CHARS: usize = 500;

/// The wait after the failure of a delivery that had failed `attempts` times before:
/// `min(500 ms × 2^attempts, 5 min)`.
pub fn backoff_ms(attempts: u32) -> i64 {
    // 2^10 × 500 ms already exceeds the cap; stop doubling there so nothing overflows.
    let doublings = attempts.min(10);
    (BACKOFF_BASE_MS << doublings).min(BACKOFF_MAX_MS)
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
        }
    }
}

impl App {
    /// One pass of the delivery job: sends every due delivery it can lease and records each
    /// outcome. Returns how many were delivered. Does nothing without a configured sender.
    pub async fn deliver_shop_webhooks(&self) -> Result<usize, AppError> {
        let Some(sender) = self.shop_webhooks.clone() else {
            return Ok(0);
        };
        let mut delivered = 0;
        loop {
            let due = self
                .store
                .webhook_claim(self.clock.now(), LEASE_MS, BATCH)
                .await?;
            if due.is_empty() {
                break;
            }
            let n = due.len();
            let outcomes: Vec<Result<Outcome, AppError>> = futures::stream::iter(due)
                .map(|d| self.attempt(sender.as_ref(), d))
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            for outcome in outcomes {
                if outcome? == Outcome::Delivered {
                    delivered += 1;
                }
            }
            if n < BATCH as usize {
                break;
            }
        }
        Ok(delivered)
    }

    /// Sends one leased delivery and records the outcome in the store. A failure to record it
    /// is an error of the pass; the lease then lapses and the delivery is sent again (at least
    /// once).
    async fn attempt(
        &self,
        sender: &dyn ShopWebhooks,
        delivery: WebhookDelivery,
    ) -> Result<Outcome, AppError> {
        let outcome = match sender.send(&delivery).await {
            Ok(()) => {
                self.store
                    .webhook_delivered(&delivery.event_id, self.clock.now())
                    .await?;
                Outcome::Delivered
            }
            Err(e) => {
                let error: String = e.to_string().chars().take(MAX_ERROR_CHARS).collect();
                let next = self.clock.now().plus_millis(backoff_ms(delivery.attempts));
                tracing::debug!(
                    event_id = %delivery.event_id,
                    attempts = delivery.attempts + 1,
                    error = %error,
                    "shop webhook failed; will retry"
                );
                self.store
                    .webhook_failed(&delivery.event_id, next, &error)
                    .await?;
                Outcome::Failed
            }
        };
        metrics::counter!("stampede_webhook_deliveries_total", "outcome" => outcome.label())
            .increment(1);
        Ok(outcome)
    }

    /// Exports the deliveries waiting and the age of the oldest (`stampede_webhook_backlog`,
    /// `stampede_webhook_lag_seconds`): a shop that is down shows as a growing lag.
    pub async fn report_webhook_backlog(&self) -> Result<(), AppError> {
        if self.shop_webhooks.is_none() {
            return Ok(());
        }
        let (waiting, oldest) = self.store.webhook_backlog().await?;
        metrics::gauge!("stampede_webhook_backlog").set(waiting as f64);
        let lag = oldest.map_or(0, |t| self.clock.now().0.saturating_sub(t.0).max(0));
        metrics::gauge!("stampede_webhook_lag_seconds").set(lag as f64 / 1000.0);
        Ok(())
    }

    /// Runs the delivery job every `shop_webhook_interval_ms`, and at once when this node
    /// queued a delivery; `None` if the shop configured no webhook URL.
    pub(crate) fn spawn_shop_webhooks(
        self: &Arc<Self>,
        mut stop: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.shop_webhooks.as_ref()?;
        let app = self.clone();
        let every = Duration::from_millis(app.config.shop_webhook_interval_ms.max(10));
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut passes: u64 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = app.webhook_kick.notified() => {}
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            break;
                        }
                        continue;
                    }
                }
                if let Err(e) = app.deliver_shop_webhooks().await {
                    metrics::counter!("stampede_background_errors_total", "job" => "shop webhooks")
                        .increment(1);
                    tracing::warn!(error = %e, "shop webhook pass failed; deliveries stay for the next try");
                }
                // The gauges need no 200 ms freshness: about every 5 s at the default pace.
                if passes % 25 == 0 {
                    if let Err(e) = app.report_webhook_backlog().await {
                        tracing::warn!(error = %e, "could not read the webhook backlog");
                    }
                }
                passes = passes.wrapping_add(1);
            }
            tracing::debug!(job = "shop webhooks", "stopped");
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_up_to_five_minutes() {
        assert_eq!(backoff_ms(0), 500);
        assert_eq!(backoff_ms(1), 1_000);
        assert_eq!(backoff_ms(2), 2_000);
        assert_eq!(backoff_ms(9), 256_000);
        assert_eq!(backoff_ms(10), 300_000);
        assert_eq!(backoff_ms(u32::MAX), 300_000);
    }
}
