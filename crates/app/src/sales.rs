//! Sales: what buyers browse, what admins create and control. The reserve path reads sale
//! configuration from an in-process copy (status is derived from the clock, never stored), and
//! every admin change updates that copy in the same call; stock counters always come from the
//! store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use stampede_core::{
    Currency, DropEvent, DropId, Money, Product, ProductId, ProductStatus, Sale, SaleControl,
    SaleId, SaleStatus, StockLevels, Timestamp,
};

use crate::auth::Principal;
use crate::catalog::text;
use crate::ports::AuditEntry;
use crate::{App, AppError};

/// A sale as an admin describes it; validated into a [`Sale`].
#[derive(Debug, Clone)]
pub struct SaleDraft {
    pub name: String,
    pub description: String,
    pub original_price: String,
    /// The price charged; leave empty to give `discount_percent` instead.
    pub sale_price: String,
    /// A percentage off `original_price` (0–100), rounded by [`Money::percent_off`]'s rule;
    /// the resulting price is stored as the sale price, so what buyers see is what they pay.
    pub discount_percent: Option<i64>,
    pub currency: String,
    pub total_stock: i64,
    /// Required unless the sale is in a drop, whose schedule it then takes.
    pub starts_at: Option<Timestamp>,
    pub ends_at: Option<Timestamp>,
    pub per_user_limit: i64,
    pub queue_required: bool,
    pub hold_seconds: Option<i64>,
    /// The catalog product sold: name, description, category, `original_price` (its regular
    /// price) and currency come from it unless given.
    pub product_id: Option<String>,
    /// The drop this sale is one SKU of; fixed once created.
    pub drop_id: Option<String>,
    /// For browsing; the product's (or the drop's) unless given.
    pub category: Option<String>,
}

/// Changes to a sale that has not started; absent fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct SalePatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub original_price: Option<String>,
    pub sale_price: Option<String>,
    pub currency: Option<String>,
    pub total_stock: Option<i64>,
    pub starts_at: Option<Timestamp>,
    pub ends_at: Option<Timestamp>,
    pub per_user_limit: Option<i64>,
    pub queue_required: Option<bool>,
    pub hold_seconds: Option<i64>,
}

/// An admin's lever on a sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaleAction {
    Pause,
    Resume,
    Stop,
}

/// The admin's view of one sale's health.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SaleMetrics {
    pub total_stock: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    pub orders: i64,
    pub queue_length: i64,
    pub admitted: i64,
    pub holds_expired: i64,
    /// Confirmed orders over confirmed orders plus holds that lapsed unpaid.
    pub conversion_rate: f64,
    pub invariant_ok: bool,
    /// Units by which the gate's count differs from the judge's (0 when in step).
    pub gate_drift: i64,
    /// Units of drift between gate and judge this node has repaired since it started
    /// (reconciliation, or seeding a gate that lost the sale).
    pub gate_drift_repaired: u64,
}

/// Sale configuration by id, for the hot path. Read on every reserve and changed only when an
/// admin changes a sale: readers load the current map without a lock (`ArcSwap`), a change
/// copies the map and swaps it in (one change at a time).
#[derive(Default)]
pub struct SaleCache {
    sales: arc_swap::ArcSwap<HashMap<SaleId, Arc<Sale>>>,
    /// Serialises changes, so two concurrent puts cannot lose one another's copy.
    writing: Mutex<()>,
}

impl App {
    /// A sale's configuration for the hot path: this node's copy, or the store's if this node
    /// has not heard of the sale yet (created on another node a moment ago). Misses go through
    /// the viewers' read cache, so a flood of made-up sale ids costs one store read per id per
    /// cache interval, not one per request.
    pub(crate) async fn sale_config(&self, id: &SaleId) -> Result<Arc<Sale>, AppError> {
        if let Some(sale) = self.sales.get(id) {
            return Ok(sale);
        }
        let sale = self
            .sale_reads
            .get(id.as_str(), self.clock.now(), || async {
                self.store.sale(id).await
            })
            .await?
            .ok_or(AppError::NotFound)?;
        self.sales.put(sale);
        self.sales.get(id).ok_or(AppError::NotFound)
    }
}

