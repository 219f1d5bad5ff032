//! Decoding rows back into domain types: the decoders are the shared ones of
//! `stampede_store_sql::rows`.

pub(crate) use stampede_store_sql::rows::{col, col_ts, col_u32, col_word, sale, user};
pub(crate) use stampede_store_sql::{sale_cols, user_cols};
