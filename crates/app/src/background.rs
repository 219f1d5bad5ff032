//! The jobs that run beside the requests: the sweeper (lapsed holds return their stock), the
//! reconciler (the gate is rebuilt from the judge, and the drift it repaired is reported), the
//! stock publisher (coalesced live stock updates), the money reconciler (captures, voids and
//! refunds a crash left owed, stuck pending orders; see `money.rs`), the outbox relay and, if the shop configured
//! a URL, the shop-webhook delivery job. Each loop stops when told to.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{App, AppError};

impl App {
    /// Ends every hold past its expiry and returns its stock to the gate. Returns how many.
    pub async fn sweep(&self) -> Result<usize, AppError> {
        let mut total = 0;
        loop {
            let pair = self.pair_guard().await;
            let expired = self.store.expire_due_holds(self.clock.now(), 1000).await?;
            let n = expired.len();
            for hold in &expired {
                self.return_to_gate(&hold.sale_id, &hold.user_id, hold.quantity)
                    .await;
                self.stock_changed(&hold.sale_id);
            }
            drop(pair);
            let mut returned: Vec<&stampede_core::SaleId> =
                expired.iter().map(|h| &h.sale_id).collect();
            returned.sort();
            returned.dedup();
            for sale_id in returned {
                self.stock_returned(sale_id);
            }
            for hold in &expired {
                self.shopping_ended(&hold.sale_id, &hold.user_id).await;
            }
            total += n;
            if n < 1000 {
                break;
            }
        }
        if total > 0 {
            metrics::counter!("stampede_holds_expired_total").increment(total as u64);
            tracing::debug!(expired = total, "sweeper returned lapsed holds");
        }
        if self.config.hold_warning_secs > 0 {
            let within = i64::try_from(self.config.hold_warning_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX);
            let warned = self
                .store
                .warn_expiring_holds(self.clock.now(), within, 1000)
                .await?;
            if warned > 0 {
                metrics::counter!("stampede_hold_warnings_total").increment(warned as u64);
                self.outbox_kick.notify_one();
            }
        }
        Ok(total)
    }

    /// Rebuilds the gate from the judge; returns the units of drift repaired. A gate this node
    /// owns is rebuilt with the node's pairs paused (a local read of the judge); a shared gate
    /// is not paused at all: it repairs only what it saw twice, unchanged (see
    /// [`crate::ports::Gate::is_shared`]).
    pub async fn reconcile(&self) -> Result<u64, AppError> {
        let drift = self.rebuild_gate(self.store.gate_seeds().await?).await?;
        metrics::gauge!("stampede_gate_last_drift_units").set(drift as f64);
        if drift > 0 {
            tracing::warn!(drift, "gate drift repaired from the judge");
        }
        self.check_invariants().await?;
        Ok(drift)
    }

    /// [`App::reconcile`] of these sales only: after a late payment took their stock again.
    pub(crate) async fn reconcile_sales(
        &self,
        sales: &[stampede_core::SaleId],
    ) -> Result<u64, AppError> {
        let seeds = self.store.gate_seeds().await?;
        let seeds = seeds.into_iter().filter(|s| sales.contains(&s.sale_id));
        self.rebuild_gate(seeds.collect()).await
    }

    /// Rebuilds the gate's counts of these sales from the judge's; the units of drift repaired.
    async fn rebuild_gate(&self, seeds: Vec<crate::ports::GateSeed>) -> Result<u64, AppError> {
        let _quiet = if self.gate.is_shared() {
            None
        } else {
            Some(self.gate_sync.write().await)
        };
        let mut drift = 0;
        for seed in seeds {
            let repaired = self.gate.rebuild(std::slice::from_ref(&seed)).await?;
            self.record_drift(&seed.sale_id, repaired);
            drift += repaired;
        }
        Ok(drift)
    }

