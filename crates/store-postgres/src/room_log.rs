//! The waiting room's durable log over PostgreSQL ([`RoomLog`]): in cluster mode the log of
//! joins Redis's room is rebuilt from when it comes back empty. A batch is one statement
//! (`UNNEST` of one array per column, whatever its size), a rebuild reads a sale's rows in
//! pages by their id (the shared SQL of `stampede_store_sql::room_log`).

use async_trait::async_trait;
use sqlx::Postgres;

use stampede_app::ports::{PortResult, RoomLog};
use stampede_core::waiting_line::LoggedEntry;
use stampede_core::SaleId;
use stampede_store_sql::room_log::{self, to_i64, ENTRY_COLS};

use crate::error::OrPort;
use crate::PgStore;

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
        let sql = format!(
            "INSERT INTO room_log AS l ({ENTRY_COLS}) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], \
               $5::bigint[], $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[]){}",
            room_log::upsert_tail::<Postgres>()
        );
        sqlx::query(&sql)
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
        room_log::entries(&self.pool, sale, cursor, limit).await
    }

    async fn put_value(&self, scope: &str, key: &str, value: &str) -> PortResult<()> {
        room_log::put_value(&self.pool, scope, key, value).await
    }

    async fn values(&self, scope: &str) -> PortResult<Vec<(String, String)>> {
        room_log::values(&self.pool, scope).await
    }
}
