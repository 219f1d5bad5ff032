//! What the judge's path (holds, orders, the stock they move) needs of an engine beyond
//! [`Engine`]: the row locks PostgreSQL takes and SQLite does not need (one writer connection,
//! `BEGIN IMMEDIATE`), the statements that bind arrays, and where hold ids are issued
//! (PostgreSQL's `holds` is partitioned by buyer, so unique per buyer only).
//!
//! Lock order on PostgreSQL, the same everywhere so that nodes cannot deadlock: the order row,
//! then the hold rows a transaction changes, then the sale rows (in sale id order, several at
//! once), then `user_units` (only read and written under their sale's lock). Row locks are
//! `FOR NO KEY UPDATE`, the lock an `UPDATE` of non-key columns takes: exclusive among
//! writers, yet foreign-key checks (`FOR KEY SHARE`) still pass.

use stampede_app::ports::PortResult;
use stampede_core::Hold;

use crate::engine::{statement, Bind, Conn, Engine, Pending, Run};
use crate::error::OrPort;

/// An engine the judge runs on: see the module documentation.
pub trait Judging: Engine {
    /// Appended to a `SELECT` of rows the transaction will write: "" on SQLite (its one
    /// writer excludes every other), `FOR NO KEY UPDATE` on PostgreSQL.
    const LOCK: &'static str;
    /// Appended to a `SELECT` that locks the holds it joins (`holds h`), on PostgreSQL.
    const LOCK_HOLDS: &'static str;
    /// Appended to the sweeper's `SELECT` of due holds (`holds h`): rows another transaction
    /// has locked are skipped, not waited for, on PostgreSQL.
    const SKIP_LOCKED_HOLDS: &'static str;
    /// The pairs of a JSON array of `[text, text]` parameter `$1`, as a subquery (`(a, b) IN
    /// (...)`): a batch's lookups in one statement, whatever its size.
    const JSON_PAIRS: &'static str;

    /// Where a hold id is issued once across every buyer (`id`, `user_id`, `sale_id`): `holds`
    /// itself on SQLite; on PostgreSQL the unpartitioned `hold_ids`, since the partitioned
    /// `holds` is unique per buyer only.
    const HOLD_IDS: &'static str;
    /// Inserts a batch's new holds, each with its device, in a constant number of statements
    /// whatever the batch's size; the ids written (an id already issued is skipped, never
    /// overwritten; on PostgreSQL a concurrent claim of the same id is waited for).
    fn insert_holds<'c>(
        conn: &'c mut Self::Connection,
        holds: &'c [(&'c Hold, Option<&'c str>)],
    ) -> Pending<'c, Vec<String>>;
    /// Takes what keeps the hold cap's counts of these accounts and devices exact until the
    /// commit (see [`crate::hold_cap`]); nothing on SQLite, whose one writer excludes the rest.
    fn lock_hold_cap(_: &mut Self::Connection, _: Vec<String>) -> Pending<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Whether this engine takes row locks (so `lock_*` steps are needed at all).
    fn locks_rows() -> bool {
        !Self::LOCK.is_empty()
    }
}

/// Holds per multi-row insert on SQLite: 10 parameters each, well under its limit.
const HOLDS_PER_STATEMENT: usize = 200;
/// The columns a new hold is inserted with, in the order both engines bind them.
const INSERT_HOLDS: &str = "INSERT INTO holds (id, sale_id, user_id, quantity, unit_price, \
     currency, state, created_at, expires_at, device_id) ";

impl Judging for sqlx::Sqlite {
    const LOCK: &'static str = "";
    const LOCK_HOLDS: &'static str = "";
    const SKIP_LOCKED_HOLDS: &'static str = "";

    const JSON_PAIRS: &'static str =
        "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each($1)";
    const HOLD_IDS: &'static str = "holds";

    fn insert_holds<'c>(
        conn: &'c mut Self::Connection,
        holds: &'c [(&'c Hold, Option<&'c str>)],
    ) -> Pending<'c, Vec<String>> {
        Box::pin(async move {
            let mut written = Vec::with_capacity(holds.len());
            for chunk in holds.chunks(HOLDS_PER_STATEMENT) {
                let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(INSERT_HOLDS);
                qb.push_values(chunk, |mut row, (h, device)| {
                    row.push_bind(h.id.as_str())
                        .push_bind(h.sale_id.as_str())
                        .push_bind(h.user_id.as_str())
                        .push_bind(i64::from(h.quantity))
                        .push_bind(h.unit_price.0)
                        .push_bind(h.currency.as_str())
                        .push_bind(h.state.as_str())
                        .push_bind(h.created_at.0)
                        .push_bind(h.expires_at.0)
                        .push_bind(*device);
                });
                qb.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
                let query = qb.build_query_scalar::<String>();
                written.extend(query.fetch_all(&mut *conn).await.port()?);
            }
            Ok(written)
        })
    }
}

