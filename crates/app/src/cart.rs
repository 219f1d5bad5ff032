//! The cart: reserving units (the hot path), listing, resizing and releasing holds.
//!
//! A reserve is judged in the contract's order: authentication and rate limit (HTTP layer),
//! input, sale exists and is live, admission, the buyer's limit, stock. The gate answers the
//! overwhelming "sold out" case from memory; only requests it lets through reach the judge,
//! through the group commit, and a refusal by the judge gives the gate its units back.

use std::sync::Arc;

use stampede_core::{Hold, HoldId, SaleId, SaleStatus, UserId};

use crate::auth::Principal;
use crate::group_commit::{EnqueueError, Verdict};
use crate::ports::{Event, Gate, GateVerdict, ReserveRequest};
use crate::{App, AppError};

/// The reserve's count and latency handles per outcome, registered once and kept: a reserve
/// records into them without asking the metrics registry (a handful of outcomes).
static RESERVE_METRICS: std::sync::OnceLock<
    dashmap::DashMap<&'static str, (metrics::Counter, metrics::Histogram)>,
> = std::sync::OnceLock::new();

/// Most units one request may ask for; anything above is a client error, not a refusal.
pub const MAX_QUANTITY: i64 = 1000;

/// The buyer's live holds and what they add up to.
#[derive(Debug, Clone)]
pub struct Cart {
    pub items: Vec<Hold>,
    /// Sum of unit price × quantity, in the holds' currency (minor units).
    pub total: stampede_core::Money,
    pub currency: Option<stampede_core::Currency>,
    /// Seconds until the first hold lapses (0 for an empty cart).
    pub expires_in_seconds: i64,
}

fn quantity(q: i64) -> Result<u32, AppError> {
    if !(1..=MAX_QUANTITY).contains(&q) {
        return Err(AppError::invalid(format!(
            "quantity must be between 1 and {MAX_QUANTITY}"
        )));
    }
    u32::try_from(q).map_err(|_| AppError::invalid("quantity is out of range"))
}

/// The gate's verdict as the use case's answer.
fn passed(verdict: GateVerdict) -> Result<(), AppError> {
    match verdict {
        GateVerdict::Pass => Ok(()),
        GateVerdict::SoldOut => Err(AppError::SoldOut),
        GateVerdict::LimitExceeded => Err(AppError::LimitExceeded),
        GateVerdict::Unseeded => Err(AppError::Unavailable(
            "the gate is being seeded from the judge".into(),
        )),
        GateVerdict::RateLimited { retry_after_ms } => Err(AppError::RateLimited {
            retry_after_secs: retry_after_ms.div_ceil(1000).max(1),
        }),
    }
}

