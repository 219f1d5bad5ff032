//! A sale: one SKU with a fixed stock, a price, a window in time and a per-buyer limit.
//!
//! The status a buyer sees is derived from the clock and the admin's control, never stored, so
//! "scheduled → live → ended" needs no background job and cannot be late.

use serde::{Deserialize, Serialize};

use crate::{Currency, DropId, Money, ProductId, SaleId, StockLevels, Timestamp};

/// What an admin has said about a running sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleControl {
    /// Follows its schedule.
    Running,
    /// Temporarily closed to new reservations; resumable.
    Paused,
    /// Ended early for good.
    Stopped,
}

impl SaleControl {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        }
    }

    /// Parses the stored word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(Self::Running),
            "paused" => Some(Self::Paused),
            "stopped" => Some(Self::Stopped),
            _ => None,
        }
    }
}

/// What a buyer sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    Scheduled,
    Live,
    Paused,
    Ended,
}

impl SaleStatus {
    /// The contract's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Live => "live",
            Self::Paused => "paused",
            Self::Ended => "ended",
        }
    }

    /// Parses the contract's word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "scheduled" => Some(Self::Scheduled),
            "live" => Some(Self::Live),
            "paused" => Some(Self::Paused),
            "ended" => Some(Self::Ended),
            _ => None,
        }
    }
}

/// One sale as stored, with its stock counters as of the read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sale {
    pub id: SaleId,
    pub name: String,
    pub description: String,
    pub original_price: Money,
    pub sale_price: Money,
    pub currency: Currency,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    /// Units one buyer may hold plus own in this sale.
    pub per_user_limit: u32,
    /// Reserving needs an admission token from the waiting room.
    pub queue_required: bool,
    /// How long a hold lasts before its stock returns by itself.
    pub hold_seconds: u32,
    pub control: SaleControl,
    pub stock: StockLevels,
    /// The catalog product this sale sells, if any (its name and description came from it
    /// unless the admin gave the sale its own).
    pub product_id: Option<ProductId>,
    /// The drop this sale is one SKU of, if any. Set at creation and never changed, so the
    /// judges can find a drop's sales before taking their locks.
    pub drop_id: Option<DropId>,
    /// For browsing; the product's unless given. Empty: none.
    pub category: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Sale {
    /// The status at `now`: a stop or the end time ends it; before the start it is scheduled;
    /// a pause shows only while it would otherwise be live.
    pub fn status_at(&self, now: Timestamp) -> SaleStatus {
        if self.control == SaleControl::Stopped || now >= self.ends_at {
            SaleStatus::Ended
        } else if now < self.starts_at {
            SaleStatus::Scheduled
        } else if self.control == SaleControl::Paused {
            SaleStatus::Paused
        } else {
            SaleStatus::Live
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sale(starts: i64, ends: i64, control: SaleControl) -> Sale {
        let eur = Currency::parse("EUR").unwrap();
        Sale {
            id: SaleId::generate(0, 1),
            name: "n".into(),
            description: "d".into(),
            original_price: Money(1000),
            sale_price: Money(200),
            currency: eur,
            starts_at: Timestamp(starts),
            ends_at: Timestamp(ends),
            per_user_limit: 2,
            queue_required: false,
            hold_seconds: 300,
            control,
            stock: StockLevels::fresh(10),
            product_id: None,
            drop_id: None,
            category: String::new(),
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    #[test]
    fn status_follows_clock_and_control() {
        let s = sale(100, 200, SaleControl::Running);
        assert_eq!(s.status_at(Timestamp(99)), SaleStatus::Scheduled);
        assert_eq!(s.status_at(Timestamp(100)), SaleStatus::Live);
        assert_eq!(s.status_at(Timestamp(200)), SaleStatus::Ended);
        let p = sale(100, 200, SaleControl::Paused);
        assert_eq!(p.status_at(Timestamp(50)), SaleStatus::Scheduled);
        assert_eq!(p.status_at(Timestamp(150)), SaleStatus::Paused);
        let st = sale(100, 200, SaleControl::Stopped);
        assert_eq!(st.status_at(Timestamp(50)), SaleStatus::Ended);
    }
}
