//! Sales: configuration written by admins, counters written only by the judge (through each
//! engine's `TxStock`). The one place configuration touches counters is a change of total
//! stock, which moves `available` by the same amount in the same guarded `UPDATE`, so the
//! balance `available + held + sold = total_stock` holds across it.

use sqlx::Pool;

use stampede_app::ports::PortResult;
use stampede_core::{Sale, SaleId};

use crate::engine::{find, list, statement, Bind, Engine, Run, Statement};
use crate::rows;
use crate::sale_cols;

/// A statement with a sale's configuration bound as `$1` to `$12` (id to control), the order
/// of [`sale_cols`].
fn configured<'q, DB: Engine>(sql: &'q str, sale: &'q Sale) -> Statement<'q, DB> {
    statement::<DB>(sql)
        .text(sale.id.as_str())
        .text(&sale.name)
        .text(&sale.description)
        .int(sale.original_price.0)
        .int(sale.sale_price.0)
        .text(sale.currency.as_str())
        .int(sale.starts_at.0)
        .int(sale.ends_at.0)
        .int(i64::from(sale.per_user_limit))
        .flag(sale.queue_required)
        .int(i64::from(sale.hold_seconds))
        .text(sale.control.as_str())
}

/// Stores a new sale with its counters as given (a fresh sale: all available).
pub async fn insert<DB: Engine>(writer: &Pool<DB>, sale: &Sale) -> PortResult<()> {
    let sql = concat!(
        "INSERT INTO sales (",
        sale_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
         $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
    );
    configured::<DB>(sql, sale)
        .int(sale.stock.total)
        .int(sale.stock.available)
        .int(sale.stock.held)
        .int(sale.stock.sold)
        .opt_text(sale.product_id.as_ref().map(|p| p.as_str()))
        .opt_text(sale.drop_id.as_ref().map(|d| d.as_str()))
        .text(&sale.category)
        .int(sale.created_at.0)
        .int(sale.updated_at.0)
        .run_in(writer, "insert_sale")
        .await?;
    Ok(())
}

/// Writes the configuration; a new total moves `available` by the difference, refused
/// (`false`, nothing written) if that would go negative or the sale does not exist. The
/// counters in `sale.stock` other than `total` are ignored: they belong to the judge.
pub async fn update<DB: Engine>(writer: &Pool<DB>, sale: &Sale) -> PortResult<bool> {
    let sql = "UPDATE sales SET name = $2, description = $3, original_price = $4, \
         sale_price = $5, currency = $6, starts_at = $7, ends_at = $8, per_user_limit = $9, \
         queue_required = $10, hold_seconds = $11, control = $12, updated_at = $13, \
         category = $15, \
         available = available + ($14 - total_stock), total_stock = $14 \
         WHERE id = $1 AND available + ($14 - total_stock) >= 0";
    let changed = configured::<DB>(sql, sale)
        .int(sale.updated_at.0)
        .int(sale.stock.total)
        .text(&sale.category)
        .run_in(writer, "update_sale")
        .await?;
    Ok(changed == 1)
}

/// One sale with its current counters.
pub async fn by_id<DB: Engine>(reader: &Pool<DB>, id: &SaleId) -> PortResult<Option<Sale>> {
    let sql = format!("{SALES} WHERE id = $1");
    find(reader, &sql, id.as_str(), rows::sale).await
}

/// Every sale, oldest first.
pub async fn all<DB: Engine>(reader: &Pool<DB>) -> PortResult<Vec<Sale>> {
    let sql = format!("{SALES} ORDER BY created_at, id");
    list(statement::<DB>(&sql), reader, rows::sale).await
}

/// Columns and table of [`rows::sale`].
const SALES: &str = concat!("SELECT ", sale_cols!(), " FROM sales");