    /// Gives units back to the gate after the judge has already let go of them (a hold
    /// expired or was released, an order refunded, a reservation refused). The judge's change
    /// stands whatever happens here, so a failure (a shared gate unreachable) must not undo or
    /// hide it, nor stop what follows (the refund at the gateway): it is logged and counted,
    /// and the gate stays short until reconciliation repairs it.
    pub(crate) async fn return_to_gate(
        &self,
        sale_id: &stampede_core::SaleId,
        user: &stampede_core::UserId,
        quantity: u32,
    ) {
        if let Err(e) = self.gate.give_back(sale_id, user, quantity).await {
            metrics::counter!("stampede_gate_give_back_failures_total").increment(1);
            tracing::warn!(error = %e, sale = %sale_id, quantity, "could not return units to the gate; reconciliation will");
        }
    }

    /// Counts repaired gate drift for `/metrics` and the admin metrics.
    pub(crate) fn record_drift(&self, sale_id: &stampede_core::SaleId, units: u64) {
        if units == 0 {
            return;
        }
        metrics::counter!("stampede_gate_drift_repaired_units_total", "sale_id" => sale_id.to_string())
            .increment(units);
        *self.drift_repaired.entry(sale_id.clone()).or_insert(0) += units;
    }

    /// Seeds the gate with a sale it lost (a shared gate flushed or restarted empty), from the
    /// judge. One seeding at a time per node; nodes racing are settled by the gate (first wins).
    pub(crate) async fn seed_gate(&self, sale_id: &stampede_core::SaleId) -> Result<(), AppError> {
        let _one = self.seeding.lock().await;
        if self.gate.available(sale_id).await?.is_some() {
            return Ok(()); // another request (or node) did it meanwhile
        }
        let seed = self
            .store
            .gate_seeds()
            .await?
            .into_iter()
            .find(|s| &s.sale_id == sale_id)
            .ok_or(AppError::NotFound)?;
        if self.gate.seed(&seed).await? {
            // Everything the gate should have known was missing.
            let units = seed.available.unsigned_abs()
                + seed
                    .user_units
                    .iter()
                    .map(|(_, n)| u64::from(*n))
                    .sum::<u64>();
            self.record_drift(sale_id, units);
            tracing::warn!(sale = %sale_id, units, "gate had lost the sale; seeded from the judge");
        }
        Ok(())
    }

    /// Stock went back to available: clears this node's sold-out flag and tells the others.
    pub(crate) fn stock_returned(&self, sale_id: &stampede_core::SaleId) {
        if self.config.sold_out_flag_ms == 0 {
            return;
        }
        self.sold_out_until.remove(sale_id);
        self.bus.publish(crate::ports::Event::StockReturned {
            sale_id: sale_id.clone(),
        });
    }

