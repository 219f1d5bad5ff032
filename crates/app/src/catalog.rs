//! The catalog around sales: products (admin create / edit / retire), drops (several sales
//! under one schedule and one per-buyer limit) and browsing all three by category, status and
//! name with cursor paging.
//!
//! Nothing here is on the reserve path: a drop's limit is enforced by the judge itself, inside
//! the transaction that takes the stock (see `stampede_core::judge::judge_reserve_in_drop`).

use serde::Serialize;

use stampede_core::{
    search_words, Currency, DropEvent, DropId, Money, Product, ProductId, ProductStatus, Sale,
    SaleStatus, Timestamp,
};

use crate::auth::Principal;
use crate::ports::Browse;
use crate::{App, AppError};

/// Most items one page may hold.
pub const MAX_PAGE: u32 = 200;
/// Items per page when the client does not say.
pub const DEFAULT_PAGE: u32 = 50;
/// Most image URLs one product may list.
const MAX_IMAGES: usize = 20;

/// A browse as a client asks for it, before validation. Every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct BrowseQuery {
    pub category: Option<String>,
    /// Comma-separated statuses (sale/drop words, or product words for products).
    pub status: Option<String>,
    /// Free text: its words must each start a word of the name.
    pub q: Option<String>,
    /// Only this drop's sales.
    pub drop_id: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    pub limit: Option<i64>,
}

/// One page of a browse; `next` is the cursor of the following page, absent on the last.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// A product as an admin describes it.
#[derive(Debug, Clone, Default)]
pub struct ProductDraft {
    pub name: String,
    pub description: String,
    pub category: String,
    pub image_urls: Vec<String>,
    pub regular_price: String,
    pub currency: String,
    /// Defaults to active.
    pub status: Option<String>,
}

/// Changes to a product; absent fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    pub image_urls: Option<Vec<String>>,
    pub regular_price: Option<String>,
    pub currency: Option<String>,
    pub status: Option<String>,
}

/// A drop as an admin describes it.
#[derive(Debug, Clone)]
pub struct DropDraft {
    pub name: String,
    pub description: String,
    pub category: String,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    pub per_user_limit: Option<i64>,
}

/// Changes to a drop; absent fields stay as they are. `per_user_limit: Some(None)` removes
/// the limit. The schedule is not here: each sale keeps its own once created.
#[derive(Debug, Clone, Default)]
pub struct DropPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    pub per_user_limit: Option<Option<i64>>,
}

/// A drop with its sales (its SKUs), for its page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DropWithSales {
    pub drop: DropEvent,
    pub sales: Vec<Sale>,
}

/// Trims and bounds a text field.
pub(crate) fn text(
    field: &str,
    value: &str,
    max: usize,
    required: bool,
) -> Result<String, AppError> {
    // The bound is on the text as sent (the document's `maxLength`), the emptiness check on
    // the text as kept.
    let v = value.trim();
    if (required && v.is_empty()) || value.chars().count() > max {
        return Err(AppError::invalid(format!(
            "{field} must be {} to {max} characters",
            usize::from(required)
        )));
    }
    Ok(v.to_owned())
}

fn category(value: &str) -> Result<String, AppError> {
    text("category", value, 80, false)
}

fn image_urls(urls: Vec<String>) -> Result<Vec<String>, AppError> {
    if urls.len() > MAX_IMAGES {
        return Err(AppError::invalid(format!(
            "image_urls may list at most {MAX_IMAGES} URLs"
        )));
    }
    urls.into_iter()
        .map(|u| {
            let sent_chars = u.chars().count();
            let u = u.trim().to_owned();
            let scheme_ok = u.starts_with("https://") || u.starts_with("http://");
            if !scheme_ok || sent_chars > 2000 || !u.chars().all(url_char) {
                return Err(AppError::invalid(
                    "image_urls must be http(s) URLs of at most 2000 characters, written with \
                     letters, digits and -._~:/?#@!$&'()*+,;=% only (percent-encode the rest)",
                ));
            }
            Ok(u)
        })
        .collect()
}

