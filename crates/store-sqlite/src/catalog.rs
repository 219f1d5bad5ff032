//! The catalog: products, drops, and browsing sales, drops and products by category, status
//! and name (FTS5, kept in step by the triggers of migration 0008). Statuses of sales and
//! drops are derived from the clock, so a status filter is a condition on the schedule at the
//! browse's `now`, written to agree with `Sale::status_at` and `DropEvent::status_at`.

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use stampede_app::ports::{Browse, PortResult};
use stampede_core::{
    Currency, DropEvent, DropId, Product, ProductId, ProductStatus, Sale, SaleStatus,
};

use crate::error::{internal, OrPort};
use crate::rows::{self, col, col_money, col_ts, col_word, sale_cols};

const PRODUCT_COLS: &str = "p.id, p.name, p.description, p.category, p.image_urls, \
     p.regular_price, p.currency, p.status, p.created_at, p.updated_at";

const DROP_COLS: &str = "d.id, d.name, d.description, d.category, d.starts_at, d.ends_at, \
     d.per_user_limit, d.created_at, d.updated_at";

fn product(row: &SqliteRow) -> PortResult<Product> {
    let urls: String = col(row, "image_urls")?;
    Ok(Product {
        id: ProductId::from_trusted(col(row, "id")?),
        name: col(row, "name")?,
        description: col(row, "description")?,
        category: col(row, "category")?,
        image_urls: serde_json::from_str(&urls)
            .map_err(|e| internal(format!("column image_urls: {e}")))?,
        regular_price: col_money(row, "regular_price")?,
        currency: Currency::from_trusted(col(row, "currency")?),
        status: col_word(row, "status", ProductStatus::parse)?,
        created_at: col_ts(row, "created_at")?,
        updated_at: col_ts(row, "updated_at")?,
    })
}