impl Judging for sqlx::Postgres {
    const LOCK: &'static str = " FOR NO KEY UPDATE";
    const LOCK_HOLDS: &'static str = " FOR NO KEY UPDATE OF h";
    const SKIP_LOCKED_HOLDS: &'static str = " FOR NO KEY UPDATE OF h SKIP LOCKED";

    const JSON_PAIRS: &'static str = "SELECT e->>0, e->>1 FROM json_array_elements($1::json) e";
    const HOLD_IDS: &'static str = "hold_ids";

    fn insert_holds<'c>(
        conn: &'c mut Self::Connection,
        holds: &'c [(&'c Hold, Option<&'c str>)],
    ) -> Pending<'c, Vec<String>> {
        let column = |f: fn(&Hold) -> &str| holds.iter().map(|(h, _)| f(h)).collect::<Vec<_>>();
        let number = |f: fn(&Hold) -> i64| holds.iter().map(|(h, _)| f(h)).collect::<Vec<_>>();
        // Each id is claimed in `hold_ids` first; only the claimed ones are inserted.
        let query = sqlx::query_scalar(
            "WITH new AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], \
               $5::bigint[], $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::text[]) \
               AS n(id, sale_id, user_id, quantity, unit_price, currency, state, created_at, \
               expires_at, device_id)), \
             claimed AS (INSERT INTO hold_ids (id, user_id, sale_id) \
               SELECT id, user_id, sale_id FROM new ON CONFLICT (id) DO NOTHING RETURNING id) \
             INSERT INTO holds (id, sale_id, user_id, quantity, unit_price, currency, state, \
               created_at, expires_at, device_id) \
             SELECT new.* FROM new JOIN claimed USING (id) RETURNING id",
        )
        .bind(column(|h| h.id.as_str()))
        .bind(column(|h| h.sale_id.as_str()))
        .bind(column(|h| h.user_id.as_str()))
        .bind(number(|h| i64::from(h.quantity)))
        .bind(number(|h| h.unit_price.0))
        .bind(column(|h| h.currency.as_str()))
        .bind(column(|h| h.state.as_str()))
        .bind(number(|h| h.created_at.0))
        .bind(number(|h| h.expires_at.0))
        .bind(holds.iter().map(|(_, d)| *d).collect::<Vec<_>>());
        Box::pin(async move { query.fetch_all(conn).await.port() })
    }

    fn lock_hold_cap(conn: &mut Self::Connection, subjects: Vec<String>) -> Pending<'_, ()> {
        // Volatile functions in the select list run after the sort: the locks are taken in
        // key order.
        let query = sqlx::query(
            "SELECT pg_advisory_xact_lock(k) FROM \
             (SELECT DISTINCT hashtextextended(s, 0) AS k FROM unnest($1::text[]) AS s) AS keys \
             ORDER BY k",
        )
        .bind(subjects);
        Box::pin(async move { query.fetch_all(conn).await.port().map(|_| ()) })
    }
}

/// A guarded write (a status move, a hold still active, a sale's counters) must change exactly
/// one row, or what `broken` names changed meanwhile (a race lost, or a bug): the transaction
/// must not commit.
pub(crate) fn exactly_one(done: u64, broken: impl std::fmt::Display) -> PortResult<()> {
    (done == 1)
        .then_some(())
        .ok_or_else(|| crate::internal(broken))
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

/// Locks the buyer rows of many `(buyer, id)` keys of `table` (`orders` or `holds`) for the
/// rest of the transaction, in key order (the caller sorts), so two transactions never wait
/// on each other. Without row locks there is nothing to take.
pub async fn lock_many<DB: Judging>(
    conn: &mut impl Conn<DB>,
    table: &str,
    keys: &[(&str, &str)],
) -> PortResult<()> {
    if !DB::locks_rows() || keys.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT 1 FROM {table} WHERE (user_id, id) IN ({}) ORDER BY user_id, id{}",
        DB::JSON_PAIRS,
        DB::LOCK
    );
    let json = serde_json::to_string(keys).map_err(crate::internal)?;
    statement::<DB>(&sql).string(json).all(conn).await?;
    Ok(())
}