/// The characters a URL may show unencoded (RFC 3986's unreserved and reserved ones, but the
/// brackets of IPv6 literals, which no image host needs and many URL readers stumble on).
fn url_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#@!$&'()*+,;=%".contains(c)
}

fn product_status(word: &str) -> Result<ProductStatus, AppError> {
    ProductStatus::parse(word.trim()).ok_or_else(|| {
        AppError::invalid(format!(
            "unknown product status {word:?}; use active, out_of_stock or discontinued"
        ))
    })
}

fn drop_limit(limit: Option<i64>) -> Result<Option<u32>, AppError> {
    limit
        .map(|l| {
            if (1..=1000).contains(&l) {
                u32::try_from(l).map_err(|_| AppError::invalid("per_user_limit is out of range"))
            } else {
                Err(AppError::invalid(
                    "per_user_limit must be between 1 and 1000",
                ))
            }
        })
        .transpose()
}

fn regular_price(text: &str, currency: &Currency) -> Result<Money, AppError> {
    Money::parse(text, currency).map_err(|e| AppError::invalid(format!("regular_price: {e}")))
}

/// Splits a comma-separated status list with `parse`; empty means any.
fn words<T>(
    list: Option<&str>,
    parse: impl Fn(&str) -> Option<T>,
    allowed: &str,
) -> Result<Vec<T>, AppError> {
    match list.map(str::trim) {
        None | Some("") => Ok(Vec::new()),
        Some(text) => text
            .split(',')
            .map(|w| {
                parse(w.trim()).ok_or_else(|| {
                    AppError::invalid(format!("unknown status {w:?}; use {allowed}"))
                })
            })
            .collect(),
    }
}

/// Validates a browse into the store's terms, with one more item than the page holds so the
/// page knows whether there is a next one.
fn browse(query: &BrowseQuery, now: Timestamp) -> Result<(Browse, u32), AppError> {
    let limit = match query.limit {
        None => DEFAULT_PAGE,
        Some(l) if (1..=i64::from(MAX_PAGE)).contains(&l) => {
            u32::try_from(l).map_err(|_| AppError::invalid("limit is out of range"))?
        }
        Some(_) => {
            return Err(AppError::invalid(format!(
                "limit must be between 1 and {MAX_PAGE}"
            )))
        }
    };
    let after = match query.after.as_deref().map(str::trim) {
        None | Some("") => None,
        // A cursor is an id we handed out; anything else cannot be one.
        Some(a) => Some(
            ulid::Ulid::from_string(a)
                .map_err(|_| AppError::invalid("after must be the `next` of a previous page"))?
                .to_string(),
        ),
    };
    let drop_id = match query.drop_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(d) => Some(DropId::parse(d).ok_or(AppError::NotFound)?),
    };
    let category = match query.category.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(c) => Some(category(c)?),
    };
    let q = query.q.as_deref().unwrap_or("");
    if q.chars().count() > 200 {
        return Err(AppError::invalid("q must be at most 200 characters"));
    }
    Ok((
        Browse {
            category,
            statuses: Vec::new(),
            product_statuses: Vec::new(),
            words: search_words(q),
            drop_id,
            after,
            limit: limit + 1,
            now,
        },
        limit,
    ))
}

/// Cuts the extra item off and makes the cursor from the last one kept.
fn page<T>(mut items: Vec<T>, limit: u32, id: impl Fn(&T) -> String) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(&id)
    } else {
        None
    };
    Page { items, next }
}

const SALE_STATUSES: &str = "live, scheduled, paused or ended";

