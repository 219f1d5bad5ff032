//! The store written once for SQLite and PostgreSQL, generic over the sqlx database
//! ([`store::SqlStore`]); sqlx's SQLite driver takes PostgreSQL's `$N` placeholders, so one
//! statement text serves both. What the engines do differently is named in [`engine`] and
//! [`judging`]; each backend crate keeps only its pools, migrations and batch paths.

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