impl SaleCache {
    /// The sale's configuration, if it exists.
    pub fn get(&self, id: &SaleId) -> Option<Arc<Sale>> {
        self.sales.load().get(id).cloned()
    }

    /// Every sale this node knows.
    pub fn all(&self) -> Vec<Arc<Sale>> {
        self.sales.load().values().cloned().collect()
    }

    /// Stores (or replaces) a sale's configuration.
    pub fn put(&self, sale: Sale) {
        self.put_all(std::iter::once(sale));
    }

    /// Stores (or replaces) several, with one copy of the map.
    pub fn put_all(&self, sales: impl IntoIterator<Item = Sale>) {
        let Ok(_one) = self.writing.lock() else {
            return;
        };
        let mut map = HashMap::clone(&self.sales.load());
        for sale in sales {
            map.insert(sale.id.clone(), Arc::new(sale));
        }
        self.sales.store(Arc::new(map));
    }
}

const MAX_STOCK: i64 = 10_000_000;

fn in_range(field: &str, value: i64, lo: i64, hi: i64) -> Result<i64, AppError> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(AppError::invalid(format!(
            "{field} must be between {lo} and {hi}"
        )))
    }
}

fn to_u32(field: &str, value: i64, lo: i64, hi: i64) -> Result<u32, AppError> {
    let v = in_range(field, value, lo, hi)?;
    u32::try_from(v).map_err(|_| AppError::invalid(format!("{field} is out of range")))
}

/// Checks the cross-field rules of a sale: prices, times.
fn check_sale(sale: &Sale) -> Result<(), AppError> {
    if sale.sale_price > sale.original_price {
        return Err(AppError::invalid(
            "sale_price must not be above original_price",
        ));
    }
    if sale.ends_at <= sale.starts_at {
        return Err(AppError::invalid("ends_at must be after starts_at"));
    }
    Ok(())
}

fn price(field: &str, text: &str, currency: &Currency) -> Result<Money, AppError> {
    Money::parse(text, currency).map_err(|e| AppError::invalid(format!("{field}: {e}")))
}

impl App {
    /// Every sale, optionally only those whose status at now is in `statuses`.
    pub async fn list_sales(&self, statuses: Option<&[SaleStatus]>) -> Result<Vec<Sale>, AppError> {
        let now = self.clock.now();
        let mut sales = self
            .list_reads
            .get("all", now, || async { self.store.sales().await })
            .await?;
        if let Some(wanted) = statuses {
            sales.retain(|s| wanted.contains(&s.status_at(now)));
        }
        Ok(sales)
    }

    /// One sale with its current stock.
    pub async fn sale(&self, id: &str) -> Result<Sale, AppError> {
        let id = SaleId::parse(id).ok_or(AppError::NotFound)?;
        self.sale_reads
            .get(id.as_str(), self.clock.now(), || async {
                self.store.sale(&id).await
            })
            .await?
            .ok_or(AppError::NotFound)
    }

    /// Store reads the viewers' cache has made (detail, list): for tests and capacity checks.
    pub fn read_cache_loads(&self) -> (u64, u64) {
        (self.sale_reads.loads(), self.list_reads.loads())
    }

    /// A sale's configuration changed (here or on another node): viewers see it at once.
    pub(crate) fn forget_sale_reads(&self, id: &SaleId) {
        self.sale_reads.invalidate(id.as_str());
        self.list_reads.invalidate("all");
        self.browse_reads.clear();
    }

