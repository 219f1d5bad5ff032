//! The waiting room's durable log ([`stampede_app::ports::RoomLog`]), written once for both
//! engines: a batch of entries is one transaction (one fsync for every join waiting for it)
//! of multi-row upserts whose rule is `LoggedEntry::supersedes`; a rebuild reads a sale's
//! rows in pages by their id; and the room's values.

use sqlx::Pool;

use stampede_app::ports::PortResult;
use stampede_core::waiting_line::LoggedEntry;
use stampede_core::SaleId;

use crate::engine::{begin_write, commit, list, statement, values_list, Bind, Engine, Run};
use crate::internal;
use crate::rows::col;

/// The columns a batch of entries writes, in the order they are bound.
const ENTRY_COLS: &str =
    "sale_id, user_id, device_id, rank, pre_seq, stage, state, until_ms, lottery_won, units";

/// Entries per multi-row statement: 10 parameters each, well under SQLite's limit.
const ENTRIES_PER_STATEMENT: usize = 1000;

/// Writes a batch of entries in one transaction.
pub async fn append<DB: Engine>(
    writer: &Pool<DB>,
    batch: &[(SaleId, LoggedEntry)],
) -> PortResult<()> {
    if batch.is_empty() {
        return Ok(());
    }
    // One row per buyer per statement: ON CONFLICT may not touch a row twice.
    let batch = stampede_app::durable_room::fold_batch(batch);
    let mut tx = begin_write(writer).await?;
    for chunk in batch.chunks(ENTRIES_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO room_log AS l ({ENTRY_COLS}) VALUES {}{}",
            values_list(chunk.len(), 10),
            upsert_tail::<DB>()
        );
        let mut q = statement::<DB>(&sql);
        for (sale, e) in chunk {
            q = q
                .text(sale.as_str())
                .text(e.user_id.as_str())
                .text(e.device_id.as_str())
                .opt_int(e.rank.map(to_i64))
                .opt_int(e.pre_seq.map(to_i64))
                .int(i64::from(e.stage()))
                .text(e.state_word())
                .int(e.until_ms)
                .int(i64::from(e.lottery_won))
                .int(to_i64(e.units));
        }
        q.run(&mut tx).await?;
    }
    commit(tx, "append_entries").await
}

/// A logged counter as the column's BIGINT (a value past `i64::MAX` saturates).
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What follows `INSERT INTO room_log AS l (…) VALUES …`: the upsert's rule is
/// `LoggedEntry::supersedes`, in SQL.
fn upsert_tail<DB: Engine>() -> String {
    let greatest = DB::GREATEST;
    format!(
        " ON CONFLICT (sale_id, user_id) DO UPDATE SET \
         rank = COALESCE(excluded.rank, l.rank), \
         pre_seq = COALESCE(l.pre_seq, excluded.pre_seq), \
         stage = excluded.stage, state = excluded.state, \
         until_ms = CASE WHEN excluded.rank IS NULL AND excluded.until_ms = 0 \
           THEN l.until_ms ELSE excluded.until_ms END, \
         lottery_won = {greatest}(l.lottery_won, excluded.lottery_won), \
         units = {greatest}(l.units, excluded.units) \
         WHERE (excluded.rank IS NOT NULL AND excluded.rank > COALESCE(l.rank, -1)) \
            OR ((excluded.rank IS NULL OR excluded.rank = l.rank) \
                AND excluded.stage > l.stage)"
    )
}

/// A page of a sale's entries after `cursor` (a row id), in id order, and the cursor of the
/// next page (`cursor` itself when the page is empty).
pub async fn entries<DB: Engine>(
    reader: &Pool<DB>,
    sale: &SaleId,
    cursor: i64,
    limit: u32,
) -> PortResult<(Vec<LoggedEntry>, i64)> {
    // One value per page (a JSON array of rows) instead of one row at a time: a rebuild
    // reads a million entries, and the per-row cost of the driver would dominate it.
    let sql = format!(
        "SELECT CAST({}({}(id, user_id, device_id, rank, pre_seq, state, until_ms, \
           lottery_won, units)) AS TEXT) AS page \
         FROM (SELECT * FROM room_log WHERE sale_id = $1 AND id > $2 ORDER BY id LIMIT $3) p",
        DB::JSON_ARRAY_AGG,
        DB::JSON_ARRAY
    );
    let row = statement::<DB>(&sql)
        .text(sale.as_str())
        .int(cursor)
        .int(i64::from(limit))
        .first_in(reader)
        .await?;
    let page: Option<String> = row.map(|r| col(&r, "page")).transpose()?.flatten();
    type Row = (
        i64,
        String,
        String,
        Option<u64>,
        Option<u64>,
        String,
        i64,
        i64,
        u64,
    );
    let mut rows: Vec<Row> = page
        .map(|json| serde_json::from_str(&json))
        .transpose()
        .map_err(|e| internal(format!("room_log page: {e}")))?
        .unwrap_or_default();
    // An aggregate need not keep the subquery's order.
    rows.sort_unstable_by_key(|r| r.0);
    let next = rows.last().map_or(cursor, |r| r.0);
    let entries = rows
        .into_iter()
        .map(
            |(_, user_id, device_id, rank, pre_seq, word, until_ms, won, units)| {
                Ok(LoggedEntry {
                    user_id,
                    device_id,
                    rank,
                    pre_seq,
                    state: LoggedEntry::state_from_word(&word)
                        .ok_or_else(|| internal(format!("room_log state {word}")))?,
                    until_ms,
                    lottery_won: won != 0,
                    units,
                })
            },
        )
        .collect::<PortResult<Vec<_>>>()?;
    Ok((entries, next))
}

/// Stores one value of the room's `scope`, replacing the one under the same key.
pub async fn put_value<DB: Engine>(
    writer: &Pool<DB>,
    scope: &str,
    key: &str,
    value: &str,
) -> PortResult<()> {
    statement::<DB>(
        "INSERT INTO room_values (scope, key, value) VALUES ($1, $2, $3) \
         ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value",
    )
    .text(scope)
    .text(key)
    .text(value)
    .run_in(writer, "put_value")
    .await?;
    Ok(())
}

/// Every value of the room's `scope`, by key.
pub async fn values<DB: Engine>(
    reader: &Pool<DB>,
    scope: &str,
) -> PortResult<Vec<(String, String)>> {
    let q = statement::<DB>("SELECT key, value FROM room_values WHERE scope = $1 ORDER BY key");
    list(q.text(scope), reader, |r| {
        Ok((col(r, "key")?, col(r, "value")?))
    })
    .await
}
