//! Read-only accounting: the stock audit (counters against what the rows say) and the seeds
//! the gate is rebuilt from. Each runs in one snapshot transaction
//! ([`Engine::BEGIN_SNAPSHOT`]: a read transaction of a WAL database on SQLite, `REPEATABLE
//! READ, READ ONLY` on PostgreSQL), so all its statements see one consistent snapshot even
//! while other writers commit.

use std::collections::BTreeMap;

use sqlx::Pool;

use stampede_app::ports::{GateSeed, PortResult, StockAudit};
use stampede_core::{SaleId, StockLevels, UserId};

use crate::engine::{one, statement, Bind, Engine, Run};
use crate::error::OrPort;
use crate::internal;
use crate::rows::{self, col};

/// The judge's accounting of one sale, recomputed from holds and orders.
pub async fn stock_audit<DB: Engine>(
    reader: &Pool<DB>,
    sale: &SaleId,
) -> PortResult<Option<StockAudit>> {
    let mut tx = reader.begin_with(DB::BEGIN_SNAPSHOT).await.port()?;
    let Some(row) = statement::<DB>(
        "SELECT total_stock, available, held, sold, per_user_limit FROM sales WHERE id = $1",
    )
    .text(sale.as_str())
    .first(&mut tx)
    .await?
    else {
        return Ok(None);
    };
    let counters = rows::stock(&row)?;
    let limit: i64 = col(&row, "per_user_limit")?;
    let q = statement::<DB>(
        "SELECT CAST(COALESCE(SUM(CASE WHEN state = 'active' THEN quantity END), 0) AS BIGINT) \
         AS held, COUNT(CASE WHEN state = 'expired' THEN 1 END) AS expired \
         FROM holds WHERE sale_id = $1",
    );
    let holds = one(q.text(sale.as_str()), &mut tx, || {
        "stock audit: no holds row".into()
    })
    .await?;
    let (held, holds_expired): (i64, i64) = (col(&holds, "held")?, col(&holds, "expired")?);
    let sql = format!(
        "SELECT CAST(COALESCE(SUM(i.quantity), 0) AS BIGINT) AS sold, \
         COUNT(DISTINCT o.id) AS orders FROM order_items i \
         JOIN orders o ON o.id = i.order_id{} \
         WHERE i.sale_id = $1 AND o.status = 'confirmed'",
        DB::ITEM_ORDER_KEY
    );
    let q = statement::<DB>(&sql).text(sale.as_str());
    let sales = one(q, &mut tx, || "stock audit: no orders row".into()).await?;
    let (sold, orders): (i64, i64) = (col(&sales, "sold")?, col(&sales, "orders")?);
    let sql = format!(
        "SELECT COUNT(*) AS n FROM ( \
           SELECT user_id FROM ( \
             SELECT user_id, quantity AS q FROM holds WHERE sale_id = $1 AND state = 'active' \
             UNION ALL \
             SELECT o.user_id, i.quantity FROM order_items i \
             JOIN orders o ON o.id = i.order_id{} \
             WHERE i.sale_id = $1 AND o.status = 'confirmed' \
           ) AS units GROUP BY user_id HAVING SUM(q) > $2 \
         ) AS over_limit",
        DB::ITEM_ORDER_KEY
    );
    let q = statement::<DB>(&sql).text(sale.as_str()).int(limit);
    let over = one(q, &mut tx, || "stock audit: no over-limit row".into()).await?;
    let users_over_limit: i64 = col(&over, "n")?;
    tx.commit().await.port()?;
    Ok(Some(StockAudit {
        counters,
        recomputed: StockLevels {
            total: counters.total,
            available: counters.total - held - sold,
            held,
            sold,
        },
        orders,
        holds_expired,
        users_over_limit,
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
        let user: String = col(row, "user_id")?;
        let n: i64 = col(row, "units")?;
        let n = u32::try_from(n).map_err(|_| internal(format!("user_units {n} for {user}")))?;
        by_sale
            .entry(col(row, "sale_id")?)
            .or_default()
            .push((UserId::from_trusted(user), n));
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
