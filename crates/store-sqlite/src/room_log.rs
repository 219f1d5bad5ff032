//! The waiting room's durable log over SQLite ([`RoomLog`]): a batch of entries is one
//! transaction on the writer (one fsync for every join waiting for it), a rebuild reads a
//! sale's rows in pages by their row id (the shared SQL of `stampede_store_sql::room_log`).

use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use stampede_app::ports::PortResult;
use stampede_core::waiting_line::LoggedEntry;
use stampede_core::SaleId;
use stampede_store_sql::engine::begin_write;
use stampede_store_sql::room_log::{self, to_i64, ENTRY_COLS};

use stampede_store_sql::error::OrPort;

/// Rows per INSERT: 10 parameters each, well under SQLite's 32,766.
const ROWS_PER_STATEMENT: usize = 1000;

/// Writes a batch of entries (never empty) in one transaction.
pub(crate) async fn append(writer: &SqlitePool, batch: &[(SaleId, LoggedEntry)]) -> PortResult<()> {
    let batch = stampede_app::durable_room::fold_batch(batch);
    let tail = room_log::upsert_tail::<Sqlite>();
    let mut tx = begin_write(writer).await?;
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
