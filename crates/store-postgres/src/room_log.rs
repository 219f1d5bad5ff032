//! The waiting room's durable log over PostgreSQL ([`RoomLog`]): in cluster mode the log of
//! joins Redis's room is rebuilt from when it comes back empty. A batch is one statement
//! (`UNNEST` of one array per column, whatever its size), a rebuild reads a sale's rows in
//! pages by their id.

use async_trait::async_trait;
use sqlx::Row;

use stampede_app::ports::{PortError, PortResult, RoomLog};
use stampede_core::waiting_line::LoggedEntry;
use stampede_core::SaleId;

use crate::error::OrPort;
use crate::PgStore;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl RoomLog for PgStore {
    async fn append_entries(&self, batch: &[(SaleId, LoggedEntry)]) -> PortResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // One row per buyer per statement: ON CONFLICT may not touch a row twice.
        let batch = stampede_app::durable_room::fold_batch(batch);
        let n = batch.len();
        let (mut sales, mut users, mut devices) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut ranks, mut pre_seqs, mut stages, mut states) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut untils, mut won, mut units) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (sale, e) in &batch {
            sales.push(sale.as_str());
            users.push(e.user_id.as_str());
            devices.push(e.device_id.as_str());
            ranks.push(e.rank.map(to_i64));
            pre_seqs.push(e.pre_seq.map(to_i64));
            stages.push(i64::from(e.stage()));
            states.push(e.state_word());
            untils.push(e.until_ms);
            won.push(i64::from(e.lottery_won));
            units.push(to_i64(e.units));
        }
        sqlx::query(
            "INSERT INTO room_log AS l (sale_id, user_id, device_id, rank, pre_seq, stage, \
               state, until_ms, lottery_won, units) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], \
               $5::bigint[], $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[]) \
             ON CONFLICT (sale_id, user_id) DO UPDATE SET \
               rank = COALESCE(excluded.rank, l.rank), \
               pre_seq = COALESCE(l.pre_seq, excluded.pre_seq), \
               stage = excluded.stage, state = excluded.state, \
               until_ms = CASE WHEN excluded.rank IS NULL AND excluded.until_ms = 0 \
                 THEN l.until_ms ELSE excluded.until_ms END, \
               lottery_won = GREATEST(l.lottery_won, excluded.lottery_won), \
               units = GREATEST(l.units, excluded.units) \
             WHERE (excluded.rank IS NOT NULL AND excluded.rank > COALESCE(l.rank, -1)) \
                OR ((excluded.rank IS NULL OR excluded.rank = l.rank) \
                    AND excluded.stage > l.stage)",
        )
        .bind(&sales)
        .bind(&users)
        .bind(&devices)
        .bind(&ranks)
        .bind(&pre_seqs)
        .bind(&stages)
        .bind(&states)
        .bind(&untils)
        .bind(&won)
        .bind(&units)
        .execute(&self.pool)
        .await
        .port()
        .map(|_| ())
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
            "SELECT json_agg(json_build_array(id, user_id, device_id, rank, pre_seq, state, \
               until_ms, lottery_won, units) ORDER BY id)::text \
             FROM (SELECT * FROM room_log WHERE sale_id = $1 AND id > $2 ORDER BY id LIMIT $3) p",
        )
        .bind(sale.as_str())
        .bind(cursor)
        .bind(i64::from(limit))
        .fetch_one(&self.pool)
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
        let rows: Vec<Row> = match page {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| PortError::internal_because("room_log page", e))?,
            None => Vec::new(),
        };
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
                            .ok_or_else(|| PortError::internal(format!("room_log state {word}")))?,
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
            "INSERT INTO room_values (scope, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value",
        )
        .bind(scope)
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await
        .port()
        .map(|_| ())
    }

    async fn values(&self, scope: &str) -> PortResult<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT key, value FROM room_values WHERE scope = $1 ORDER BY key")
            .bind(scope)
            .fetch_all(&self.pool)
            .await
            .port()?;
        rows.iter()
            .map(|r| Ok((r.try_get("key").port()?, r.try_get("value").port()?)))
            .collect()
    }
}