impl App {
    /// Reserves `quantity` units of a sale for the caller.
    pub async fn reserve(
        self: &Arc<Self>,
        who: &Principal,
        sale_id: &str,
        quantity_requested: i64,
        admission_token: Option<&str>,
        device_id: Option<&str>,
    ) -> Result<Hold, AppError> {
        let started = std::time::Instant::now();
        let result = self
            .reserve_inner(who, sale_id, quantity_requested, admission_token, device_id)
            .await;
        let outcome = match &result {
            Ok(_) => "reserved",
            Err(e) => e.class().label,
        };
        if let (Err(e), Some(sale)) = (&result, SaleId::parse(sale_id)) {
            if !matches!(e, AppError::NotFound | AppError::InvalidInput(_)) {
                self.count_reserve_refusal(&sale, outcome);
                self.count_user_refusal(&who.user_id, outcome);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let table = RESERVE_METRICS.get_or_init(dashmap::DashMap::new);
        if let Some(h) = table.get(outcome) {
            h.0.increment(1);
            h.1.record(seconds);
        } else {
            let h = (
                metrics::counter!("stampede_reserve_total", "outcome" => outcome),
                metrics::histogram!("stampede_reserve_seconds", "outcome" => outcome),
            );
            h.0.increment(1);
            h.1.record(seconds);
            table.insert(outcome, h);
        }
        result
    }

    async fn reserve_inner(
        self: &Arc<Self>,
        who: &Principal,
        sale_id: &str,
        quantity_requested: i64,
        admission_token: Option<&str>,
        device_id: Option<&str>,
    ) -> Result<Hold, AppError> {
        let qty = quantity(quantity_requested)?;
        let sale_id = SaleId::parse(sale_id).ok_or(AppError::NotFound)?;
        let sale = self.sale_config(&sale_id).await?;
        let now = self.clock.now();
        if sale.status_at(now) != SaleStatus::Live {
            return Err(AppError::SaleNotLive);
        }
        if !sale.queue_required {
            if qty > sale.per_user_limit {
                return Err(AppError::LimitExceeded);
            }
        } else {
            // Admission is taken (single use) before the limit and the stock are judged, and
            // given back if they refuse: the buyer keeps their turn while it lasts.
            self.claim_admission(who, &sale, admission_token, device_id, qty)
                .await?;
            if qty > sale.per_user_limit {
                self.settle_admission(who, &sale_id, qty, None).await;
                return Err(AppError::LimitExceeded);
            }
            // From the claim on, the reservation and its settlement run to completion on
            // their own task: a buyer hanging up cannot leave the admission claimed.
            let request = ReserveRequest {
                hold_id: HoldId::generate(now.millis(), rand::random()),
                sale_id: sale_id.clone(),
                user_id: who.user_id.clone(),
                quantity: qty,
                now,
                device_id: device_id.map(str::to_owned),
                hold_cap: self.config.hold_cap,
            };
            let (app, buyer, limit) = (self.clone(), who.clone(), sale.per_user_limit);
            let settle_sale = sale_id.clone();
            let device = device_id.map(str::to_owned);
            let judged = tokio::spawn(async move {
                let judged = app.take_and_judge(request, limit, device.as_deref()).await;
                let bought = judged.as_ref().ok().map(|h| h.expires_at);
                app.settle_admission(&buyer, &settle_sale, qty, bought)
                    .await;
                judged
            })
            .await
            .map_err(|e| AppError::Internal(format!("reservation task: {e}")))?;
            let hold = judged?;
            metrics::counter!("stampede_holds_created_total").increment(1);
            self.stock_changed(&hold.sale_id);
            return Ok(hold);
        }
        let request = ReserveRequest {
            hold_id: HoldId::generate(now.millis(), rand::random()),
            sale_id: sale_id.clone(),
            user_id: who.user_id.clone(),
            quantity: qty,
            now,
            device_id: device_id.map(str::to_owned),
            hold_cap: self.config.hold_cap,
        };
        let hold = self
            .take_and_judge(request, sale.per_user_limit, device_id)
            .await?;
        metrics::counter!("stampede_holds_created_total").increment(1);
        self.stock_changed(&sale_id);
        Ok(hold)
    }

    /// The gate, then the judge; a refusal or failure of the judge gives the gate its units
    /// back. Cancel-safe: if the buyer hangs up while the judge is deciding, an
    /// [`AbandonedVerdict`] finishes the pair on its own task (the common path spawns nothing).
    async fn take_and_judge(
        &self,
        request: ReserveRequest,
        limit: u32,
        device: Option<&str>,
    ) -> Result<Hold, AppError> {
        let (sale_id, user, qty) = (
            request.sale_id.clone(),
            request.user_id.clone(),
            request.quantity,
        );
        // The 99% case first, before anything that could wait.
        if self.config.sold_out_flag_ms > 0 {
            if let Some(until) = self.sold_out_until.get(&sale_id).map(|t| *t) {
                if request.now < until {
                    return Err(AppError::SoldOut);
                }
            }
        }
        // Reconciliation must not read the judge between our take and our verdict.
        let pair = self.pair_guard().await;
        let verdict = self
            .gate_take_counted(&sale_id, &user, device, qty, limit)
            .await?;
        // Only a refused single unit proves the gate is empty; a refused larger request may
        // leave units a smaller one can have.
        if verdict == GateVerdict::SoldOut && qty == 1 && self.config.sold_out_flag_ms > 0 {
            let ttl = i64::try_from(self.config.sold_out_flag_ms).unwrap_or(i64::MAX);
            self.sold_out_until
                .insert(sale_id.clone(), request.now.plus_millis(ttl));
        }
        passed(verdict)?;
        // Held until the gate has its units back, whatever the verdict.
        let mut pair_held = None;
        let refused = match self.batcher.submit(request) {
            Ok(answer) => {
                let mut pending = AbandonedVerdict {
                    answer: Some(answer),
                    gate: self.gate.clone(),
                    sale_id: sale_id.clone(),
                    user: user.clone(),
                    quantity: qty,
                    pair,
                };
                let verdict = match pending.answer.as_mut() {
                    Some(answer) => answer.await,
                    None => return Err(AppError::Internal("verdict already taken".into())),
                };
                pending.answer = None; // answered: nothing left for the guard to do
                pair_held = pending.pair.take();
                match verdict {
                    Ok(Ok(Ok(hold))) => return Ok(hold),
                    Ok(Ok(Err(refusal))) => {
                        metrics::counter!("stampede_judge_refusals_total").increment(1);
                        AppError::from(refusal)
                    }
                    // The batch failed as a whole: nothing was committed for this buyer.
                    Ok(Err(port)) => port.into(),
                    Err(_) => AppError::Unavailable("shutting down".into()),
                }
            }
            Err(EnqueueError::Full) => {
                AppError::Unavailable("too many reservations in flight".into())
            }
            Err(EnqueueError::Closed) => AppError::Unavailable("shutting down".into()),
        };
        self.return_to_gate(&sale_id, &user, qty).await;
        drop(pair_held);
        self.stock_returned(&sale_id);
        Err(refused)
    }

    /// The caller's live holds.
    pub async fn cart(&self, who: &Principal) -> Result<Cart, AppError> {
        let now = self.clock.now();
        let items = self.store.live_holds(&who.user_id, now).await?;
        let total =
            stampede_core::Money(items.iter().map(|h| h.unit_price.times(h.quantity).0).sum());
        let expires_in_seconds = items
            .iter()
            .map(|h| now.secs_until(h.expires_at))
            .min()
            .unwrap_or(0);
        Ok(Cart {
            currency: items.first().map(|h| h.currency.clone()),
            items,
            total,
            expires_in_seconds,
        })
    }

    /// Changes the quantity of one of the caller's holds.
    pub async fn resize_hold(
        self: &Arc<Self>,
        who: &Principal,
        hold_id: &str,
        quantity_requested: i64,
    ) -> Result<Hold, AppError> {
        let qty = quantity(quantity_requested)?;
        let hold_id = HoldId::parse(hold_id).ok_or(AppError::NotFound)?;
        let now = self.clock.now();
        let before = self
            .store
            .live_holds(&who.user_id, now)
            .await?
            .into_iter()
            .find(|h| h.id == hold_id)
            .ok_or(AppError::NotFound)?;
        let sale = self.sale_config(&before.sale_id).await?;
        // Units of a waiting-room sale are had through an admission each: a hold there may
        // shrink, but growing it would skip the line (and the device's limit).
        if sale.queue_required && qty > before.quantity {
            self.count_reserve_refusal(&sale.id, "resize_without_admission");
            return Err(AppError::NotAdmitted(
                crate::error::NotAdmitted::GrowingNeedsAdmission,
            ));
        }
        let limit = sale.per_user_limit;
        let hold = self
            .paired(move |app| async move {
                let user = &before.user_id;
                let grow = qty.saturating_sub(before.quantity);
                if grow > 0 {
                    passed(app.gate_take(&before.sale_id, user, grow, limit).await?)?;
                }
                let judged = match app.store.resize_hold(user, &hold_id, qty, now).await {
                    Ok(judged) => judged.map_err(AppError::from),
                    Err(port) => Err(port.into()),
                };
                let hold = match judged {
                    Ok(hold) => hold,
                    Err(e) => {
                        if grow > 0 {
                            app.return_to_gate(&before.sale_id, user, grow).await;
                        }
                        return Err(e);
                    }
                };
                let shrink = before.quantity.saturating_sub(hold.quantity);
                if shrink > 0 {
                    app.return_to_gate(&hold.sale_id, user, shrink).await;
                }
                Ok(hold)
            })
            .await?;
        self.stock_changed(&hold.sale_id);
        self.stock_returned(&hold.sale_id);
        Ok(hold)
    }

    /// The gate's verdict, seeding the gate from the judge first if it lost the sale.
    async fn gate_take(
        &self,
        sale_id: &SaleId,
        user: &UserId,
        qty: u32,
        limit: u32,
    ) -> Result<GateVerdict, AppError> {
        let verdict = self.gate.try_take(sale_id, user, qty, limit).await?;
        if verdict != GateVerdict::Unseeded {
            return Ok(verdict);
        }
        self.seed_gate(sale_id).await?;
        Ok(self.gate.try_take(sale_id, user, qty, limit).await?)
    }

    /// [`Self::gate_take`] for a reserve: the gate also counts the buyer's shared rate quotas.
    async fn gate_take_counted(
        &self,
        sale_id: &SaleId,
        user: &UserId,
        device: Option<&str>,
        qty: u32,
        limit: u32,
    ) -> Result<GateVerdict, AppError> {
        let verdict = self
            .gate
            .try_take_counted(sale_id, user, device, qty, limit)
            .await?;
        if verdict != GateVerdict::Unseeded {
            return Ok(verdict);
        }
        self.seed_gate(sale_id).await?;
        Ok(self
            .gate
            .try_take_counted(sale_id, user, device, qty, limit)
            .await?)
    }

    /// Releases one of the caller's holds: its stock is available again at once.
    pub async fn release_hold(
        self: &Arc<Self>,
        who: &Principal,
        hold_id: &str,
    ) -> Result<(), AppError> {
        let hold_id = HoldId::parse(hold_id).ok_or(AppError::NotFound)?;
        let now = self.clock.now();
        let user = who.user_id.clone();
        let hold = self
            .paired(move |app| async move {
                let hold = app.store.release_hold(&user, &hold_id, now).await??;
                app.return_to_gate(&hold.sale_id, &user, hold.quantity)
                    .await;
                Ok(hold)
            })
            .await?;
        metrics::counter!("stampede_holds_released_total").increment(1);
        self.stock_changed(&hold.sale_id);
        self.stock_returned(&hold.sale_id);
        self.shopping_ended(&hold.sale_id, &who.user_id).await;
        Ok(())
    }

    /// Marks a sale's stock as changed; the publisher sends one coalesced update per interval.
    pub(crate) fn stock_changed(&self, sale_id: &SaleId) {
        if let Ok(mut dirty) = self.dirty_stock.lock() {
            dirty.insert(sale_id.clone());
        }
    }

    /// Publishes the current stock of every sale marked as changed. Called by the background
    /// publisher; public so tests can flush it.
    pub async fn publish_stock(&self) -> Result<(), AppError> {
        let dirty: Vec<SaleId> = match self.dirty_stock.lock() {
            Ok(mut set) => set.drain().collect(),
            Err(_) => return Ok(()),
        };
        for sale_id in dirty {
            if let Some(sale) = self.store.sale(&sale_id).await? {
                let s = sale.stock;
                metrics::gauge!("stampede_stock_units", "sale_id" => sale_id.to_string(), "state" => "available").set(s.available as f64);
                metrics::gauge!("stampede_stock_units", "sale_id" => sale_id.to_string(), "state" => "held").set(s.held as f64);
                metrics::gauge!("stampede_stock_units", "sale_id" => sale_id.to_string(), "state" => "sold").set(s.sold as f64);
                self.bus.publish(Event::Stock {
                    sale_id,
                    available: s.available,
                    held: s.held,
                    sold: s.sold,
                });
            }
        }
        Ok(())
    }
}

/// Units taken from the gate whose verdict nobody is waiting for any more. If dropped before
/// the verdict arrived (the request was cancelled), it waits for the verdict on its own task
/// and gives the units back unless a hold was committed, keeping gate and judge in step.
struct AbandonedVerdict {
    answer: Option<tokio::sync::oneshot::Receiver<Verdict>>,
    gate: Arc<dyn Gate>,
    sale_id: SaleId,
    user: UserId,
    quantity: u32,
    /// Keeps reconciliation out until the pair is finished.
    pair: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
}

impl Drop for AbandonedVerdict {
    fn drop(&mut self) {
        let Some(answer) = self.answer.take() else {
            return;
        };
        let gate = self.gate.clone();
        let (sale_id, user, quantity) = (self.sale_id.clone(), self.user.clone(), self.quantity);
        let pair = self.pair.take();
        metrics::counter!("stampede_reserve_abandoned_total").increment(1);
        tokio::spawn(async move {
            let _pair = pair;
            if !matches!(answer.await, Ok(Ok(Ok(_)))) {
                if let Err(e) = gate.give_back(&sale_id, &user, quantity).await {
                    tracing::warn!(error = %e, "could not return units of an abandoned reserve");
                }
            }
        });
    }
}
