//! The catalog: products, drops, and browsing sales, drops and products by category, status
//! and name (PostgreSQL full-text search over the letters-and-digits of names, 'simple'
//! configuration, with the GIN indexes of migration 0007). Statuses of sales and drops are
//! derived from the clock, so a status filter is a condition on the schedule at the browse's
//! `now`, written to agree with `Sale::status_at` and `DropEvent::status_at`.

use sqlx::{PgPool, Postgres, QueryBuilder};

use stampede_app::ports::{Browse, PortResult};
use stampede_core::{DropEvent, DropId, Product, ProductId, Sale};
use stampede_store_sql::catalog::{self, drop_event, product, DROP_COLS, PRODUCT_COLS};

use crate::error::OrPort;
use crate::rows::{self, sale_cols};

pub(crate) async fn insert_product(writer: &PgPool, p: &Product) -> PortResult<()> {
    catalog::bind_product(sqlx::query(catalog::INSERT_PRODUCT), p, true)?
        .execute(writer)
        .await
        .port()?;
    Ok(())
}

pub(crate) async fn update_product(writer: &PgPool, p: &Product) -> PortResult<bool> {
    let done = catalog::bind_product(sqlx::query(catalog::UPDATE_PRODUCT), p, false)?
        .execute(writer)
        .await
        .port()?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn product_by_id(reader: &PgPool, id: &ProductId) -> PortResult<Option<Product>> {
    let row = sqlx::query(&catalog::product_by_id_sql())
        .bind(id.as_str())
        .fetch_optional(reader)
        .await
        .port()?;
    row.map(|r| product(&r)).transpose()
}

pub(crate) async fn insert_drop(writer: &PgPool, d: &DropEvent) -> PortResult<()> {
    catalog::bind_drop(sqlx::query(catalog::INSERT_DROP), d, true)
        .execute(writer)
        .await
        .port()?;
    Ok(())
}

pub(crate) async fn update_drop(writer: &PgPool, d: &DropEvent) -> PortResult<bool> {
    let done = catalog::bind_drop(sqlx::query(catalog::UPDATE_DROP), d, false)
        .execute(writer)
        .await
        .port()?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn drop_by_id(reader: &PgPool, id: &DropId) -> PortResult<Option<DropEvent>> {
    let row = sqlx::query(&catalog::drop_by_id_sql())
        .bind(id.as_str())
        .fetch_optional(reader)
        .await
        .port()?;
    row.map(|r| drop_event(&r)).transpose()
}

/// The `to_tsquery` text for search words: each a prefix, all required. The words are letters
/// and digits only (`search_words`), so no operator can be slipped in.
fn tsquery(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("{w}:*"))
        .collect::<Vec<_>>()
        .join(" & ")
}

/// `AND` the conditions every browse shares: category, name, cursor.
fn push_common(qb: &mut QueryBuilder<'_, Postgres>, alias: &str, b: &Browse) {
    if let Some(category) = &b.category {
        qb.push(format!(" AND {alias}.category = "))
            .push_bind(category.clone());
    }
    if !b.words.is_empty() {
        qb.push(format!(
            " AND to_tsvector('simple', regexp_replace({alias}.name, '[^[:alnum:]]+', ' ', 'g')) \
             @@ to_tsquery('simple', "
        ))
        .push_bind(tsquery(&b.words))
        .push(")");
    }
    if let Some(after) = &b.after {
        qb.push(format!(" AND {alias}.id > "))
            .push_bind(after.clone());
    }
}

pub(crate) async fn browse_sales(reader: &PgPool, b: &Browse) -> PortResult<Vec<Sale>> {
    let cols = sale_cols!()
        .split(", ")
        .map(|c| format!("s.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut qb = QueryBuilder::<Postgres>::new(format!("SELECT {cols} FROM sales s WHERE TRUE"));
    push_common(&mut qb, "s", b);
    if let Some(drop) = &b.drop_id {
        qb.push(" AND s.drop_id = ")
            .push_bind(drop.as_str().to_owned());
    }
    catalog::push_statuses(&mut qb, "s", true, b);
    catalog::push_page(&mut qb, "s", b);
    qb.build()
        .fetch_all(reader)
        .await
        .port()?
        .iter()
        .map(rows::sale)
        .collect()
}

pub(crate) async fn browse_drops(reader: &PgPool, b: &Browse) -> PortResult<Vec<DropEvent>> {
    let mut qb =
        QueryBuilder::<Postgres>::new(format!("SELECT {DROP_COLS} FROM drops d WHERE TRUE"));
    push_common(&mut qb, "d", b);
    catalog::push_statuses(&mut qb, "d", false, b);
    catalog::push_page(&mut qb, "d", b);
    qb.build()
        .fetch_all(reader)
        .await
        .port()?
        .iter()
        .map(drop_event)
        .collect()
}

pub(crate) async fn browse_products(reader: &PgPool, b: &Browse) -> PortResult<Vec<Product>> {
    let mut qb =
        QueryBuilder::<Postgres>::new(format!("SELECT {PRODUCT_COLS} FROM products p WHERE TRUE"));
    push_common(&mut qb, "p", b);
    if !b.product_statuses.is_empty() {
        qb.push(" AND p.status IN (");
        let mut list = qb.separated(", ");
        for status in &b.product_statuses {
            list.push_bind(status.as_str());
        }
        qb.push(")");
    }
    catalog::push_page(&mut qb, "p", b);
    qb.build()
        .fetch_all(reader)
        .await
        .port()?
        .iter()
        .map(product)
        .collect()
}
