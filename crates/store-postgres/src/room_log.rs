//! The waiting room's durable log over PostgreSQL ([`RoomLog`]): in cluster mode the log of
//! joins Redis's room is rebuilt from when it comes back empty. A batch is one statement
//! (`UNNEST` of one array per column, whatever its size), a rebuild reads a sale's rows in
//! pages by their id (the shared SQL of `stampede_store_sql::room_log`).

use sqlx::{PgPool, Postgres};

use stampede_app::ports::PortResult;
use stampede_core::waiting_line::LoggedEntry;
use stampede_core::SaleId;
use stampede_store_sql::room_log::{self, to_i64, ENTRY_COLS};

use stampede_store_sql::error::OrPort;

/// Writes a batch of entries (never empty) in one transaction.
pub(crate) async fn append(pool: &PgPool, batch: &[(SaleId, LoggedEntry)]) -> PortResult<()> {
    // One row per buyer per statement: ON CONFLICT may not touch a row twice.
    let batch = stampede_app::durable_room::fold_batch(batch);
    let sql = format!(
        "INSERT INTO room_log AS l ({ENTRY_COLS}) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], \
           $5::bigint[], $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[]){}",
        room_log::upsert_tail::<Postgres>()
    );
    sqlx::query(&sql)
        .bind(column(&batch, |(s, _)| s.as_str()))
        .bind(column(&batch, |(_, e)| e.user_id.as_str()))
        .bind(column(&batch, |(_, e)| e.device_id.as_str()))
        .bind(column(&batch, |(_, e)| e.rank.map(to_i64)))
        .bind(column(&batch, |(_, e)| e.pre_seq.map(to_i64)))
        .bind(column(&batch, |(_, e)| i64::from(e.stage())))
        .bind(column(&batch, |(_, e)| e.state_word()))
        .bind(column(&batch, |(_, e)| e.until_ms))
        .bind(column(&batch, |(_, e)| i64::from(e.lottery_won)))
        .bind(column(&batch, |(_, e)| to_i64(e.units)))
        .execute(pool)
        .await
        .port()
        .map(|_| ())
}

/// One column of the batch, as an array for `UNNEST`.
fn column<'a, T>(
    batch: &'a [(SaleId, LoggedEntry)],
    value: impl Fn(&'a (SaleId, LoggedEntry)) -> T,
) -> Vec<T> {
    batch.iter().map(value).collect()
}