    /// Applies what other nodes announce: returned stock clears the sold-out flag, a revoked
    /// session is refused from now on, a changed sale is read again.
    async fn on_event(&self, event: crate::ports::Event) {
        use crate::ports::Event;
        match event {
            Event::StockReturned { sale_id } => {
                self.sold_out_until.remove(&sale_id);
            }
            Event::RoomMessage { sale_id, text, at } => {
                self.room_message_heard(&sale_id, crate::room_ops::RoomMessage { text, at });
            }
            Event::SessionRevoked {
                session_id,
                expires_at,
            } => self.revoke_session(session_id, expires_at),
            Event::SaleStatus { sale_id, .. } | Event::SaleChanged { sale_id } => {
                self.forget_sale_reads(&sale_id);
                match self.store.sale(&sale_id).await {
                    Ok(Some(sale)) => self.sales.put(sale),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "could not reload a changed sale"),
                }
            }
            _ => {}
        }
    }

    /// Recomputes every sale's stock from the judge's rows and exports
    /// `stampede_invariant_ok{sale_id}` (1 or 0) and `stampede_invariant_violations_total`.
    /// Returns the sales that failed: always empty unless there is a bug.
    pub async fn check_invariants(&self) -> Result<Vec<stampede_core::SaleId>, AppError> {
        let mut failed = Vec::new();
        for sale in self.store.sales().await? {
            let Some(audit) = self.store.stock_audit(&sale.id).await? else {
                continue;
            };
            let ok = audit.invariant_ok();
            metrics::gauge!("stampede_invariant_ok", "sale_id" => sale.id.to_string()).set(if ok {
                1.0
            } else {
                0.0
            });
            if !ok {
                metrics::counter!("stampede_invariant_violations_total").increment(1);
                tracing::error!(sale = %sale.id, ?audit, "stock invariant violated");
                failed.push(sale.id);
            }
        }
        Ok(failed)
    }

    /// Reloads sale configuration into the in-process copy (at start).
    pub async fn load_sales(&self) -> Result<usize, AppError> {
        let sales = self.store.sales().await?;
        let n = sales.len();
        self.sales.put_all(sales);
        Ok(n)
    }

    /// Runs the background jobs (see the module docs) until `stop` turns true.
    pub fn spawn_background(
        self: &Arc<Self>,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let sweep = Duration::from_millis(self.config.sweep_interval_ms.max(10));
        let reconcile = Duration::from_secs(self.config.reconcile_interval_secs.max(1));
        let publish = Duration::from_millis(self.config.stock_publish_interval_ms.max(10));
        let admission = Duration::from_millis(self.config.admission_tick_ms.max(10));
        let money = Duration::from_millis(self.config.payment_reconcile_interval_ms.max(100));
        let revocations = Duration::from_millis(self.config.revocation_refresh_ms.max(10));
        let listener = {
            let app = self.clone();
            let mut events = self.bus.subscribe();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        e = events.recv() => match e {
                            Ok(event) => app.on_event(event).await,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                // Missed some: the flags and caches may be stale; drop the flags.
                                tracing::warn!(missed = n, "event listener lagged");
                                app.sold_out_until.clear();
                                if let Err(e) = app.refresh_revocations().await {
                                    tracing::warn!(error = %e, "could not reload revoked sessions");
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        },
                        changed = stop.changed() => {
                            if changed.is_err() || *stop.borrow() {
                                break;
                            }
                        }
                    }
                }
            })
        };
        let mut jobs = vec![
            listener,
            self.spawn_outbox_relay(stop.clone()),
            spawn_every(
                self.clone(),
                stop.clone(),
                revocations,
                "revocations",
                |app| Box::pin(async move { app.refresh_revocations().await.map(|_| ()) }),
            ),
            spawn_every(self.clone(), stop.clone(), sweep, "sweeper", |app| {
                Box::pin(async move { app.sweep().await.map(|_| ()) })
            }),
            spawn_every(self.clone(), stop.clone(), reconcile, "reconciler", |app| {
                Box::pin(async move {
                    app.load_sales().await?;
                    app.report_outbox_backlog().await?;
                    app.reconcile().await.map(|_| ())
                })
            }),
            spawn_every(
                self.clone(),
                stop.clone(),
                publish,
                "stock publisher",
                |app| Box::pin(async move { app.publish_stock().await }),
            ),
            spawn_every(self.clone(), stop.clone(), admission, "admission", |app| {
                Box::pin(async move { app.admission_tick().await })
            }),
            spawn_every(
                self.clone(),
                stop.clone(),
                money,
                "money reconciler",
                |app| Box::pin(async move { app.reconcile_payments().await.map(|_| ()) }),
            ),
        ];
        jobs.extend(self.spawn_shop_webhooks(stop));
        jobs
    }
}

type JobFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), AppError>> + Send>>;

fn spawn_every(
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
    every: Duration,
    name: &'static str,
    job: fn(Arc<App>) -> JobFuture,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = job(app.clone()).await {
                        metrics::counter!("stampede_background_errors_total", "job" => name).increment(1);
                        tracing::warn!(job = name, error = %e, "background job failed; will retry");
                    }
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
            }
        }
        tracing::debug!(job = name, "stopped");
    })
}
