//! The catalog's SQL both engines agree on: products and drops (columns, decoding, the
//! statements that write them and their binding), and the browse conditions on the schedule
//! and the page. Full-text search differs (FTS5 / `tsvector`) and stays in each backend.

use sqlx::{Database, Encode, QueryBuilder, Type};

use stampede_app::ports::{Browse, PortResult};
use stampede_core::{DropEvent, DropId, Product, ProductId, ProductStatus, SaleStatus};

use crate::engine::{Bind, Engine, Statement};
use crate::internal;
use crate::rows::{col, col_money, col_ts, col_word, DbRow};

/// Columns of [`product`], from `products p`.
pub const PRODUCT_COLS: &str = "p.id, p.name, p.description, p.category, p.image_urls, \
     p.regular_price, p.currency, p.status, p.created_at, p.updated_at";

/// Columns of [`drop_event`], from `drops d`.
pub const DROP_COLS: &str = "d.id, d.name, d.description, d.category, d.starts_at, d.ends_at, \
     d.per_user_limit, d.created_at, d.updated_at";

/// A new product; bind with [`bind_product`].
pub const INSERT_PRODUCT: &str =
    "INSERT INTO products (id, name, description, category, image_urls, regular_price, \
     currency, status, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// A product's new fields; bind with [`bind_product`] (`$9` is the update time).
pub const UPDATE_PRODUCT: &str =
    "UPDATE products SET name = $2, description = $3, category = $4, image_urls = $5, \
     regular_price = $6, currency = $7, status = $8, updated_at = $9 WHERE id = $1";

/// A new drop; bind with [`bind_drop`].
pub const INSERT_DROP: &str = "INSERT INTO drops (id, name, description, category, starts_at, \
     ends_at, per_user_limit, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// A drop's new fields; bind with [`bind_drop`] (`$8` is the update time).
pub const UPDATE_DROP: &str = "UPDATE drops SET name = $2, description = $3, category = $4, \
     starts_at = $5, ends_at = $6, per_user_limit = $7, updated_at = $8 WHERE id = $1";

/// One product by id.
pub fn product_by_id_sql() -> String {
    format!("SELECT {PRODUCT_COLS} FROM products p WHERE p.id = $1")
}

/// One drop by id.
pub fn drop_by_id_sql() -> String {
    format!("SELECT {DROP_COLS} FROM drops d WHERE d.id = $1")
}

/// A `products` row.
pub fn product<R: DbRow>(row: &R) -> PortResult<Product> {
    let urls: String = col(row, "image_urls")?;
    Ok(Product {
        id: ProductId::from_trusted(col(row, "id")?),
        name: col(row, "name")?,
        description: col(row, "description")?,
        category: col(row, "category")?,
        image_urls: serde_json::from_str(&urls)
            .map_err(|e| internal(format!("column image_urls: {e}")))?,
        regular_price: col_money(row, "regular_price")?,
        currency: stampede_core::Currency::from_trusted(col(row, "currency")?),
        status: col_word(row, "status", ProductStatus::parse)?,
        created_at: col_ts(row, "created_at")?,
        updated_at: col_ts(row, "updated_at")?,
    })
}

/// A `drops` row.
pub fn drop_event<R: DbRow>(row: &R) -> PortResult<DropEvent> {
    let limit: Option<i64> = col(row, "per_user_limit")?;
    Ok(DropEvent {
        id: DropId::from_trusted(col(row, "id")?),
        name: col(row, "name")?,
        description: col(row, "description")?,
        category: col(row, "category")?,
        starts_at: col_ts(row, "starts_at")?,
        ends_at: col_ts(row, "ends_at")?,
        per_user_limit: limit
            .map(|l| u32::try_from(l).map_err(|_| internal("column per_user_limit: not a u32")))
            .transpose()?,
        created_at: col_ts(row, "created_at")?,
        updated_at: col_ts(row, "updated_at")?,
    })
}

