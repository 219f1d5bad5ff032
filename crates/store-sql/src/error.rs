//! How sqlx failures become [`PortError`]s, for both engines: anything that says "the database
//! is not reachable right now" (pool timeout, I/O, TLS, a lost or refused connection, a busy or
//! locked SQLite file, a full disk, a server shutting down or out of resources, a statement or
//! lock timeout, a deadlock or serialization failure that a retry resolves) is `Unavailable`
//! and worth a retry; everything else is `Internal`, with sqlx's message kept for the log.

use stampede_app::ports::{PortError, PortResult};

/// `.port()?` on any sqlx result: the one place errors are classified.
pub trait OrPort<T> {
    /// The result with its error mapped to a [`PortError`].
    fn port(self) -> PortResult<T>;
}

impl<T> OrPort<T> for Result<T, sqlx::Error> {
    fn port(self) -> PortResult<T> {
        self.map_err(port_error)
    }
}

/// Classifies one sqlx error.
pub fn port_error(e: sqlx::Error) -> PortError {
    let unavailable = match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| unavailable_code(&c)),
        _ => false,
    };
    if unavailable {
        PortError::unavailable_because("", e)
    } else {
        PortError::internal_because("", e)
    }
}

/// A database error code that means "not now" rather than "wrong". PostgreSQL's SQLSTATEs are
/// five characters: class 08 (connection exception), 53 (insufficient resources),
/// 57P01-57P03 (shutdown, cannot connect now), 57014 (statement timeout), 55P03 (lock
/// timeout), 40001 / 40P01 (serialization failure, deadlock). SQLite's are numbers of at most
/// four digits whose low byte is the primary code: BUSY 5, LOCKED 6, IOERR 10, FULL 13,
/// CANTOPEN 14.
fn unavailable_code(code: &str) -> bool {
    if code.len() == 5 {
        return code.starts_with("08")
            || code.starts_with("53")
            || matches!(
                code,
                "57P01" | "57P02" | "57P03" | "57014" | "55P03" | "40001" | "40P01"
            );
    }
    code.parse::<i64>()
        .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_now_codes_are_unavailable_and_the_rest_internal() {
        for code in [
            "08006", "08001", "53300", "57P01", "57P03", "57014", "55P03", "40P01", "5", "517",
            "6", "10", "3850", "13", "14",
        ] {
            assert!(unavailable_code(code), "{code}");
        }
        for code in [
            "23505", "23514", "42P01", "22P02", "P0001", "19", "2067", "1555", "275", "1",
        ] {
            assert!(!unavailable_code(code), "{code}");
        }
        assert!(matches!(
            port_error(sqlx::Error::PoolTimedOut),
            PortError::Unavailable { .. }
        ));
        assert!(matches!(
            port_error(sqlx::Error::RowNotFound),
            PortError::Internal { .. }
        ));
    }
}
