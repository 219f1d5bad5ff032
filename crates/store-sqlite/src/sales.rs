//! Sales: configuration written by admins, counters written only by the judge (through
//! `TxStock`). The one place configuration touches counters is a change of total stock, which
//! moves `available` by the same amount in the same guarded `UPDATE`, so the balance
//! `available + held + sold = total_stock` holds across it.

use sqlx::SqlitePool;

use stampede_app::ports::PortResult;
use stampede_core::{Sale, SaleId};

use crate::error::OrPort;
use crate::rows::{self, sale_cols};

/// Stores a new sale with its counters as given (a fresh sale: all available).
pub(crate) async fn insert(writer: &SqlitePool, sale: &Sale) -> PortResult<()> {
    sqlx::query(
        "INSERT INTO sales (id, name, description, original_price, sale_price, currency, \
         starts_at, ends_at, per_user_limit, queue_required, hold_seconds, control, \
         total_stock, available, held, sold, created_at, updated_at, product_id, drop_id, \
         category) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
         ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
    )
    .bind(sale.id.as_str())
    .bind(&sale.name)
    .bind(&sale.description)
    .bind(sale.original_price.0)
    .bind(sale.sale_price.0)
    .bind(sale.currency.as_str())
    .bind(sale.starts_at.0)
    .bind(sale.ends_at.0)
    .bind(i64::from(sale.per_user_limit))
    .bind(sale.queue_required)
    .bind(i64::from(sale.hold_seconds))
    .bind(sale.control.as_str())
    .bind(sale.stock.total)
    .bind(sale.stock.available)
    .bind(sale.stock.held)
    .bind(sale.stock.sold)
    .bind(sale.created_at.0)
    .bind(sale.updated_at.0)
    .bind(sale.product_id.as_ref().map(|p| p.as_str()))
    .bind(sale.drop_id.as_ref().map(|d| d.as_str()))
    .bind(&sale.category)
    .execute(writer)
    .await
    .port()?;
    Ok(())
}

/// Writes the configuration; a new total moves `available` by the difference, refused
/// (`false`, nothing written) if that would go negative or the sale does not exist. The
/// counters in `sale.stock` other than `total` are ignored: they belong to the judge.
pub(crate) async fn update(writer: &SqlitePool, sale: &Sale) -> PortResult<bool> {
    let done = sqlx::query(
        "UPDATE sales SET name = ?2, description = ?3, original_price = ?4, sale_price = ?5, \
         currency = ?6, starts_at = ?7, ends_at = ?8, per_user_limit = ?9, \
         queue_required = ?10, hold_seconds = ?11, control = ?12, updated_at = ?13, \
         category = ?15, \
         available = available + (?14 - total_stock), total_stock = ?14 \
         WHERE id = ?1 AND available + (?14 - total_stock) >= 0",
    )
    .bind(sale.id.as_str())
    .bind(&sale.name)
    .bind(&sale.description)
    .bind(sale.original_price.0)
    .bind(sale.sale_price.0)
    .bind(sale.currency.as_str())
    .bind(sale.starts_at.0)
    .bind(sale.ends_at.0)
    .bind(i64::from(sale.per_user_limit))
    .bind(sale.queue_required)
    .bind(i64::from(sale.hold_seconds))
    .bind(sale.control.as_str())
    .bind(sale.updated_at.0)
    .bind(sale.stock.total)
    .bind(&sale.category)
    .execute(writer)
    .await
    .port()?;
    Ok(done.rows_affected() == 1)
}

/// One sale with its current counters.
pub(crate) async fn by_id(reader: &SqlitePool, id: &SaleId) -> PortResult<Option<Sale>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        sale_cols!(),
        " FROM sales WHERE id = ?1"
    ))
    .bind(id.as_str())
    .fetch_optional(reader)
    .await
    .port()?;
    row.map(|r| rows::sale(&r)).transpose()
}

/// Every sale, oldest first.
pub(crate) async fn all(reader: &SqlitePool) -> PortResult<Vec<Sale>> {
    sqlx::query(concat!(
        "SELECT ",
        sale_cols!(),
        " FROM sales ORDER BY created_at, id"
    ))
    .fetch_all(reader)
    .await
    .port()?
    .iter()
    .map(rows::sale)
    .collect()
}
