//! The jobs that run beside the requests: the sweeper (lapsed holds return their stock), the
//! reconciler (the gate is rebuilt from the judge, and the drift it repaired is reported) and
//! the stock publisher (coalesced live stock updates). Each loop stops when told to.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{App, AppError};

impl App {
    /// Ends every hold past its expiry and returns its stock to the gate. Returns how many.
    pub async fn sweep(&self) -> Result<usize, AppError> {
        let mut total = 0;
        loop {
            let pair = self.gate_sync.read().await;
            let expired = self.store.expire_due_holds(self.clock.now(), 1000).await?;
            let n = expired.len();
            for hold in &expired {
                self.gate
                    .give_back(&hold.sale_id, &hold.user_id, hold.quantity)
                    .await?;
                self.stock_changed(&hold.sale_id);
            }
            drop(pair);
            total += n;
            if n < 1000 {
                break;
            }
        }
        if total > 0 {
            metrics::counter!("stampede_holds_expired_total").increment(total as u64);
            tracing::debug!(expired = total, "sweeper returned lapsed holds");
        }
        Ok(total)
    }

    /// Rebuilds the gate from the judge; returns the units of drift repaired.
    pub async fn reconcile(&self) -> Result<u64, AppError> {
        let drift = {
            let _quiet = self.gate_sync.write().await;
            let seeds = self.store.gate_seeds().await?;
            self.gate.rebuild(&seeds).await?
        };
        metrics::counter!("stampede_gate_drift_repaired_units_total").increment(drift);
        metrics::gauge!("stampede_gate_last_drift_units").set(drift as f64);
        if drift > 0 {
            tracing::warn!(drift, "gate drift repaired from the judge");
        }
        self.check_invariants().await?;
        Ok(drift)
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
        for sale in sales {
            self.sales.put(sale);
        }
        Ok(n)
    }

    /// Runs the sweeper, reconciler and stock publisher until `stop` turns true.
    pub fn spawn_background(
        self: &Arc<Self>,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let sweep = Duration::from_millis(self.config.sweep_interval_ms.max(10));
        let reconcile = Duration::from_secs(self.config.reconcile_interval_secs.max(1));
        let publish = Duration::from_millis(self.config.stock_publish_interval_ms.max(10));
        vec![
            spawn_every(self.clone(), stop.clone(), sweep, "sweeper", |app| {
                Box::pin(async move { app.sweep().await.map(|_| ()) })
            }),
            spawn_every(self.clone(), stop.clone(), reconcile, "reconciler", |app| {
                Box::pin(async move { app.reconcile().await.map(|_| ()) })
            }),
            spawn_every(self.clone(), stop, publish, "stock publisher", |app| {
                Box::pin(async move { app.publish_stock().await })
            }),
        ]
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
