//! Decoding rows back into domain types: the decoders are the shared ones of
//! `stampede_store_sql::rows`; what is this engine's own is how `holds` joins `orders`.

pub(crate) use stampede_store_sql::rows::{hold_row, order, order_item, order_line, payment, sale};
pub(crate) use stampede_store_sql::{hold_cols, sale_cols};

/// A hold as the adapter sees it: the domain hold plus whether an order is paying for it.
pub(crate) use stampede_core::checkout::FoundHold as HoldRow;

/// The `FROM` clause that goes with [`hold_cols`].
macro_rules! hold_from {
    () => {
        " FROM holds h LEFT JOIN orders o ON o.id = h.order_id "
    };
}
pub(crate) use hold_from;