impl App {
    /// Sales matching a browse, a page at a time, in creation order.
    pub async fn browse_sales(&self, query: &BrowseQuery) -> Result<Page<Sale>, AppError> {
        let now = self.clock.now();
        let (mut b, limit) = browse(query, now)?;
        b.statuses = words(query.status.as_deref(), SaleStatus::parse, SALE_STATUSES)?;
        // Everything but `now`: a status judged up to one cache interval ago is as fresh as
        // every other read viewers get.
        let key = format!(
            "{:?}",
            (
                &b.category,
                &b.statuses,
                &b.words,
                &b.drop_id,
                &b.after,
                b.limit
            )
        );
        let sales = self
            .browse_reads
            .get(&key, now, || async { self.store.browse_sales(&b).await })
            .await?;
        Ok(page(sales, limit, |s| s.id.as_str().to_owned()))
    }

    /// Drops matching a browse (statuses: scheduled, live, ended), in creation order.
    pub async fn browse_drops(&self, query: &BrowseQuery) -> Result<Page<DropEvent>, AppError> {
        let (mut b, limit) = browse(query, self.clock.now())?;
        b.statuses = words(query.status.as_deref(), SaleStatus::parse, SALE_STATUSES)?;
        let drops = self.store.drops(&b).await?;
        Ok(page(drops, limit, |d| d.id.as_str().to_owned()))
    }

    /// Products matching a browse (statuses: active, out_of_stock, discontinued).
    pub async fn browse_products(&self, query: &BrowseQuery) -> Result<Page<Product>, AppError> {
        let (mut b, limit) = browse(query, self.clock.now())?;
        b.product_statuses = words(
            query.status.as_deref(),
            ProductStatus::parse,
            "active, out_of_stock or discontinued",
        )?;
        let products = self.store.products(&b).await?;
        Ok(page(products, limit, |p| p.id.as_str().to_owned()))
    }

    /// One product.
    pub async fn product(&self, id: &str) -> Result<Product, AppError> {
        let id = ProductId::parse(id).ok_or(AppError::NotFound)?;
        self.store.product(&id).await?.ok_or(AppError::NotFound)
    }

    /// Adds a product to the catalog (admin).
    pub async fn create_product(
        &self,
        who: &Principal,
        draft: ProductDraft,
    ) -> Result<Product, AppError> {
        self.require_admin(who)?;
        let now = self.clock.now();
        let currency = Currency::parse(&draft.currency)
            .map_err(|e| AppError::invalid(format!("currency: {e}")))?;
        let product = Product {
            id: ProductId::generate(now.millis(), rand::random()),
            name: text("name", &draft.name, 200, true)?,
            description: text("description", &draft.description, 5000, false)?,
            category: category(&draft.category)?,
            image_urls: image_urls(draft.image_urls)?,
            regular_price: regular_price(&draft.regular_price, &currency)?,
            currency,
            status: match draft.status {
                Some(word) => product_status(&word)?,
                None => ProductStatus::Active,
            },
            created_at: now,
            updated_at: now,
        };
        self.store.insert_product(&product).await?;
        self.audit(
            who,
            "product.create",
            product.id.as_str(),
            None::<&()>,
            Some(&product),
        )
        .await;
        Ok(product)
    }

    /// Edits a product (admin). Sales already made from it keep their own copy of its terms.
    pub async fn patch_product(
        &self,
        who: &Principal,
        id: &str,
        patch: ProductPatch,
    ) -> Result<Product, AppError> {
        self.require_admin(who)?;
        let before = self.product(id).await?;
        let mut after = before.clone();
        if let Some(v) = patch.name {
            after.name = text("name", &v, 200, true)?;
        }
        if let Some(v) = patch.description {
            after.description = text("description", &v, 5000, false)?;
        }
        if let Some(v) = patch.category {
            after.category = category(&v)?;
        }
        if let Some(v) = patch.image_urls {
            after.image_urls = image_urls(v)?;
        }
        if let Some(v) = patch.currency {
            after.currency =
                Currency::parse(&v).map_err(|e| AppError::invalid(format!("currency: {e}")))?;
        }
        if let Some(v) = patch.regular_price {
            after.regular_price = regular_price(&v, &after.currency)?;
        }
        if let Some(v) = patch.status {
            after.status = product_status(&v)?;
        }
        after.updated_at = self.clock.now();
        self.save_product(who, "product.update", &before, &after)
            .await?;
        Ok(after)
    }

