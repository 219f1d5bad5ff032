//! The wire shapes of the contract, separate from the domain types: money as decimal strings,
//! times as RFC 3339, ids as strings. Request bodies refuse unknown fields.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use stampede_app::cart::Cart;
use stampede_app::ports::{AuditEntry, User};
use stampede_app::sales::SaleMetrics;
use stampede_core::{Hold, Order, Sale, Timestamp};

use crate::problem::ApiError;

/// RFC 3339 UTC text of a timestamp.
pub fn rfc3339(t: Timestamp) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.millis()) * 1_000_000)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Parses an RFC 3339 time from a client.
pub fn parse_time(field: &str, text: &str) -> Result<Timestamp, ApiError> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        ApiError::invalid(format!(
            "{field} must be an RFC 3339 time such as 2026-11-22T18:00:00Z"
        ))
    })?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    i64::try_from(ms)
        .map(Timestamp)
        .map_err(|_| ApiError::invalid(format!("{field} is out of range")))
}

/// A page size from a query string: `default` when absent, refused outside `1..=max` (the
/// document states the same bounds, so a client learns of a wrong size instead of getting a
/// page of another).
pub fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    match limit {
        None => Ok(default),
        Some(l) if (1..=max).contains(&l) => Ok(l),
        Some(_) => Err(ApiError::invalid(format!(
            "limit must be between 1 and {max}"
        ))),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    pub email: String,
    pub password: String,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    pub user_id: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginDto {
    pub token: String,
    pub expires_at: String,
    pub user_id: String,
    pub role: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeDto {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub role: String,
}

impl From<User> for MeDto {
    fn from(u: User) -> Self {
        Self {
            user_id: u.id.to_string(),
            email: u.email,
            name: u.name,
            role: u.role.as_str().to_owned(),
        }
    }
}

/// A sale as buyers see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SaleDto {
    pub sale_id: String,
    pub name: String,
    pub description: String,
    /// Decimal string, e.g. "100.00".
    pub original_price: String,
    pub sale_price: String,
    pub currency: String,
    pub total_stock: i64,
    pub available: i64,
    /// scheduled | live | paused | ended
    pub status: String,
    pub starts_at: String,
    pub ends_at: String,
    pub per_user_limit: u32,
    /// The server's clock now: run countdowns against this, not the device's clock.
    pub server_time: String,
    pub queue_required: bool,
    pub hold_seconds: u32,
    /// The catalog product this sale sells, if any.
    pub product_id: Option<String>,
    /// The drop this sale is one SKU of, if any.
    pub drop_id: Option<String>,
    /// Empty when none.
    pub category: String,
}

impl SaleDto {
    /// The sale as seen at `now`.
    pub fn new(s: &Sale, now: Timestamp) -> Self {
        Self {
            sale_id: s.id.to_string(),
            name: s.name.clone(),
            description: s.description.clone(),
            original_price: s.original_price.format(&s.currency),
            sale_price: s.sale_price.format(&s.currency),
            currency: s.currency.as_str().to_owned(),
            total_stock: s.stock.total,
            available: s.stock.available,
            status: s.status_at(now).as_str().to_owned(),
            starts_at: rfc3339(s.starts_at),
            ends_at: rfc3339(s.ends_at),
            per_user_limit: s.per_user_limit,
            server_time: rfc3339(now),
            queue_required: s.queue_required,
            hold_seconds: s.hold_seconds,
            product_id: s.product_id.as_ref().map(ToString::to_string),
            drop_id: s.drop_id.as_ref().map(ToString::to_string),
            category: s.category.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SalesDto {
    pub sales: Vec<SaleDto>,
    /// Pass as `after` for the next page; null on the last page (and when the list was asked
    /// for without any browse parameter: then it is every sale).
    pub next: Option<String>,
}

/// Filters of a browse of sales. With none of `category`, `q`, `drop_id`, `after`, `limit`,
/// the answer is every sale (filtered by `status`); with any, it is a page in creation order.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SalesQuery {
    /// Comma-separated statuses: live,scheduled,ended,paused.
    pub status: Option<String>,
    /// Exact category.
    pub category: Option<String>,
    /// Search: every word must start a word of the sale's name ("air ma" finds "Air Max 90").
    pub q: Option<String>,
    /// Only the sales of this drop.
    pub drop_id: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<i64>,
}

impl SalesQuery {
    /// Whether the client asked for a page rather than the whole list.
    pub fn is_browse(&self) -> bool {
        self.category.is_some()
            || self.q.is_some()
            || self.drop_id.is_some()
            || self.after.is_some()
            || self.limit.is_some()
    }

    /// The use case's terms.
    pub fn browse(&self) -> stampede_app::catalog::BrowseQuery {
        stampede_app::catalog::BrowseQuery {
            category: self.category.clone(),
            status: self.status.clone(),
            q: self.q.clone(),
            drop_id: self.drop_id.clone(),
            after: self.after.clone(),
            limit: self.limit,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    pub sale_id: String,
    pub quantity: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeBody {
    pub quantity: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HoldDto {
    pub hold_id: String,
    pub sale_id: String,
    pub quantity: u32,
    pub unit_price: String,
    pub currency: String,
    pub expires_at: String,
}

impl From<&Hold> for HoldDto {
    fn from(h: &Hold) -> Self {
        Self {
            hold_id: h.id.to_string(),
            sale_id: h.sale_id.to_string(),
            quantity: h.quantity,
            unit_price: h.unit_price.format(&h.currency),
            currency: h.currency.as_str().to_owned(),
            expires_at: rfc3339(h.expires_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CartDto {
    pub items: Vec<HoldDto>,
    pub total: String,
    pub currency: Option<String>,
    pub expires_in_seconds: i64,
}

impl From<&Cart> for CartDto {
    fn from(c: &Cart) -> Self {
        Self {
            items: c.items.iter().map(HoldDto::from).collect(),
            total: c
                .currency
                .as_ref()
                .map(|cur| c.total.format(cur))
                .unwrap_or_else(|| "0.00".into()),
            currency: c.currency.as_ref().map(|c| c.as_str().to_owned()),
            expires_in_seconds: c.expires_in_seconds,
        }
    }
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentBody {
    /// e.g. "card".
    pub method: String,
    /// Sandbox: tok_ok, tok_decline, tok_slow, tok_async.
    pub token: String,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderBody {
    pub hold_ids: Vec<String>,
    pub payment: PaymentBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderItemDto {
    pub sale_id: String,
    pub quantity: u32,
    pub unit_price: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentDto {
    /// pending | authorized | captured | declined | voided | refunded
    pub status: String,
    pub method: String,
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderDto {
    pub order_id: String,
    /// pending_payment | confirmed | payment_failed | cancelled | refunded
    pub status: String,
    pub items: Vec<OrderItemDto>,
    pub total: String,
    pub currency: String,
    pub created_at: String,
    pub payment: Option<PaymentDto>,
}

impl From<&Order> for OrderDto {
    fn from(o: &Order) -> Self {
        Self {
            order_id: o.id.to_string(),
            status: o.status.as_str().to_owned(),
            items: o
                .items
                .iter()
                .map(|i| OrderItemDto {
                    sale_id: i.sale_id.to_string(),
                    quantity: i.quantity,
                    unit_price: i.unit_price.format(&o.currency),
                })
                .collect(),
            total: o.total.format(&o.currency),
            currency: o.currency.as_str().to_owned(),
            created_at: rfc3339(o.created_at),
            payment: o.payment.as_ref().map(|p| PaymentDto {
                status: p.status.as_str().to_owned(),
                method: p.method.clone(),
                reference: p.reference.clone(),
                failure_reason: p.failure_reason.clone(),
            }),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrdersDto {
    pub orders: Vec<OrderDto>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSaleBody {
    /// Required unless `product_id` is given (then the product's name is the default).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Required unless `product_id` is given (then the product's regular price is the default).
    #[serde(default)]
    pub original_price: String,
    /// The price charged, or leave it out and give `discount_percent`.
    #[serde(default)]
    pub sale_price: String,
    /// A percentage off `original_price` (0–100): the discount is rounded down to the minor
    /// unit and the sale price is what is left (what buyers see is what they pay).
    pub discount_percent: Option<i64>,
    /// Required unless `product_id` is given (then the product's currency is the default).
    #[serde(default)]
    pub currency: String,
    pub total_stock: i64,
    /// Required unless `drop_id` is given (then the drop's schedule is the default).
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    pub per_user_limit: i64,
    #[serde(default)]
    pub queue_required: bool,
    pub hold_seconds: Option<i64>,
    /// A catalog product: name, description, category, price and currency come from it
    /// unless given here.
    pub product_id: Option<String>,
    /// The drop this sale is one SKU of (fixed once created); its per-buyer limit then spans
    /// this sale and the drop's others.
    pub drop_id: Option<String>,
    /// For browsing; the product's (or the drop's) unless given.
    pub category: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchSaleBody {
    pub name: Option<String>,
    pub description: Option<String>,
    pub original_price: Option<String>,
    pub sale_price: Option<String>,
    pub currency: Option<String>,
    pub total_stock: Option<i64>,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    pub per_user_limit: Option<i64>,
    pub queue_required: Option<bool>,
    pub hold_seconds: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SaleMetricsDto {
    pub total_stock: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    pub orders: i64,
    pub queue_length: i64,
    pub admitted: i64,
    pub holds_expired: i64,
    pub conversion_rate: f64,
    pub invariant_ok: bool,
    pub gate_drift: i64,
    /// Units of gate drift this node has repaired since it started (reconciliation, or
    /// re-seeding a gate that lost the sale): 0 in a healthy run.
    pub gate_drift_repaired: u64,
}

impl From<SaleMetrics> for SaleMetricsDto {
    fn from(m: SaleMetrics) -> Self {
        Self {
            total_stock: m.total_stock,
            available: m.available,
            held: m.held,
            sold: m.sold,
            orders: m.orders,
            queue_length: m.queue_length,
            admitted: m.admitted,
            holds_expired: m.holds_expired,
            conversion_rate: m.conversion_rate,
            invariant_ok: m.invariant_ok,
            gate_drift: m.gate_drift,
            gate_drift_repaired: m.gate_drift_repaired,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Cursor: the `next` of the previous page.
    pub after: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryDto {
    pub id: String,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl From<AuditEntry> for AuditEntryDto {
    fn from(e: AuditEntry) -> Self {
        Self {
            id: e.id,
            at: rfc3339(e.at),
            actor: e.actor,
            action: e.action,
            target: e.target,
            before: e.before,
            after: e.after,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditDto {
    pub entries: Vec<AuditEntryDto>,
    /// Pass as `after` for the next page; null at the end.
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationsQuery {
    /// Cursor: the `next` of the previous page.
    pub after: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationDto {
    pub id: String,
    /// order_confirmed | payment_failed | …
    pub kind: String,
    pub created_at: String,
    pub data: serde_json::Value,
}

impl From<stampede_app::ports::Notification> for NotificationDto {
    fn from(n: stampede_app::ports::Notification) -> Self {
        Self {
            id: n.id,
            kind: n.kind.as_str().to_owned(),
            created_at: rfc3339(n.created_at),
            data: n.data,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationsDto {
    pub notifications: Vec<NotificationDto>,
    /// Pass as `after` to get only newer ones; null while the feed is empty.
    pub next: Option<String>,
}
