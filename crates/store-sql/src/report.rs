//! Read-only accounting: the stock audit (counters against what the rows say) and the seeds
//! the gate is rebuilt from. Each reads one consistent snapshot even while other writers
//! commit: the audit is one statement, the seeds run in one snapshot transaction
//! ([`Engine::BEGIN_SNAPSHOT`]: a read transaction of a WAL database on SQLite, `REPEATABLE
//! READ, READ ONLY` on PostgreSQL).

use std::collections::BTreeMap;

use sqlx::Pool;

use stampede_app::ports::{GateSeed, PortResult, StockAudit};
use stampede_core::{SaleId, StockLevels, UserId};

use crate::engine::{statement, Bind, Engine, Run};
use crate::error::OrPort;
use crate::rows::{self, col, col_u32};

/// The judge's accounting of one sale, recomputed from holds and orders.
pub async fn stock_audit<DB: Engine>(
    reader: &Pool<DB>,
    sale: &SaleId,
) -> PortResult<Option<StockAudit>> {
    // One statement: one snapshot on both engines. `{confirmed}` is the sale's sold units.
    let sql = format!(
        "SELECT s.total_stock, s.available, s.held, s.sold, h.held_rows, h.expired, \
           c.sold_rows, c.orders, (SELECT COUNT(*) FROM ( \
             SELECT user_id FROM ( \
               SELECT user_id, quantity AS q FROM holds WHERE sale_id = $1 AND state = 'active' \
               UNION ALL SELECT o.user_id, i.quantity {confirmed} \
             ) AS units GROUP BY user_id \
             HAVING SUM(q) > (SELECT per_user_limit FROM sales WHERE id = $1) \
           ) AS over_limit) AS users_over_limit \
         FROM sales s, \
         (SELECT CAST(COALESCE(SUM(CASE WHEN state = 'active' THEN quantity END), 0) AS BIGINT) \
           AS held_rows, COUNT(CASE WHEN state = 'expired' THEN 1 END) AS expired \
           FROM holds WHERE sale_id = $1) h, \
         (SELECT CAST(COALESCE(SUM(i.quantity), 0) AS BIGINT) AS sold_rows, \
           COUNT(DISTINCT o.id) AS orders {confirmed}) c \
         WHERE s.id = $1",
        confirmed = "FROM order_items i JOIN orders o ON o.user_id = i.user_id \
             AND o.id = i.order_id WHERE i.sale_id = $1 AND o.status = 'confirmed'"
    );
    let q = statement::<DB>(&sql).text(sale.as_str());
    let Some(row) = q.first_in(reader).await? else {
        return Ok(None);
    };
    let counters = rows::stock(&row)?;
    let (held, sold): (i64, i64) = (col(&row, "held_rows")?, col(&row, "sold_rows")?);
    Ok(Some(StockAudit {
        counters,
        recomputed: StockLevels {
            total: counters.total,
            available: counters.total - held - sold,
            held,
            sold,
        },
        orders: col(&row, "orders")?,
        holds_expired: col(&row, "expired")?,
        users_over_limit: col(&row, "users_over_limit")?,
    }))
}

/// For every sale (oldest first): its available units and the buyers holding or owning units.
pub async fn gate_seeds<DB: Engine>(reader: &Pool<DB>) -> PortResult<Vec<GateSeed>> {
    let mut tx = reader.begin_with(DB::BEGIN_SNAPSHOT).await.port()?;
    let sales = statement::<DB>("SELECT id, available FROM sales ORDER BY created_at, id")
        .all(&mut tx)
        .await?;
    let units = statement::<DB>(
        "SELECT sale_id, user_id, units FROM user_units WHERE units > 0 ORDER BY sale_id, user_id",
    )
    .all(&mut tx)
    .await?;
    tx.commit().await.port()?;
    let mut by_sale: BTreeMap<String, Vec<(UserId, u32)>> = BTreeMap::new();
    for row in &units {
        let units = (
            UserId::from_trusted(col(row, "user_id")?),
            col_u32(row, "units")?,
        );
        by_sale.entry(col(row, "sale_id")?).or_default().push(units);
    }
    sales
        .iter()
        .map(|row| {
            let id: String = col(row, "id")?;
            Ok(GateSeed {
                user_units: by_sale.remove(&id).unwrap_or_default(),
                sale_id: SaleId::from_trusted(id),
                available: col(row, "available")?,
            })
        })
        .collect()
}
