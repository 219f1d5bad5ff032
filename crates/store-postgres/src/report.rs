//! Read-only accounting: the stock audit (counters against what the rows say) and the seeds
//! the gate is rebuilt from. Each runs in one `REPEATABLE READ, READ ONLY` transaction, so all
//! its statements see one consistent snapshot even while other nodes commit.

use std::collections::BTreeMap;

use sqlx::PgPool;

use stampede_app::ports::{GateSeed, PortResult, StockAudit};
use stampede_core::{SaleId, StockLevels, UserId};

use crate::error::{internal, OrPort};
use crate::rows::col;

/// Makes a transaction read one snapshot and nothing else.
const SNAPSHOT: &str = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// The judge's accounting of one sale, recomputed from holds and orders.
pub(crate) async fn stock_audit(pool: &PgPool, sale: &SaleId) -> PortResult<Option<StockAudit>> {
    let mut tx = pool.begin().await.port()?;
    sqlx::query(SNAPSHOT).execute(&mut *tx).await.port()?;
    let Some(row) = sqlx::query(
        "SELECT total_stock, available, held, sold, per_user_limit FROM sales WHERE id = $1",
    )
    .bind(sale.as_str())
    .fetch_optional(&mut *tx)
    .await
    .port()?
    else {
        return Ok(None);
    };
    let counters = StockLevels {
        total: col(&row, "total_stock")?,
        available: col(&row, "available")?,
        held: col(&row, "held")?,
        sold: col(&row, "sold")?,
    };
    let limit: i64 = col(&row, "per_user_limit")?;
    let (held, holds_expired): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(CASE WHEN state = 'active' THEN quantity END), 0)::bigint, \
         COUNT(CASE WHEN state = 'expired' THEN 1 END) FROM holds WHERE sale_id = $1",
    )
    .bind(sale.as_str())
    .fetch_one(&mut *tx)
    .await
    .port()?;
    let (sold, orders): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(i.quantity), 0)::bigint, COUNT(DISTINCT o.id) FROM order_items i \
         JOIN orders o ON o.user_id = i.user_id AND o.id = i.order_id \
         WHERE i.sale_id = $1 AND o.status = 'confirmed'",
    )
    .bind(sale.as_str())
    .fetch_one(&mut *tx)
    .await
    .port()?;
    let users_over_limit: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM ( \
           SELECT user_id FROM ( \
             SELECT user_id, quantity AS q FROM holds WHERE sale_id = $1 AND state = 'active' \
             UNION ALL \
             SELECT o.user_id, i.quantity FROM order_items i \
             JOIN orders o ON o.user_id = i.user_id AND o.id = i.order_id \
             WHERE i.sale_id = $1 AND o.status = 'confirmed' \
           ) AS units GROUP BY user_id HAVING SUM(q) > $2 \
         ) AS over_limit",
    )
    .bind(sale.as_str())
    .bind(limit)
    .fetch_one(&mut *tx)
    .await
    .port()?;
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
pub(crate) async fn gate_seeds(pool: &PgPool) -> PortResult<Vec<GateSeed>> {
    let mut tx = pool.begin().await.port()?;
    sqlx::query(SNAPSHOT).execute(&mut *tx).await.port()?;
    let sales: Vec<(String, i64)> =
        sqlx::query_as("SELECT id, available FROM sales ORDER BY created_at, id")
            .fetch_all(&mut *tx)
            .await
            .port()?;
    let units: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT sale_id, user_id, units FROM user_units WHERE units > 0 ORDER BY sale_id, user_id",
    )
    .fetch_all(&mut *tx)
    .await
    .port()?;
    tx.commit().await.port()?;
    let mut by_sale: BTreeMap<String, Vec<(UserId, u32)>> = BTreeMap::new();
    for (sale, user, n) in units {
        let n = u32::try_from(n).map_err(|_| internal(format!("user_units {n} for {user}")))?;
        by_sale
            .entry(sale)
            .or_default()
            .push((UserId::from_trusted(user), n));
    }
    Ok(sales
        .into_iter()
        .map(|(id, available)| GateSeed {
            user_units: by_sale.remove(&id).unwrap_or_default(),
            sale_id: SaleId::from_trusted(id),
            available,
        })
        .collect())
}
