//! What the judge's path (holds, orders, the stock they move) needs of an engine beyond
//! [`Engine`]: the row locks PostgreSQL takes and SQLite does not need (one writer connection,
//! `BEGIN IMMEDIATE`), the statements that bind arrays, and the few statements whose columns
//! differ because PostgreSQL's `holds`, `orders` and `order_items` are partitioned by buyer.
//!
//! Lock order on PostgreSQL, the same everywhere so that nodes cannot deadlock: the order row,
//! then the hold rows a transaction changes, then the sale rows (in sale id order, several at
//! once), then `user_units` (only read and written under their sale's lock). Row locks are
//! `FOR NO KEY UPDATE`, the lock an `UPDATE` of non-key columns takes: exclusive among
//! writers, yet foreign-key checks (`FOR KEY SHARE`) still pass.

use stampede_app::ports::PortResult;

use crate::engine::{statement, Bind, Conn, Engine, Pending, Run};
use crate::error::OrPort;

/// An engine the judge runs on: see the module documentation.
pub trait Judging: Engine {
    /// Appended to a `SELECT` of rows the transaction will write: "" on SQLite (its one
    /// writer excludes every other), `FOR NO KEY UPDATE` on PostgreSQL.
    const LOCK: &'static str;
    /// Appended to the sweeper's `SELECT` of due holds (`holds h`): rows another transaction
    /// has locked are skipped, not waited for, on PostgreSQL.
    const SKIP_LOCKED_HOLDS: &'static str;
    /// An order's items in checkout order; binds the buyer, the order.
    const ORDER_ITEMS: &'static str;
    /// An order's lines joined with their holds (locked on PostgreSQL), in checkout order;
    /// binds the buyer, the order.
    const ORDER_LINES: &'static str;
    /// Inserts an order item; binds the order, buyer, hold, sale, position, quantity, price.
    const INSERT_ORDER_ITEM: &'static str;
    /// Inserts a payment; binds the id, order, buyer, status, method, amount, time.
    const INSERT_PAYMENT: &'static str;
    /// The buyer of an order (`user_id`); binds the order.
    const ORDER_OWNER: &'static str;
    /// The buyer and order (`user_id`, `order_id`) of a payment reference; binds it.
    const ORDER_OF_REFERENCE: &'static str;
    /// Locks and reads the given sales (every column of [`crate::sale_cols`]) in one
    /// statement, in id order; nothing on an engine without row locks.
    fn lock_sales(conn: &mut Self::Connection, ids: Vec<String>) -> Pending<'_, Vec<Self::Row>>;
    /// The ids of every sale in the drops the given sales belong to.
    fn drop_siblings(conn: &mut Self::Connection, ids: Vec<String>) -> Pending<'_, Vec<String>>;
    /// The stored `user_units` of the given distinct `(sale, buyer)` pairs: missing rows are
    /// not returned. A constant number of statements per batch, whatever its size.
    fn units_of(
        conn: &mut Self::Connection,
        pairs: Vec<(String, String)>,
    ) -> Pending<'_, Vec<(String, String, i64)>>;

    /// Whether this engine takes row locks (so `lock_*` steps are needed at all).
    fn locks_rows() -> bool {
        !Self::LOCK.is_empty()
    }
}

/// Pairs per multi-row statement on SQLite: well under its limit on bound parameters.
const PAIRS_PER_STATEMENT: usize = 300;

impl Judging for sqlx::Sqlite {
    const LOCK: &'static str = "";
    const SKIP_LOCKED_HOLDS: &'static str = "";
    const ORDER_ITEMS: &'static str = "SELECT sale_id, hold_id, quantity, unit_price \
         FROM order_items WHERE order_id = $2 ORDER BY rowid";
    const ORDER_LINES: &'static str =
        "SELECT i.hold_id, i.sale_id, i.quantity, h.user_id, h.quantity AS hold_quantity, \
         h.state, h.expires_at FROM order_items i JOIN holds h ON h.id = i.hold_id \
         WHERE i.order_id = $2 ORDER BY i.rowid";
    const INSERT_ORDER_ITEM: &'static str =
        "INSERT INTO order_items (order_id, hold_id, sale_id, quantity, unit_price) \
         VALUES ($1, $3, $4, $6, $7)";
    const INSERT_PAYMENT: &'static str =
        "INSERT INTO payments (id, order_id, status, method, reference, amount, \
         failure_reason, updated_at) VALUES ($1, $2, $4, $5, NULL, $6, NULL, $7)";
    const ORDER_OWNER: &'static str = "SELECT user_id FROM orders WHERE id = $1";
    const ORDER_OF_REFERENCE: &'static str = "SELECT o.user_id, p.order_id FROM payments p \
         JOIN orders o ON o.id = p.order_id WHERE p.reference = $1";

