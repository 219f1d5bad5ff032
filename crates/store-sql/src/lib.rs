//! What the SQLite and PostgreSQL stores share, written once and generic over the sqlx row
//! type: decoding rows into domain types ([`rows`]) and the column lists and statement texts
//! both engines accept (sqlx's SQLite driver takes the same `$N` placeholders as PostgreSQL).
//!
//! Each backend crate keeps only what really differs: locking (`FOR NO KEY UPDATE`,
//! `SKIP LOCKED`), the partition keys PostgreSQL's tables carry, the group-commit batch path,
//! full-text search, migrations and pool settings.

use std::fmt::Display;

use stampede_app::ports::PortError;

pub mod catalog;
pub mod engine;
pub mod error;
pub mod hold_cap;
pub mod holds;
pub mod judging;
pub mod misc;
pub mod orders;
pub mod outbox;
pub mod report;
pub mod room_log;
pub mod rows;
pub mod sales;
pub mod store;
pub mod txstock;
pub mod users;
pub mod webhooks;

/// A broken expectation about our own data (an unknown state word, a counter out of balance):
/// always a bug, never a panic.
pub fn internal(msg: impl Display) -> PortError {
    PortError::internal(msg.to_string())
}