    /// Creates a sale (admin).
    pub async fn create_sale(&self, who: &Principal, draft: SaleDraft) -> Result<Sale, AppError> {
        self.require_admin(who)?;
        let mut draft = draft;
        let (product, drop) = self.catalog_of(&draft).await?;
        if let Some(p) = &product {
            if draft.name.trim().is_empty() {
                draft.name.clone_from(&p.name);
            }
            if draft.description.trim().is_empty() {
                draft.description.clone_from(&p.description);
            }
            if draft.currency.trim().is_empty() {
                draft.currency = p.currency.as_str().to_owned();
            }
            if draft.original_price.trim().is_empty() && draft.currency == p.currency.as_str() {
                draft.original_price = p.regular_price.format(&p.currency);
            }
        }
        let category = match (&draft.category, &product, &drop) {
            (Some(c), _, _) => text("category", c, 80, false)?,
            (None, Some(p), _) => p.category.clone(),
            (None, None, Some(d)) => d.category.clone(),
            (None, None, None) => String::new(),
        };
        let (starts_at, ends_at) = match (draft.starts_at, draft.ends_at, &drop) {
            (Some(s), Some(e), _) => (s, e),
            (s, e, Some(d)) => (s.unwrap_or(d.starts_at), e.unwrap_or(d.ends_at)),
            _ => {
                return Err(AppError::invalid(
                    "starts_at and ends_at are required (unless the sale is in a drop)",
                ))
            }
        };
        let currency = Currency::parse(&draft.currency)
            .map_err(|e| AppError::invalid(format!("currency: {e}")))?;
        let now = self.clock.now();
        let total = in_range("total_stock", draft.total_stock, 0, MAX_STOCK)?;
        let original_price = price("original_price", &draft.original_price, &currency)?;
        let sale_price = match (draft.discount_percent, draft.sale_price.trim().is_empty()) {
            (Some(percent), true) => {
                let percent = to_u32("discount_percent", percent, 0, 100)?;
                original_price
                    .percent_off(percent)
                    .ok_or_else(|| AppError::invalid("discount_percent must be 0 to 100"))?
            }
            (None, false) => price("sale_price", &draft.sale_price, &currency)?,
            (Some(_), false) => {
                return Err(AppError::invalid(
                    "give sale_price or discount_percent, not both",
                ))
            }
            (None, true) => {
                return Err(AppError::invalid(
                    "sale_price (or discount_percent) is required",
                ))
            }
        };
        let sale = Sale {
            id: SaleId::generate(now.millis(), rand::random()),
            name: text("name", &draft.name, 200, true)?,
            description: text("description", &draft.description, 5000, false)?,
            original_price,
            sale_price,
            currency,
            starts_at,
            ends_at,
            per_user_limit: to_u32("per_user_limit", draft.per_user_limit, 1, 1000)?,
            queue_required: draft.queue_required,
            hold_seconds: to_u32(
                "hold_seconds",
                draft
                    .hold_seconds
                    .unwrap_or(i64::from(self.config.default_hold_seconds)),
                1,
                86_400,
            )?,
            control: SaleControl::Running,
            stock: StockLevels::fresh(total),
            product_id: product.map(|p| p.id),
            drop_id: drop.map(|d| d.id),
            category,
            created_at: now,
            updated_at: now,
        };
        check_sale(&sale)?;
        self.store.insert_sale(&sale).await?;
        self.gate
            .seed(&crate::ports::GateSeed {
                sale_id: sale.id.clone(),
                available: total,
                user_units: vec![],
            })
            .await?;
        self.sales.put(sale.clone());
        self.forget_sale_reads(&sale.id);
        self.bus.publish(crate::ports::Event::SaleChanged {
            sale_id: sale.id.clone(),
        });
        self.audit(
            who,
            "sale.create",
            sale.id.as_str(),
            None::<&()>,
            Some(&sale),
        )
        .await;
        Ok(sale)
    }