/// Binds a product to [`INSERT_PRODUCT`] (`created_at` then `updated_at` last) or, with
/// `insert` false, to [`UPDATE_PRODUCT`] (`updated_at` last).
pub fn bind_product<'q, DB: Engine>(
    q: Statement<'q, DB>,
    p: &'q Product,
    insert: bool,
) -> PortResult<Statement<'q, DB>> {
    let urls = serde_json::to_string(&p.image_urls).map_err(internal)?;
    let q = q
        .text(p.id.as_str())
        .text(&p.name)
        .text(&p.description)
        .text(&p.category)
        .string(urls)
        .int(p.regular_price.0)
        .text(p.currency.as_str())
        .text(p.status.as_str());
    let q = if insert { q.int(p.created_at.0) } else { q };
    Ok(q.int(p.updated_at.0))
}

/// Binds a drop to [`INSERT_DROP`] or, with `insert` false, to [`UPDATE_DROP`].
pub fn bind_drop<'q, DB: Engine>(
    q: Statement<'q, DB>,
    d: &'q DropEvent,
    insert: bool,
) -> Statement<'q, DB> {
    let q = q
        .text(d.id.as_str())
        .text(&d.name)
        .text(&d.description)
        .text(&d.category)
        .int(d.starts_at.0)
        .int(d.ends_at.0)
        .opt_int(d.per_user_limit.map(i64::from));
    let q = if insert { q.int(d.created_at.0) } else { q };
    q.int(d.updated_at.0)
}

/// `ORDER BY` the id and `LIMIT` the page.
pub fn push_page<'a, DB>(qb: &mut QueryBuilder<'a, DB>, alias: &str, b: &Browse)
where
    DB: Database,
    i64: Encode<'a, DB> + Type<DB>,
{
    qb.push(format!(" ORDER BY {alias}.id LIMIT "))
        .push_bind(i64::from(b.limit));
}

/// `AND (…)` true when the schedule (and, for sales, the admin's control) gives one of the
/// statuses at `b.now`; nothing when any status will do. Written to agree with
/// `Sale::status_at` and `DropEvent::status_at`.
pub fn push_statuses<'a, DB>(
    qb: &mut QueryBuilder<'a, DB>,
    alias: &str,
    with_control: bool,
    b: &Browse,
) where
    DB: Database,
    i64: Encode<'a, DB> + Type<DB>,
{
    if b.statuses.is_empty() {
        return;
    }
    let now = b.now.0;
    let control = |word: &str| {
        if with_control {
            format!("{alias}.control = '{word}' AND ")
        } else {
            String::new()
        }
    };
    qb.push(" AND (");
    for (i, status) in b.statuses.iter().enumerate() {
        if i > 0 {
            qb.push(" OR ");
        }
        match status {
            SaleStatus::Ended => {
                if with_control {
                    qb.push(format!("{alias}.control = 'stopped' OR "));
                }
                qb.push(format!("{alias}.ends_at <= ")).push_bind(now);
            }
            SaleStatus::Scheduled => {
                if with_control {
                    qb.push(format!("{alias}.control <> 'stopped' AND "));
                }
                qb.push(format!("{alias}.starts_at > "))
                    .push_bind(now)
                    .push(format!(" AND {alias}.ends_at > "))
                    .push_bind(now);
            }
            SaleStatus::Paused | SaleStatus::Live => {
                if !with_control && *status == SaleStatus::Paused {
                    qb.push("1 = 0");
                    continue;
                }
                let word = if *status == SaleStatus::Paused {
                    "paused"
                } else {
                    "running"
                };
                qb.push("(")
                    .push(control(word))
                    .push(format!("{alias}.starts_at <= "))
                    .push_bind(now)
                    .push(format!(" AND {alias}.ends_at > "))
                    .push_bind(now)
                    .push(")");
            }
        }
    }
    qb.push(")");
}