    /// Retires a product (admin): no new sale may reference it; existing sales are untouched.
    pub async fn retire_product(&self, who: &Principal, id: &str) -> Result<Product, AppError> {
        self.require_admin(who)?;
        let before = self.product(id).await?;
        let mut after = before.clone();
        after.status = ProductStatus::Discontinued;
        after.updated_at = self.clock.now();
        self.save_product(who, "product.retire", &before, &after)
            .await?;
        Ok(after)
    }

    async fn save_product(
        &self,
        who: &Principal,
        action: &str,
        before: &Product,
        after: &Product,
    ) -> Result<(), AppError> {
        if !self.store.update_product(after).await? {
            return Err(AppError::NotFound);
        }
        self.audit(who, action, after.id.as_str(), Some(before), Some(after))
            .await;
        Ok(())
    }

    /// Creates a drop (admin); its sales are then created with its id.
    pub async fn create_drop(
        &self,
        who: &Principal,
        draft: DropDraft,
    ) -> Result<DropEvent, AppError> {
        self.require_admin(who)?;
        let now = self.clock.now();
        if draft.ends_at <= draft.starts_at {
            return Err(AppError::invalid("ends_at must be after starts_at"));
        }
        let drop = DropEvent {
            id: DropId::generate(now.millis(), rand::random()),
            name: text("name", &draft.name, 200, true)?,
            description: text("description", &draft.description, 5000, false)?,
            category: category(&draft.category)?,
            starts_at: draft.starts_at,
            ends_at: draft.ends_at,
            per_user_limit: drop_limit(draft.per_user_limit)?,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_drop(&drop).await?;
        self.audit(
            who,
            "drop.create",
            drop.id.as_str(),
            None::<&()>,
            Some(&drop),
        )
        .await;
        Ok(drop)
    }

    /// Edits a drop (admin). A new limit applies to reservations from now on; units already
    /// held or bought are never taken back.
    pub async fn patch_drop(
        &self,
        who: &Principal,
        id: &str,
        patch: DropPatch,
    ) -> Result<DropEvent, AppError> {
        self.require_admin(who)?;
        let id = DropId::parse(id).ok_or(AppError::NotFound)?;
        let before = self
            .store
            .drop_event(&id)
            .await?
            .ok_or(AppError::NotFound)?;
        let mut after = before.clone();
        if let Some(v) = patch.name {
            after.name = text("name", &v, 200, true)?;
        }
        if let Some(v) = patch.description {
            after.description = text("description", &v, 5000, false)?;
        }
        if let Some(v) = patch.category {
            after.category = category(&v)?;
        }
        if let Some(v) = patch.per_user_limit {
            after.per_user_limit = drop_limit(v)?;
        }
        after.updated_at = self.clock.now();
        if !self.store.update_drop(&after).await? {
            return Err(AppError::NotFound);
        }
        self.audit(
            who,
            "drop.update",
            after.id.as_str(),
            Some(&before),
            Some(&after),
        )
        .await;
        Ok(after)
    }

    /// A drop with every one of its sales (its page).
    pub async fn drop_with_sales(&self, id: &str) -> Result<DropWithSales, AppError> {
        let id = DropId::parse(id).ok_or(AppError::NotFound)?;
        let drop = self
            .store
            .drop_event(&id)
            .await?
            .ok_or(AppError::NotFound)?;
        let mut b = Browse::all(MAX_PAGE, self.clock.now());
        b.drop_id = Some(id);
        let mut sales = Vec::new();
        loop {
            let batch = self.store.browse_sales(&b).await?;
            let full = batch.len() >= usize::try_from(MAX_PAGE).unwrap_or(usize::MAX);
            b.after = batch.last().map(|s| s.id.as_str().to_owned());
            sales.extend(batch);
            if !full {
                break;
            }
        }
        Ok(DropWithSales { drop, sales })
    }
}