    /// The product and drop a new sale names, checked: both must exist, and a retired product
    /// cannot go on sale again.
    async fn catalog_of(
        &self,
        draft: &SaleDraft,
    ) -> Result<(Option<Product>, Option<DropEvent>), AppError> {
        let product = match draft.product_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(id) => {
                let found = match ProductId::parse(id) {
                    Some(id) => self.store.product(&id).await?,
                    None => None,
                };
                let p = found.ok_or_else(|| AppError::invalid("product_id: no such product"))?;
                if p.status == ProductStatus::Discontinued {
                    return Err(AppError::invalid("product_id: the product is discontinued"));
                }
                Some(p)
            }
        };
        let drop = match draft.drop_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(id) => {
                let found = match DropId::parse(id) {
                    Some(id) => self.store.drop_event(&id).await?,
                    None => None,
                };
                Some(found.ok_or_else(|| AppError::invalid("drop_id: no such drop"))?)
            }
        };
        Ok((product, drop))
    }

    /// Changes a sale before it starts (admin). Only name and description may change after.
    pub async fn patch_sale(
        &self,
        who: &Principal,
        id: &str,
        patch: SalePatch,
    ) -> Result<Sale, AppError> {
        self.require_admin(who)?;
        let before = self.sale(id).await?;
        let now = self.clock.now();
        let touches_terms = patch.original_price.is_some()
            || patch.sale_price.is_some()
            || patch.currency.is_some()
            || patch.total_stock.is_some()
            || patch.starts_at.is_some()
            || patch.ends_at.is_some()
            || patch.per_user_limit.is_some()
            || patch.queue_required.is_some()
            || patch.hold_seconds.is_some();
        if touches_terms && before.status_at(now) != SaleStatus::Scheduled {
            return Err(AppError::Conflict(
                "stock, prices, times and limits can only change before the sale starts".into(),
            ));
        }
        let mut sale = before.clone();
        if let Some(v) = &patch.name {
            sale.name = text("name", v, 200, true)?;
        }
        if let Some(v) = &patch.description {
            sale.description = text("description", v, 5000, false)?;
        }
        if let Some(v) = &patch.currency {
            sale.currency =
                Currency::parse(v).map_err(|e| AppError::invalid(format!("currency: {e}")))?;
        }
        // Prices are re-read in the (possibly new) currency, so a currency change without
        // prices is checked against the old amounts' precision too.
        let original = patch
            .original_price
            .clone()
            .unwrap_or_else(|| before.original_price.format(&before.currency));
        let sale_price = patch
            .sale_price
            .clone()
            .unwrap_or_else(|| before.sale_price.format(&before.currency));
        sale.original_price = price("original_price", &original, &sale.currency)?;
        sale.sale_price = price("sale_price", &sale_price, &sale.currency)?;
        if let Some(v) = patch.total_stock {
            let total = in_range("total_stock", v, 0, MAX_STOCK)?;
            sale.stock.available += total - sale.stock.total;
            sale.stock.total = total;
        }
        if let Some(v) = patch.starts_at {
            sale.starts_at = v;
        }
        if let Some(v) = patch.ends_at {
            sale.ends_at = v;
        }
        if let Some(v) = patch.per_user_limit {
            sale.per_user_limit = to_u32("per_user_limit", v, 1, 1000)?;
        }
        if let Some(v) = patch.queue_required {
            sale.queue_required = v;
        }
        if let Some(v) = patch.hold_seconds {
            sale.hold_seconds = to_u32("hold_seconds", v, 1, 86_400)?;
        }
        check_sale(&sale)?;
        sale.updated_at = now;
        self.save_sale(who, "sale.patch", &before, sale).await
    }

    /// Pauses, resumes or stops a sale (admin).
    pub async fn control_sale(
        &self,
        who: &Principal,
        id: &str,
        action: SaleAction,
    ) -> Result<Sale, AppError> {
        self.require_admin(who)?;
        let before = self.sale(id).await?;
        let (allowed, to, verb) = match action {
            SaleAction::Pause => (
                before.control == SaleControl::Running,
                SaleControl::Paused,
                "sale.pause",
            ),
            SaleAction::Resume => (
                before.control == SaleControl::Paused,
                SaleControl::Running,
                "sale.resume",
            ),
            SaleAction::Stop => (
                before.control != SaleControl::Stopped,
                SaleControl::Stopped,
                "sale.stop",
            ),
        };
        if !allowed {
            return Err(AppError::Conflict(format!(
                "a {} sale cannot be {}",
                before.control.as_str(),
                match action {
                    SaleAction::Pause => "paused",
                    SaleAction::Resume => "resumed",
                    SaleAction::Stop => "stopped",
                }
            )));
        }
        let mut sale = before.clone();
        sale.control = to;
        sale.updated_at = self.clock.now();
        let saved = self.save_sale(who, verb, &before, sale).await?;
        self.bus.publish(crate::ports::Event::SaleStatus {
            sale_id: saved.id.clone(),
            status: saved.status_at(self.clock.now()).as_str().to_owned(),
        });
        Ok(saved)
    }

    pub(crate) async fn save_sale(
        &self,
        who: &Principal,
        action: &str,
        before: &Sale,
        sale: Sale,
    ) -> Result<Sale, AppError> {
        if !self.store.update_sale(&sale).await? {
            return Err(AppError::Conflict(
                "the stock cannot shrink below what is already held or sold".into(),
            ));
        }
        let saved = self.store.sale(&sale.id).await?.ok_or(AppError::NotFound)?;
        if saved.stock.total != before.stock.total {
            // Two passes: a shared gate repairs only drift it sees twice on a quiet sale.
            self.reconcile().await?;
            self.reconcile().await?;
            self.stock_returned(&saved.id);
        }
        self.sales.put(saved.clone());
        self.forget_sale_reads(&saved.id);
        self.bus.publish(crate::ports::Event::SaleChanged {
            sale_id: saved.id.clone(),
        });
        self.audit(who, action, saved.id.as_str(), Some(before), Some(&saved))
            .await;
        Ok(saved)
    }

    /// The admin's figures for one sale, straight from the judge.
    pub async fn sale_metrics(&self, who: &Principal, id: &str) -> Result<SaleMetrics, AppError> {
        self.require_admin(who)?;
        let sale_id = SaleId::parse(id).ok_or(AppError::NotFound)?;
        let audit = self
            .store
            .stock_audit(&sale_id)
            .await?
            .ok_or(AppError::NotFound)?;
        let c = audit.counters;
        let gate = self.gate.available(&sale_id).await?.unwrap_or(c.available);
        let room = self.room.stats(&sale_id).await?;
        let chances = audit.orders + audit.holds_expired;
        let invariant_ok = audit.invariant_ok();
        metrics::gauge!("stampede_invariant_ok", "sale_id" => sale_id.to_string())
            .set(if invariant_ok { 1.0 } else { 0.0 });
        Ok(SaleMetrics {
            total_stock: c.total,
            available: c.available,
            held: c.held,
            sold: c.sold,
            orders: audit.orders,
            queue_length: i64::try_from(room.waiting).unwrap_or(i64::MAX),
            admitted: i64::try_from(room.admitted_total).unwrap_or(i64::MAX),
            holds_expired: audit.holds_expired,
            conversion_rate: if chances > 0 {
                audit.orders as f64 / chances as f64
            } else {
                0.0
            },
            invariant_ok,
            gate_drift: gate - c.available,
            gate_drift_repaired: self.drift_repaired.get(&sale_id).map(|d| *d).unwrap_or(0),
        })
    }

    /// Appends to the audit log. A failure to write is logged and counted, not returned: the
    /// action itself has already been committed.
    pub(crate) async fn audit<B: Serialize, A: Serialize>(
        &self,
        who: &Principal,
        action: &str,
        target: &str,
        before: Option<&B>,
        after: Option<&A>,
    ) {
        self.audit_as(who.user_id.as_str(), action, target, before, after)
            .await;
    }

    /// Appends to the audit log on behalf of `actor` (a user id or "system").
    pub(crate) async fn audit_as<B: Serialize, A: Serialize>(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        before: Option<&B>,
        after: Option<&A>,
    ) {
        let entry = self.audit_entry(actor, action, target, before, after);
        self.write_audits(vec![entry]).await;
    }

    /// An audit entry, for writing in the same transaction as the change it records.
    pub(crate) fn audit_entry<B: Serialize, A: Serialize>(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        before: Option<&B>,
        after: Option<&A>,
    ) -> AuditEntry {
        let now = self.clock.now();
        AuditEntry {
            id: self.audit_ids.next(now).to_string(),
            at: now,
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            before: before.and_then(|b| serde_json::to_value(b).ok()),
            after: after.and_then(|a| serde_json::to_value(a).ok()),
        }
    }

    /// Writes entries by themselves (group-committed with other actions').
    pub(crate) async fn write_audits(&self, entries: Vec<AuditEntry>) {
        for entry in entries {
            let (action, target) = (entry.action.clone(), entry.target.clone());
            if let Err(e) = self.audits.write(entry).await {
                metrics::counter!("stampede_audit_write_failures_total").increment(1);
                tracing::error!(error = %e, action, target, "audit entry not written");
            }
        }
    }

    /// Reads the audit log (admin).
    pub async fn audit_log(
        &self,
        who: &Principal,
        filter: crate::ports::AuditFilter,
    ) -> Result<Vec<AuditEntry>, AppError> {
        self.require_admin(who)?;
        Ok(self.store.audit(&filter).await?)
    }
}
