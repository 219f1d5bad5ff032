//! The stock of one sale as four counters, and the first invariant over them.

use serde::{Deserialize, Serialize};

/// Units of one sale by where they are. Signed so that a bug shows up as a negative number
/// the check can catch, rather than wrapping around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StockLevels {
    /// Units the sale started with (changed only by an admin before the start).
    pub total: i64,
    /// Units nobody holds or owns: what can still be reserved.
    pub available: i64,
    /// Units in live holds (reserved, not yet paid).
    pub held: i64,
    /// Units in confirmed orders.
    pub sold: i64,
}

/// A broken stock invariant: always a bug, reported by metrics and checks, never by a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantViolation {
    #[error("available {available} + held {held} + sold {sold} != total {total}")]
    Unbalanced {
        total: i64,
        available: i64,
        held: i64,
        sold: i64,
    },
    #[error("negative {term}: {value}")]
    Negative { term: &'static str, value: i64 },
    #[error("user holds or owns {units} units, above the limit of {limit}")]
    OverUserLimit { units: i64, limit: i64 },
}

impl StockLevels {
    /// A fresh sale: everything available.
    pub fn fresh(total: i64) -> Self {
        Self {
            total,
            available: total,
            held: 0,
            sold: 0,
        }
    }

    /// Invariant 1: `available + held + sold == total`, each term `>= 0`.
    pub fn check(&self) -> Result<(), InvariantViolation> {
        for (term, value) in [
            ("total", self.total),
            ("available", self.available),
            ("held", self.held),
            ("sold", self.sold),
        ] {
            if value < 0 {
                return Err(InvariantViolation::Negative { term, value });
            }
        }
        if self.available + self.held + self.sold != self.total {
            return Err(InvariantViolation::Unbalanced {
                total: self.total,
                available: self.available,
                held: self.held,
                sold: self.sold,
            });
        }
        Ok(())
    }

    /// `qty` units move from available to held.
    pub fn reserve(&mut self, qty: i64) {
        self.available -= qty;
        self.held += qty;
        debug_assert!(self.check().is_ok(), "reserve broke stock: {self:?}");
    }

    /// `qty` held units go back to available (release or expiry).
    pub fn unhold(&mut self, qty: i64) {
        self.held -= qty;
        self.available += qty;
        debug_assert!(self.check().is_ok(), "unhold broke stock: {self:?}");
    }

    /// `qty` held units are paid for.
    pub fn sell(&mut self, qty: i64) {
        self.held -= qty;
        self.sold += qty;
        debug_assert!(self.check().is_ok(), "sell broke stock: {self:?}");
    }

    /// `qty` sold units are refunded and can be sold again.
    pub fn refund(&mut self, qty: i64) {
        self.sold -= qty;
        self.available += qty;
        debug_assert!(self.check().is_ok(), "refund broke stock: {self:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_catches_imbalance_and_negatives() {
        assert!(StockLevels::fresh(10).check().is_ok());
        let bad = StockLevels {
            total: 10,
            available: 9,
            held: 0,
            sold: 0,
        };
        assert!(matches!(
            bad.check(),
            Err(InvariantViolation::Unbalanced { .. })
        ));
        let neg = StockLevels {
            total: 10,
            available: -1,
            held: 11,
            sold: 0,
        };
        assert!(matches!(
            neg.check(),
            Err(InvariantViolation::Negative { .. })
        ));
    }
}
