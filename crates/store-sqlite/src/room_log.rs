//! The waiting room's durable log over SQLite ([`RoomLog`]): a batch of entries is one
//! transaction on the writer (one fsync for every join waiting for it), a rebuild reads a
//! sale's rows in pages by their row id.

use async_trait::async_trait;
use sqlx::{QueryBuilder, Row, Sqlite};

use stampede_app::ports::{PortResult, RoomLog};
use stampede_core::waiting_line::LoggedEntry;
use stampede_core::SaleId;

use crate::error::{internal, OrPort};
use crate::{SqliteStore, BEGIN_WRITE};

/// Rows per INSERT: 10 parameters each, well under SQLite's 32,766.
const ROWS_PER_STATEMENT: usize = 1000;

/// The upsert's rule is `LoggedEntry::supersedes`, in SQL.
const UPSERT_TAIL: &str = " ON CONFLICT (sale_id, user_id) DO UPDATE SET \
     rank = COALESCE(excluded.rank, room_log.rank), \
     pre_seq = COALESCE(room_log.pre_seq, excluded.pre_seq), \
     stage = excluded.stage, state = excluded.state, \
     until_ms = CASE WHEN excluded.rank IS NULL AND excluded.until_ms = 0 \
       THEN room_log.until_ms ELSE excluded.until_ms END, \
     lottery_won = MAX(room_log.lottery_won, excluded.lottery_won), \
     units = MAX(room_log.units, excluded.units) \
   WHERE (excluded.rank IS NOT NULL AND excluded.rank > COALESCE(room_log.rank, -1)) \
        OR ((excluded.rank IS NULL OR excluded.rank = room_log.rank) \
            AND excluded.stage > room_log.stage)";

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl RoomLog for SqliteStore {
    async fn append_entries(&self, batch: &[(SaleId, LoggedEntry)]) -> PortResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = stampede_app::durable_room::fold_batch(batch);
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.port()?;
        for chunk in batch.chunks(ROWS_PER_STATEMENT) {
            let mut qb: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
                "INSERT INTO room_log (sale_id, user_id, device_id, rank, pre_seq, stage, \
                 state, until_ms, lottery_won, units) ",
            );
            qb.push_values(chunk, |mut row, (sale, e)| {
                row.push_bind(sale.as_str())
                    .push_bind(e.user_id.as_str())
                    .push_bind(e.device_id.as_str())
                    .push_bind(e.rank.map(to_i64))
                    .push_bind(e.pre_seq.map(to_i64))
                    .push_bind(i64::from(e.stage()))
                    .push_bind(e.state_word())
                    .push_bind(e.until_ms)
                    .push_bind(i64::from(e.lottery_won))
                    .push_bind(to_i64(e.units));
            });
            qb.push(UPSERT_TAIL);
            qb.build().execute(&mut *tx).await.port()?;
        }
        tx.commit().await.port()
    }

    async fn entries(
        &self,
        sale: &SaleId,
        cursor: i64,
        limit: u32,
    ) -> PortResult<(Vec<LoggedEntry>, i64)> {
        // One value per page (a JSON array of rows) instead of one row at a time: a rebuild
        // reads a million entries, and the per-row cost of the driver would dominate it.
        let page: Option<String> = sqlx::query_scalar(
            "SELECT json_group_array(json_array(id, user_id, device_id, rank, pre_seq, state, \
               until_ms, lottery_won, units)) \
             FROM (SELECT * FROM room_log WHERE sale_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3)",
        )
        .bind(sale.as_str())
        .bind(cursor)
        .bind(i64::from(limit))
        .fetch_one(&self.reader)
        .await
        .port()?;
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
        let mut rows: Vec<Row> = match page {
            Some(json) => {
                serde_json::from_str(&json).map_err(|e| internal(format!("room_log page: {e}")))?
            }
            None => Vec::new(),
        };
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

    async fn put_value(&self, scope: &str, key: &str, value: &str) -> PortResult<()> {
        sqlx::query(
            "INSERT INTO room_values (scope, key, value) VALUES (?1, ?2, ?3) \
             ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value",
        )
        .bind(scope)
        .bind(key)
        .bind(value)
        .execute(&self.writer)
        .await
        .port()
        .map(|_| ())
    }

    async fn values(&self, scope: &str) -> PortResult<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT key, value FROM room_values WHERE scope = ?1 ORDER BY key")
            .bind(scope)
            .fetch_all(&self.reader)
            .await
            .port()?;
        rows.iter()
            .map(|r| Ok((r.try_get("key").port()?, r.try_get("value").port()?)))
            .collect()
    }
}
