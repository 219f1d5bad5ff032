//! Errors are classified once for both engines, in `stampede_store_sql::error`.

pub(crate) use stampede_store_sql::error::OrPort;
