//! The catalog around sales: products a shop reuses across sales, and drops that group several
//! sales (sizes, colours) under one schedule and one per-buyer limit. The sale stays the unit
//! of stock, so nothing here touches the reserve path's shape; a drop adds one more limit the
//! judge checks (see [`crate::judge::judge_drop_limit`]).
//!
//! Search is by words of the name, each query word matching the start of a name word
//! ("air ma" finds "Air Max 90"). [`search_words`] is the one tokenizer, used to build the
//! stores' full-text queries, and [`name_matches`] is the same rule as a plain function: the
//! model the stores' search is tested against.

use serde::{Deserialize, Serialize};

use crate::{Currency, DropId, Money, ProductId, SaleStatus, Timestamp};

/// Whether a product can be put on sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductStatus {
    /// On offer; new sales may reference it.
    Active,
    /// Listed, but the shop has none to sell right now; new sales may still reference it (a
    /// flash sale is often how it comes back).
    OutOfStock,
    /// Retired for good: no new sales may reference it. Existing sales are untouched.
    Discontinued,
}

impl ProductStatus {
    /// The contract's word, also the stored one.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::OutOfStock => "out_of_stock",
            Self::Discontinued => "discontinued",
        }
    }

    /// Parses the contract's word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "out_of_stock" => Some(Self::OutOfStock),
            "discontinued" => Some(Self::Discontinued),
            _ => None,
        }
    }
}

/// A product in the catalog: what a sale sells, described once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: ProductId,
    pub name: String,
    pub description: String,
    /// Free-form, e.g. "sneakers"; filters compare it exactly (case-sensitive).
    pub category: String,
    pub image_urls: Vec<String>,
    /// The everyday price: a sale's percentage discount is taken off it.
    pub regular_price: Money,
    pub currency: Currency,
    pub status: ProductStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A drop: several sales released together, with an optional limit per buyer across all of
/// them ("one pair per person, whatever the size").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropEvent {
    pub id: DropId,
    pub name: String,
    pub description: String,
    pub category: String,
    /// The schedule its sales take unless they are given their own.
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    /// Units one buyer may hold plus own across every sale of the drop; `None`: only each
    /// sale's own limit applies.
    pub per_user_limit: Option<u32>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl DropEvent {
    /// Scheduled before its start, ended from its end, live in between (a drop has no pause:
    /// its sales do).
    pub fn status_at(&self, now: Timestamp) -> SaleStatus {
        if now >= self.ends_at {
            SaleStatus::Ended
        } else if now < self.starts_at {
            SaleStatus::Scheduled
        } else {
            SaleStatus::Live
        }
    }
}

/// Most words a search may have: more add cost, not precision.
pub const MAX_SEARCH_WORDS: usize = 8;

/// Longest word a search keeps (longer ones are cut): no name word is longer in practice.
pub const MAX_SEARCH_WORD_CHARS: usize = 40;

/// The words of a search (or of a name): runs of letters and digits, lower-cased. Everything
/// else separates words, so the result can be put into a full-text query as is, with no
/// operator or quote a client could inject.
pub fn search_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(MAX_SEARCH_WORDS)
        .map(|w| {
            w.chars()
                .take(MAX_SEARCH_WORD_CHARS)
                .flat_map(char::to_lowercase)
                .collect()
        })
        .collect()
}

/// The search rule: every word of the query starts some word of the name. An empty query
/// matches everything.
pub fn name_matches(name: &str, query: &str) -> bool {
    let name_words = search_words_unbounded(name);
    search_words(query)
        .iter()
        .all(|q| name_words.iter().any(|w| w.starts_with(q.as_str())))
}

fn search_words_unbounded(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_letters_and_digits_lower_cased() {
        assert_eq!(search_words("  Air-Max 90!"), vec!["air", "max", "90"]);
        assert_eq!(search_words("\"x\" OR 1=1 --"), vec!["x", "or", "1", "1"]);
        assert!(search_words("*:()&|!'").is_empty());
        assert_eq!(search_words(&"w ".repeat(50)).len(), MAX_SEARCH_WORDS);
    }

    #[test]
    fn every_query_word_must_start_a_name_word() {
        assert!(name_matches("Air Max 90", "air ma"));
        assert!(name_matches("Air Max 90", "90"));
        assert!(name_matches("Air Max 90", ""));
        assert!(!name_matches("Air Max 90", "ir"));
        assert!(!name_matches("Air Max 90", "air jordan"));
    }

    #[test]
    fn status_follows_the_schedule() {
        let d = DropEvent {
            id: DropId::generate(0, 1),
            name: "n".into(),
            description: String::new(),
            category: String::new(),
            starts_at: Timestamp(100),
            ends_at: Timestamp(200),
            per_user_limit: Some(1),
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        };
        assert_eq!(d.status_at(Timestamp(99)), SaleStatus::Scheduled);
        assert_eq!(d.status_at(Timestamp(100)), SaleStatus::Live);
        assert_eq!(d.status_at(Timestamp(200)), SaleStatus::Ended);
    }
}
