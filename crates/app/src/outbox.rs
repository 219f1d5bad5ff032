//! The outbox relay and the effect of an outbox event.
//!
//! The store writes an order's event in the same transaction as the order change (so a crash
//! cannot lose it); the relay leases a batch, hands it to the sink (the broker's durable queue,
//! or straight to [`App::apply_outbox_event`] in embedded mode) and marks it delivered only once
//! the sink has it. A relay that dies mid-batch leaves the lease to lapse and another relay (on
//! any node) delivers again: delivery is at least once, and the effect (a notification whose id
//! is the event's id) happens once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use stampede_core::{Hold, Order, Timestamp};

use crate::ports::{Event, EventKind, Notification, OutboxEvent, OutboxLease};
use crate::{App, AppError};

/// Events one relay pass leases at a time.
const BATCH: u32 = 100;
/// How long a lease keeps other relays off a batch: longer than a broker's confirm deadline.
const LEASE_MS: i64 = 30_000;

/// RFC 3339 UTC text of a timestamp (millisecond precision).
fn rfc3339(t: Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.millis()) * 1_000_000)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl OutboxEvent {
    /// A new event for `user`, stamped `now`, with a fresh ULID.
    fn new(
        user: &stampede_core::UserId,
        kind: EventKind,
        data: serde_json::Value,
        now: Timestamp,
    ) -> Self {
        let ms = u64::try_from(now.millis()).unwrap_or(0);
        OutboxEvent {
            id: ulid::Ulid::from_parts(ms, rand::random()).to_string(),
            user_id: user.clone(),
            kind,
            created_at: now,
            data,
        }
    }

    /// The event the store writes when `order` has just been confirmed.
    pub fn order_confirmed(order: &Order, now: Timestamp) -> Self {
        let data = serde_json::json!({
            "order_id": order.id.as_str(),
            "total": order.total.format(&order.currency),
            "currency": order.currency.as_str(),
        });
        Self::new(&order.user_id, EventKind::OrderConfirmed, data, now)
    }

    /// The event the store writes when `order`'s payment has just failed, and why.
    pub fn payment_failed(order: &Order, reason: &str, now: Timestamp) -> Self {
        let data = serde_json::json!({ "order_id": order.id.as_str(), "reason": reason });
        Self::new(&order.user_id, EventKind::PaymentFailed, data, now)
    }

    /// The notice that it is `user`'s turn in `sale`'s waiting room: admitted at `now`, the
    /// admission window ends at `until` (reserve before then).
    pub fn queue_admitted(
        user: &stampede_core::UserId,
        sale: &stampede_core::SaleId,
        sale_name: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Self {
        let data = serde_json::json!({
            "user_id": user.as_str(),
            "sale_id": sale.as_str(),
            "sale_name": sale_name,
            "admitted_at": rfc3339(now),
            "admitted_until": rfc3339(until),
            "window_seconds": now.secs_until(until),
        });
        Self::new(user, EventKind::QueueAdmitted, data, now)
    }

    /// The warning the store writes when a live hold is about to lapse.
    pub fn hold_expiring(hold: &Hold, now: Timestamp) -> Self {
        let data = serde_json::json!({
            "hold_id": hold.id.as_str(),
            "sale_id": hold.sale_id.as_str(),
            "quantity": hold.quantity,
            "seconds_left": now.secs_until(hold.expires_at),
        });
        Self::new(&hold.user_id, EventKind::HoldExpiring, data, now)
    }
}

impl App {
    /// Delivers every waiting outbox event it can lease. Returns how many it delivered.
    pub async fn relay_outbox(&self) -> Result<usize, AppError> {
        let mut total = 0;
        loop {
            // The lease and the delivery marks go through the checkout writer: with one
            // writer (SQLite) they share the checkouts' commits instead of adding two a pass.
            let lease = OutboxLease {
                now: self.clock.now(),
                lease_ms: LEASE_MS,
                limit: BATCH,
            };
            let events = self.checkout_writes.outbox_claim(lease).await?;
            if events.is_empty() {
                break;
            }
            let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
            let sent = match &self.outbox {
                Some(sink) => sink.deliver(&events).await.map_err(AppError::from),
                // Applied together, so their notifications share commits; in order, so each
                // buyer's feed keeps the order the events were written in.
                None => {
                    futures::future::join_all(events.iter().map(|e| self.apply_outbox_event(e)))
                        .await
                        .into_iter()
                        .collect()
                }
            };
            if let Err(e) = sent {
                // Not taken: give the lease back, so the pass after the bus returns delivers
                // them instead of waiting out the lease. If this fails too, the lease lapses.
                if let Err(release) = self.store.outbox_release(&ids).await {
                    tracing::debug!(error = %release, "outbox lease not released; it will lapse");
                }
                return Err(e);
            }
            let delivered = ids.len();
            self.checkout_writes.outbox_delivered(ids).await?;
            metrics::counter!("stampede_outbox_delivered_total").increment(delivered as u64);
            total += delivered;
            if events.len() < BATCH as usize {
                break;
            }
        }
        Ok(total)
    }

    /// Exports the outbox's backlog and the age of its oldest event (`stampede_outbox_backlog`,
    /// `stampede_outbox_lag_seconds`), for the outbox-lag alert.
    pub async fn report_outbox_backlog(&self) -> Result<(), AppError> {
        let (waiting, oldest) = self.store.outbox_backlog().await?;
        metrics::gauge!("stampede_outbox_backlog").set(waiting as f64);
        let lag = oldest.map_or(0, |t| self.clock.now().0.saturating_sub(t.0).max(0));
        metrics::gauge!("stampede_outbox_lag_seconds").set(lag as f64 / 1000.0);
        Ok(())
    }

    /// The effect of one event, once whatever the redeliveries: a notification in the buyer's
    /// feed with the event's id, pushed to their live stream on every node; and, if the shop
    /// configured a webhook URL, one queued webhook delivery (keyed by the event's id, so a
    /// redelivered event queues nothing more; see [`crate::shop_webhooks`]).
    ///
    /// Both writes are idempotent, so a failure between them is healed by the redelivery the
    /// error causes.
    ///
    /// The notification is written first, group-committed with other events' (its queue is
    /// entered on the first poll, so events applied together keep their order in a feed).
    pub async fn apply_outbox_event(&self, event: &OutboxEvent) -> Result<(), AppError> {
        let notification = Notification {
            id: event.id.clone(),
            user_id: event.user_id.clone(),
            kind: event.kind,
            created_at: event.created_at,
            data: event.data.clone(),
        };
        if self.checkout_writes.notice(notification.clone()).await? {
            metrics::counter!("stampede_notifications_total", "kind" => event.kind.as_str())
                .increment(1);
            self.bus.publish(Event::Notified { notification });
        } else {
            metrics::counter!("stampede_outbox_redelivered_total").increment(1);
        }
        if self.shop_webhooks.is_some()
            && self.store.webhook_enqueue(event, self.clock.now()).await?
        {
            self.webhook_kick.notify_one();
        }
        Ok(())
    }

    /// Runs the relay every `outbox_interval_ms`, and at once when this node wrote an event.
    pub(crate) fn spawn_outbox_relay(
        self: &Arc<Self>,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let app = self.clone();
        let every = Duration::from_millis(app.config.outbox_interval_ms.max(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = app.outbox_kick.notified() => {}
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            break;
                        }
                        continue;
                    }
                }
                if let Err(e) = app.relay_outbox().await {
                    metrics::counter!("stampede_background_errors_total", "job" => "outbox relay")
                        .increment(1);
                    tracing::warn!(error = %e, "outbox relay failed; events stay for the next try");
                }
            }
            // Last chance to hand over what this node wrote before it stops.
            let _ = app.relay_outbox().await;
        })
    }
}
