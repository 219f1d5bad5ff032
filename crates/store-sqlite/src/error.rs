//! How sqlx failures become [`PortError`]s: anything that says "the database is not reachable
//! right now" (pool timeout, I/O, busy/locked, disk full) is `Unavailable` and worth a retry;
//! everything else is `Internal`, with sqlx's message kept for the log.

use std::fmt::Display;

use stampede_app::ports::{PortError, PortResult};

/// `.port()?` on any sqlx result: the one place errors are classified.
pub(crate) trait OrPort<T> {
    /// The result with its error mapped to a [`PortError`].
    fn port(self) -> PortResult<T>;
}

impl<T> OrPort<T> for Result<T, sqlx::Error> {
    fn port(self) -> PortResult<T> {
        self.map_err(port_error)
    }
}

/// Classifies one sqlx error.
pub(crate) fn port_error(e: sqlx::Error) -> PortError {
    let unavailable = match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            // Primary result code: BUSY 5, LOCKED 6, IOERR 10, FULL 13, CANTOPEN 14.
            .is_some_and(|code| matches!(code & 0xff, 5 | 6 | 10 | 13 | 14)),
        _ => false,
    };
    if unavailable {
        PortError::Unavailable(e.to_string())
    } else {
        PortError::Internal(e.to_string())
    }
}

/// A broken expectation about our own data (an unknown state word, a counter out of balance):
/// always a bug, never a panic.
pub(crate) fn internal(msg: impl Display) -> PortError {
    PortError::Internal(msg.to_string())
}
