//! Money in minor units (cents) of a currency, never a float. Clients see a decimal string
//! ("19.99"); this module is the one place that converts between the two.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// Why a price or currency from a client was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency must be a three-letter ISO 4217 code such as \"EUR\"")]
    BadCurrency,
    #[error("amount must be a decimal string such as \"19.99\"")]
    NotDecimal,
    #[error("amount must not be negative")]
    Negative,
    #[error("amount has more decimal places than {currency} allows ({places})")]
    TooPrecise { currency: String, places: u32 },
    #[error("amount is too large")]
    TooLarge,
}

/// An ISO 4217 code, upper case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Currency(String);

impl Currency {
    /// Parses a three-letter code (case-insensitive on input, stored upper case).
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        if code.len() == 3 && code.chars().all(|c| c.is_ascii_alphabetic()) {
            Ok(Self(code.to_ascii_uppercase()))
        } else {
            Err(MoneyError::BadCurrency)
        }
    }

    /// Wraps a code read back from our own store.
    pub fn from_trusted(code: String) -> Self {
        Self(code)
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Decimal places of the minor unit. Zero-decimal currencies are listed; the rest use two.
    pub fn minor_places(&self) -> u32 {
        match self.0.as_str() {
            "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" | "XAF" | "XOF" | "PYG" => 0,
            _ => 2,
        }
    }
}

/// An amount in minor units. Non-negative by construction from client input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Money(pub i64);

/// The largest amount accepted from a client, in minor units: far above any real price, far
/// below where sums of many line items could overflow an `i64`.
const MAX_MINOR: i64 = 1_000_000_000_000;

impl Money {
    /// The price after `percent` off, in minor units. The one rounding rule: the discount is
    /// `price × percent / 100` rounded *down* to the minor unit, and the price is what is
    /// left. So the buyer pays at most one minor unit more than the exact figure, never less,
    /// and 0% or 100% off are exact. `None` for a percentage outside 0..=100.
    pub fn percent_off(self, percent: u32) -> Option<Money> {
        if percent > 100 || self.0 < 0 {
            return None;
        }
        let discount = i128::from(self.0) * i128::from(percent) / 100;
        i64::try_from(i128::from(self.0) - discount).ok().map(Money)
    }

    /// Parses a client's decimal string in `currency`. Refuses floats-in-disguise like "1e3",
    /// negatives, and more decimals than the currency has (no silent rounding of prices).
    pub fn parse(text: &str, currency: &Currency) -> Result<Self, MoneyError> {
        let text = text.trim();
        if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(if text.starts_with('-') {
                MoneyError::Negative
            } else {
                MoneyError::NotDecimal
            });
        }
        let dec = Decimal::from_str(text).map_err(|_| MoneyError::NotDecimal)?;
        let places = currency.minor_places();
        if dec.normalize().scale() > places {
            return Err(MoneyError::TooPrecise {
                currency: currency.as_str().to_owned(),
                places,
            });
        }
        let scaled = dec
            .checked_mul(Decimal::from(10_i64.pow(places)))
            .ok_or(MoneyError::TooLarge)?;
        let minor = i64::try_from(scaled.trunc()).map_err(|_| MoneyError::TooLarge)?;
        if minor > MAX_MINOR {
            return Err(MoneyError::TooLarge);
        }
        Ok(Money(minor))
    }

    /// The decimal string clients see, with exactly the currency's number of places.
    pub fn format(self, currency: &Currency) -> String {
        let places = currency.minor_places();
        Decimal::new(self.0, places).to_string()
    }

    /// This amount times a quantity; saturates (amounts are capped far below overflow).
    pub fn times(self, qty: u32) -> Money {
        Money(self.0.saturating_mul(i64::from(qty)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn eur() -> Currency {
        Currency::parse("eur").unwrap()
    }

    #[test]
    fn parses_and_formats_decimal_strings() {
        assert_eq!(Money::parse("19.99", &eur()), Ok(Money(1999)));
        assert_eq!(Money::parse("20", &eur()), Ok(Money(2000)));
        assert_eq!(Money::parse("0.5", &eur()), Ok(Money(50)));
        assert_eq!(Money(1999).format(&eur()), "19.99");
        assert_eq!(Money(5).format(&eur()), "0.05");
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(Money::parse("1500", &jpy), Ok(Money(1500)));
        assert_eq!(Money(1500).format(&jpy), "1500");
    }

    #[test]
    fn refuses_what_is_not_a_price() {
        assert_eq!(Money::parse("-1.00", &eur()), Err(MoneyError::Negative));
        assert_eq!(Money::parse("1e3", &eur()), Err(MoneyError::NotDecimal));
        assert_eq!(Money::parse("abc", &eur()), Err(MoneyError::NotDecimal));
        assert!(matches!(
            Money::parse("1.999", &eur()),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert_eq!(
            Money::parse("99999999999999999999", &eur()),
            Err(MoneyError::TooLarge)
        );
        assert_eq!(Currency::parse("EU"), Err(MoneyError::BadCurrency));
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(minor in 0_i64..MAX_MINOR) {
            let c = eur();
            prop_assert_eq!(Money::parse(&Money(minor).format(&c), &c), Ok(Money(minor)));
        }
    }

    proptest::proptest! {
        /// The price shown for a percentage off is the rule's, within one minor unit above the
        /// exact figure, never below it, never negative, never above the original.
        #[test]
        fn percent_off_follows_the_one_rounding_rule(price in 0i64..=1_000_000_000_000, percent in 0u32..=100) {
            let sale = Money(price).percent_off(percent).unwrap();
            let exact_times_100 = i128::from(price) * i128::from(100 - percent);
            let got_times_100 = i128::from(sale.0) * 100;
            proptest::prop_assert!(got_times_100 >= exact_times_100);
            proptest::prop_assert!(got_times_100 - exact_times_100 < 100);
            proptest::prop_assert!(sale.0 >= 0 && sale.0 <= price);
            proptest::prop_assert_eq!(sale.0, price - price * i64::from(percent) / 100);
        }
    }

    #[test]
    fn percent_off_edges() {
        assert_eq!(Money(1000).percent_off(0), Some(Money(1000)));
        assert_eq!(Money(1000).percent_off(100), Some(Money(0)));
        assert_eq!(
            Money(999).percent_off(33),
            Some(Money(670)),
            "329.67 off rounds down to 329"
        );
        assert_eq!(
            Money(1).percent_off(50),
            Some(Money(1)),
            "half a cent off is no cent off"
        );
        assert_eq!(Money(1000).percent_off(101), None);
    }
}
