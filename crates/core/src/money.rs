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
}