fn drop_event(row: &SqliteRow) -> PortResult<DropEvent> {
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

fn image_urls(product: &Product) -> PortResult<String> {
    serde_json::to_string(&product.image_urls).map_err(internal)
}

pub(crate) async fn insert_product(writer: &SqlitePool, p: &Product) -> PortResult<()> {
    sqlx::query(
        "INSERT INTO products (id, name, description, category, image_urls, regular_price, \
         currency, status, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .bind(p.id.as_str())
    .bind(&p.name)
    .bind(&p.description)
    .bind(&p.category)
    .bind(image_urls(p)?)
    .bind(p.regular_price.0)
    .bind(p.currency.as_str())
    .bind(p.status.as_str())
    .bind(p.created_at.0)
    .bind(p.updated_at.0)
    .execute(writer)
    .await
    .port()?;
    Ok(())
}

pub(crate) async fn update_product(writer: &SqlitePool, p: &Product) -> PortResult<bool> {
    let done = sqlx::query(
        "UPDATE products SET name = ?2, description = ?3, category = ?4, image_urls = ?5, \
         regular_price = ?6, currency = ?7, status = ?8, updated_at = ?9 WHERE id = ?1",
    )
    .bind(p.id.as_str())
    .bind(&p.name)
    .bind(&p.description)
    .bind(&p.category)
    .bind(image_urls(p)?)
    .bind(p.regular_price.0)
    .bind(p.currency.as_str())
    .bind(p.status.as_str())
    .bind(p.updated_at.0)
    .execute(writer)
    .await
    .port()?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn product_by_id(
    reader: &SqlitePool,
    id: &ProductId,
) -> PortResult<Option<Product>> {
    let row = sqlx::query(&format!(
        "SELECT {PRODUCT_COLS} FROM products p WHERE p.id = ?1"
    ))
    .bind(id.as_str())
    .fetch_optional(reader)
    .await
    .port()?;
    row.map(|r| product(&r)).transpose()
}

pub(crate) async fn insert_drop(writer: &SqlitePool, d: &DropEvent) -> PortResult<()> {
    sqlx::query(
        "INSERT INTO drops (id, name, description, category, starts_at, ends_at, \
         per_user_limit, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .bind(d.id.as_str())
    .bind(&d.name)
    .bind(&d.description)
    .bind(&d.category)
    .bind(d.starts_at.0)
    .bind(d.ends_at.0)
    .bind(d.per_user_limit.map(i64::from))
    .bind(d.created_at.0)
    .bind(d.updated_at.0)
    .execute(writer)
    .await
    .port()?;
    Ok(())
}

pub(crate) async fn update_drop(writer: &SqlitePool, d: &DropEvent) -> PortResult<bool> {
    let done = sqlx::query(
        "UPDATE drops SET name = ?2, description = ?3, category = ?4, starts_at = ?5, \
         ends_at = ?6, per_user_limit = ?7, updated_at = ?8 WHERE id = ?1",
    )
    .bind(d.id.as_str())
    .bind(&d.name)
    .bind(&d.description)
    .bind(&d.category)
    .bind(d.starts_at.0)
    .bind(d.ends_at.0)
    .bind(d.per_user_limit.map(i64::from))
    .bind(d.updated_at.0)
    .execute(writer)
    .await
    .port()?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn drop_by_id(reader: &SqlitePool, id: &DropId) -> PortResult<Option<DropEvent>> {
    let row = sqlx::query(&format!("SELECT {DROP_COLS} FROM drops d WHERE d.id = ?1"))
        .bind(id.as_str())
        .fetch_optional(reader)
        .await
        .port()?;
    row.map(|r| drop_event(&r)).transpose()
}

/// The FTS5 query for search words: each a quoted prefix, all required. The words are letters
/// and digits only (`search_words`), so the quotes cannot be broken out of.
fn match_expression(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{w}\"*"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `AND` the conditions every browse shares: category, name, cursor.
fn push_common(qb: &mut QueryBuilder<'_, Sqlite>, alias: &str, search: &str, b: &Browse) {
    if let Some(category) = &b.category {
        qb.push(format!(" AND {alias}.category = "))
            .push_bind(category.clone());
    }
    if !b.words.is_empty() {
        qb.push(format!(
            " AND {alias}.id IN (SELECT id FROM {search} WHERE {search} MATCH "
        ))
        .push_bind(match_expression(&b.words))
        .push(")");
    }
    if let Some(after) = &b.after {
        qb.push(format!(" AND {alias}.id > "))
            .push_bind(after.clone());
    }
}

fn push_page(qb: &mut QueryBuilder<'_, Sqlite>, alias: &str, b: &Browse) {
    qb.push(format!(" ORDER BY {alias}.id LIMIT "))
        .push_bind(i64::from(b.limit));
}

/// `AND (…)` true when the schedule (and, for sales, the admin's control) gives one of the
/// statuses at `b.now`; nothing when any status will do.
fn push_statuses(qb: &mut QueryBuilder<'_, Sqlite>, alias: &str, with_control: bool, b: &Browse) {
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

pub(crate) async fn browse_sales(reader: &SqlitePool, b: &Browse) -> PortResult<Vec<Sale>> {
    let cols = sale_cols!()
        .split(", ")
        .map(|c| format!("s.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {cols} FROM sales s WHERE 1 = 1"));
    push_common(&mut qb, "s", "sales_search", b);
    if let Some(drop) = &b.drop_id {
        qb.push(" AND s.drop_id = ")
            .push_bind(drop.as_str().to_owned());
    }
    push_statuses(&mut qb, "s", true, b);
    push_page(&mut qb, "s", b);
    qb.build()
        .fetch_all(reader)
        .await
        .port()?
        .iter()
        .map(rows::sale)
        .collect()
}

pub(crate) async fn browse_drops(reader: &SqlitePool, b: &Browse) -> PortResult<Vec<DropEvent>> {
    let mut qb =
        QueryBuilder::<Sqlite>::new(format!("SELECT {DROP_COLS} FROM drops d WHERE 1 = 1"));
    push_common(&mut qb, "d", "drops_search", b);
    push_statuses(&mut qb, "d", false, b);
    push_page(&mut qb, "d", b);
    qb.build()
        .fetch_all(reader)
        .await
        .port()?
        .iter()
        .map(drop_event)
        .collect()
}

pub(crate) async fn browse_products(reader: &SqlitePool, b: &Browse) -> PortResult<Vec<Product>> {
    let mut qb =
        QueryBuilder::<Sqlite>::new(format!("SELECT {PRODUCT_COLS} FROM products p WHERE 1 = 1"));
    push_common(&mut qb, "p", "products_search", b);
    if !b.product_statuses.is_empty() {
        qb.push(" AND p.status IN (");
        let mut list = qb.separated(", ");
        for status in &b.product_statuses {
            list.push_bind(status.as_str());
        }
        qb.push(")");
    }
    push_page(&mut qb, "p", b);
    qb.build()
        .fetch_all(reader)
        .await
        .port()?
        .iter()
        .map(product)
        .collect()
}
