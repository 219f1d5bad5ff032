//! The waiting room's durable log over SQLite ([`RoomLog`]): a batch of entries is one
//! transaction on the writer (one fsync for every join waiting for it), a rebuild reads a
//! sale's rows in pages by their row id (the shared SQL of `stampede_store_sql::room_log`).

use async_trait::async_trait;
use sqlx::{QueryBuilder, Sqlite};

use stampede_app::ports::{PortResult, RoomLog};
use stampede_core::waiting_line::LoggedEntry;
use stampede_core::SaleId;
use stampede_store_sql::room_log::{self, to_i64, ENTRY_COLS};

use crate::error::OrPort;
use crate::{SqliteStore, BEGIN_WRITE};

/// Rows per INSERT: 10 parameters each, well under SQLite's 32,766.
const ROWS_PER_STATEMENT: usize = 1000;

#[async_trait]
impl RoomLog for SqliteStore {
    async fn append_entries(&self, batch: &[(SaleId, LoggedEntry)]) -> PortResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = stampede_app::durable_room::fold_batch(batch);
        let tail = room_log::upsert_tail::<Sqlite>();
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.port()?;
        for chunk in batch.chunks(ROWS_PER_STATEMENT) {
            let mut qb: QueryBuilder<'_, Sqlite> =
                QueryBuilder::new(format!("INSERT INTO room_log AS l ({ENTRY_COLS}) "));
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
            qb.push(&tail);
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
        room_log::entries(&self.reader, sale, cursor, limit).await
    }

    async fn put_value(&self, scope: &str, key: &str, value: &str) -> PortResult<()> {
        room_log::put_value(&self.writer, scope, key, value).await
    }

    async fn values(&self, scope: &str) -> PortResult<Vec<(String, String)>> {
        room_log::values(&self.reader, scope).await
    }
}
