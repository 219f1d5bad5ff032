//! Identifier newtypes. Each is a ULID in its canonical 26-character text form: sortable by
//! creation time (useful for paging and FIFO), unguessable enough not to be enumerated, and the
//! same text in every store. Parsing rejects anything else, so a malformed id from a client is
//! simply "not found" and never reaches a query.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh id whose time part is `at_ms` (from the caller's clock) and whose random
            /// part comes from `random` (from the caller's RNG), so simulations are reproducible.
            pub fn generate(at_ms: i64, random: u128) -> Self {
                let ms = u64::try_from(at_ms).unwrap_or(0);
                Self(ulid::Ulid::from_parts(ms, random).to_string())
            }

            /// Accepts only a canonical ULID; anything else is `None`.
            pub fn parse(s: &str) -> Option<Self> {
                ulid::Ulid::from_string(s).ok().map(|u| Self(u.to_string()))
            }

            /// Wraps a value read back from our own store, which only ever holds valid ids.
            pub fn from_trusted(s: String) -> Self {
                Self(s)
            }

            /// The text form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A buyer or an admin.
    UserId
);
id_type!(
    /// One sale: one SKU, the unit of stock. Key of every stock structure.
    SaleId
);
id_type!(
    /// One reservation of units of a sale for a buyer.
    HoldId
);
id_type!(
    /// One order (a checkout attempt over some holds).
    OrderId
);
id_type!(
    /// One payment attempt of an order.
    PaymentId
);
id_type!(
    /// A product in the catalog, reused across sales.
    ProductId
);
id_type!(
    /// A drop: several sales (sizes, colours) under one schedule and one per-buyer limit.
    DropId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_only_ulids() {
        let id = SaleId::generate(1_700_000_000_000, 42);
        assert_eq!(SaleId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(SaleId::parse("not-an-id"), None);
        assert_eq!(SaleId::parse(""), None);
        assert_eq!(SaleId::parse("../../etc/passwd"), None);
    }
}