    fn lock_sales(_: &mut Self::Connection, _: Vec<String>) -> Pending<'_, Vec<Self::Row>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn drop_siblings(_: &mut Self::Connection, _: Vec<String>) -> Pending<'_, Vec<String>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn units_of(
        conn: &mut Self::Connection,
        pairs: Vec<(String, String)>,
    ) -> Pending<'_, Vec<(String, String, i64)>> {
        Box::pin(async move {
            let mut found = Vec::new();
            for chunk in pairs.chunks(PAIRS_PER_STATEMENT) {
                let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "SELECT sale_id, user_id, units FROM user_units WHERE (sale_id, user_id) IN (",
                );
                qb.push_values(chunk, |mut row, (sale, user)| {
                    row.push_bind(sale.clone()).push_bind(user.clone());
                });
                qb.push(")");
                found.extend(
                    qb.build_query_as::<(String, String, i64)>()
                        .fetch_all(&mut *conn)
                        .await
                        .port()?,
                );
            }
            Ok(found)
        })
    }
}

impl Judging for sqlx::Postgres {
    const LOCK: &'static str = " FOR NO KEY UPDATE";
    const SKIP_LOCKED_HOLDS: &'static str = " FOR NO KEY UPDATE OF h SKIP LOCKED";
    const ORDER_ITEMS: &'static str = "SELECT sale_id, hold_id, quantity, unit_price \
         FROM order_items WHERE user_id = $1 AND order_id = $2 ORDER BY position";
    const ORDER_LINES: &'static str =
        "SELECT i.hold_id, i.sale_id, i.quantity, h.user_id, h.quantity AS hold_quantity, \
         h.state, h.expires_at FROM order_items i \
         JOIN holds h ON h.user_id = i.user_id AND h.id = i.hold_id \
         WHERE i.user_id = $1 AND i.order_id = $2 ORDER BY i.position FOR NO KEY UPDATE OF h";
    const INSERT_ORDER_ITEM: &'static str =
        "INSERT INTO order_items (order_id, user_id, hold_id, sale_id, position, quantity, \
         unit_price) VALUES ($1, $2, $3, $4, $5, $6, $7)";
    const INSERT_PAYMENT: &'static str =
        "INSERT INTO payments (id, order_id, user_id, status, method, reference, amount, \
         failure_reason, updated_at) VALUES ($1, $2, $3, $4, $5, NULL, $6, NULL, $7)";
    /// Through the payment (unpartitioned, one per order): `orders` is keyed by buyer.
    const ORDER_OWNER: &'static str = "SELECT user_id FROM payments WHERE order_id = $1";
    const ORDER_OF_REFERENCE: &'static str =
        "SELECT user_id, order_id FROM payments WHERE reference = $1";

    fn lock_sales(conn: &mut Self::Connection, ids: Vec<String>) -> Pending<'_, Vec<Self::Row>> {
        Box::pin(async move {
            let sql = concat!(
                "SELECT ",
                crate::sale_cols!(),
                " FROM sales WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE"
            );
            sqlx::query(sql).bind(ids).fetch_all(conn).await.port()
        })
    }

    fn drop_siblings(conn: &mut Self::Connection, ids: Vec<String>) -> Pending<'_, Vec<String>> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT id FROM sales WHERE drop_id IN \
                 (SELECT drop_id FROM sales WHERE id = ANY($1) AND drop_id IS NOT NULL)",
            )
            .bind(ids)
            .fetch_all(conn)
            .await
            .port()
        })
    }

    fn units_of(
        conn: &mut Self::Connection,
        pairs: Vec<(String, String)>,
    ) -> Pending<'_, Vec<(String, String, i64)>> {
        Box::pin(async move {
            let (sales, users): (Vec<String>, Vec<String>) = pairs.into_iter().unzip();
            sqlx::query_as(
                "SELECT u.sale_id, u.user_id, u.units FROM user_units u \
                 JOIN UNNEST($1::text[], $2::text[]) AS k(sale_id, user_id) \
                 ON u.sale_id = k.sale_id AND u.user_id = k.user_id",
            )
            .bind(sales)
            .bind(users)
            .fetch_all(conn)
            .await
            .port()
        })
    }
}

/// A guarded write (a status move, a hold still active, a sale's counters) must change exactly
/// one row, or what `broken` names changed meanwhile (a race lost, or a bug): the transaction
/// must not commit.
pub(crate) fn exactly_one(done: u64, broken: impl std::fmt::Display) -> PortResult<()> {
    if done != 1 {
        return Err(crate::internal(broken));
    }
    Ok(())
}

/// Locks the buyer's row `id` of `table` (`holds` or `orders`, keyed by buyer) for the rest of
/// the transaction; whether it exists. Without row locks there is nothing to take: `true`, and
/// the caller's read finds out.
pub async fn lock_own<DB: Judging>(
    conn: &mut impl Conn<DB>,
    table: &str,
    user: &str,
    id: &str,
) -> PortResult<bool> {
    if !DB::locks_rows() {
        return Ok(true);
    }
    let sql = format!(
        "SELECT 1 FROM {table} WHERE user_id = $1 AND id = $2{}",
        DB::LOCK
    );
    let locked = statement::<DB>(&sql)
        .text(user)
        .text(id)
        .first(conn)
        .await?;
    Ok(locked.is_some())
}
