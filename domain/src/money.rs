//! Money: integer pico-credits, never floating point.
//!
//! One credit is 10^12 pico-credits. That scale is chosen so that any price written
//! with up to 6 decimals per million tokens is a whole number of pico-credits per
//! token (`0.000001` credits / 1M tokens = 1 pico-credit / token), so the ledger
//! multiplies integers and never rounds. Rounding happens only when a figure is
//! presented, and the API presents exact decimal strings (see docs/money.md).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::{Add, Neg, Sub};

/// Pico-credits in one credit.
pub const PICO_PER_CREDIT: i128 = 1_000_000_000_000;
/// Decimal places of a credit amount that the ledger represents exactly.
pub const CREDIT_DECIMALS: usize = 12;
/// Decimal places of a per-million-token price that are exact per token.
pub const PRICE_DECIMALS: usize = 6;
/// Largest single amount accepted from outside (10^15 credits): keeps every sum far
/// inside i128 while being absurdly more than any real grant.
pub const MAX_AMOUNT_CREDITS: i128 = 1_000_000_000_000_000;
/// Largest price accepted, in credits per million tokens.
pub const MAX_PRICE_PER_MTOK_CREDITS: i128 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error(
        "{0:?} is not a decimal number (expected digits with an optional fraction, e.g. \"12.5\")"
    )]
    NotADecimal(String),
    #[error("{value:?} has more than {max_decimals} decimal places, which is not exact at the ledger's scale")]
    TooPrecise { value: String, max_decimals: usize },
    #[error("{0:?} is out of range")]
    OutOfRange(String),
    #[error("amount must be greater than zero")]
    NotPositive,
}

/// Parses a non-negative decimal string into an integer scaled by 10^decimals.
fn parse_scaled(raw: &str, decimals: usize, max_whole: i128) -> Result<i128, MoneyError> {
    let s = raw.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits_ok(whole)
        || !digits_ok(frac)
        || (s.contains('.') && frac.is_empty())
    {
        return Err(MoneyError::NotADecimal(raw.to_string()));
    }
    let frac_trimmed = frac.trim_end_matches('0');
    if frac_trimmed.len() > decimals {
        return Err(MoneyError::TooPrecise {
            value: raw.to_string(),
            max_decimals: decimals,
        });
    }
    let whole_trimmed = whole.trim_start_matches('0');
    if whole_trimmed.len() > 20 {
        return Err(MoneyError::OutOfRange(raw.to_string()));
    }
    let whole_value: i128 = if whole_trimmed.is_empty() {
        0
    } else {
        whole_trimmed
            .parse()
            .map_err(|_| MoneyError::NotADecimal(raw.to_string()))?
    };
    if whole_value > max_whole {
        return Err(MoneyError::OutOfRange(raw.to_string()));
    }
    let mut frac_value: i128 = 0;
    for i in 0..decimals {
        let digit = frac_trimmed
            .as_bytes()
            .get(i)
            .map(|b| (b - b'0') as i128)
            .unwrap_or(0);
        frac_value = frac_value * 10 + digit;
    }
    Ok(whole_value * 10i128.pow(decimals as u32) + frac_value)
}

/// Formats `value / 10^decimals` exactly, without trailing zeros.
fn format_scaled(value: i128, decimals: usize) -> String {
    let scale = 10i128.pow(decimals as u32);
    let sign = if value < 0 { "-" } else { "" };
    let abs = value.unsigned_abs();
    let whole = abs / scale as u128;
    let frac = abs % scale as u128;
    if frac == 0 {
        return format!("{sign}{whole}");
    }
    let frac = format!("{frac:0width$}", width = decimals);
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

/// An amount of credit, exact, in pico-credits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Credits(i128);

impl Credits {
    pub const ZERO: Credits = Credits(0);

    pub const fn from_pico(pico: i128) -> Self {
        Self(pico)
    }

    pub const fn pico(self) -> i128 {
        self.0
    }

    pub const fn from_whole_credits(credits: i64) -> Self {
        Self(credits as i128 * PICO_PER_CREDIT)
    }

    /// Parses a non-negative amount of credits written as a decimal string (`"12.5"`).
    pub fn parse(raw: &str) -> Result<Self, MoneyError> {
        parse_scaled(raw, CREDIT_DECIMALS, MAX_AMOUNT_CREDITS).map(Self)
    }

    /// Parses a strictly positive amount (grants, top-ups).
    pub fn parse_positive(raw: &str) -> Result<Self, MoneyError> {
        let amount = Self::parse(raw)?;
        if amount.0 <= 0 {
            return Err(MoneyError::NotPositive);
        }
        Ok(amount)
    }

    /// The exact decimal string in credits, e.g. `"0.00015"`. No rounding happens:
    /// every pico-credit is shown.
    pub fn to_decimal_string(self) -> String {
        format_scaled(self.0, CREDIT_DECIMALS)
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub fn max(self, other: Self) -> Self {
        Self(self.0.max(other.0))
    }

    pub fn min(self, other: Self) -> Self {
        Self(self.0.min(other.0))
    }
}

impl Add for Credits {
    type Output = Credits;
    fn add(self, rhs: Self) -> Self {
        Credits(
            self.0
                .checked_add(rhs.0)
                .expect("credit sum overflow: amounts are bounded far below i128"),
        )
    }
}

impl Sub for Credits {
    type Output = Credits;
    fn sub(self, rhs: Self) -> Self {
        Credits(
            self.0
                .checked_sub(rhs.0)
                .expect("credit difference overflow: amounts are bounded far below i128"),
        )
    }
}

impl Neg for Credits {
    type Output = Credits;
    fn neg(self) -> Self {
        Credits(-self.0)
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_decimal_string())
    }
}

/// Stored and exchanged as a string of whole pico-credits, since JSON numbers lose
/// precision past 2^53 in most readers.
impl Serialize for Credits {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Credits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse::<i128>()
            .map(Credits)
            .map_err(serde::de::Error::custom)
    }
}

/// A price per token, in pico-credits per token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(i128);

impl Rate {
    pub const fn from_pico_per_token(pico: i128) -> Self {
        Self(pico)
    }

    pub const fn pico_per_token(self) -> i128 {
        self.0
    }

    /// Parses a price written in credits per million tokens (`"0.15"`); more than 6
    /// decimals would not be a whole number of pico-credits per token and is refused.
    pub fn parse_per_million(raw: &str) -> Result<Self, MoneyError> {
        // credits/Mtok * 10^12 pico/credit / 10^6 tok/Mtok = value * 10^6 pico/token.
        parse_scaled(raw, PRICE_DECIMALS, MAX_PRICE_PER_MTOK_CREDITS).map(Self)
    }

    /// The price as a decimal string in credits per million tokens.
    pub fn to_per_million_string(self) -> String {
        format_scaled(self.0, PRICE_DECIMALS)
    }

    /// The price of `tokens` tokens. Exact: integer times integer.
    pub fn cost_of(self, tokens: u64) -> Credits {
        Credits(
            self.0
                .checked_mul(tokens as i128)
                .expect("rate * tokens overflow: both are bounded"),
        )
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse::<i128>()
            .map(Rate)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_parse_and_print_exactly() {
        assert_eq!(Credits::parse("12.5").unwrap().pico(), 12_500_000_000_000);
        assert_eq!(Credits::parse("0.000000000001").unwrap().pico(), 1);
        assert_eq!(
            Credits::parse("007").unwrap(),
            Credits::from_whole_credits(7)
        );
        assert_eq!(
            Credits::from_pico(150_000_000).to_decimal_string(),
            "0.00015"
        );
        assert_eq!(
            Credits::from_pico(-1).to_decimal_string(),
            "-0.000000000001"
        );
        assert_eq!(Credits::ZERO.to_decimal_string(), "0");
        assert_eq!(Credits::from_whole_credits(3).to_decimal_string(), "3");
    }

    #[test]
    fn credits_refuse_what_is_not_exact_or_not_a_number() {
        assert!(matches!(
            Credits::parse("0.0000000000001"),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert_eq!(
            Credits::parse("1.5000000000000000").unwrap().pico(),
            1_500_000_000_000
        );
        for bad in ["", "-1", "1e3", "1.", ".5", "abc", "1,5", "NaN"] {
            assert!(
                matches!(Credits::parse(bad), Err(MoneyError::NotADecimal(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Credits::parse("1000000000000001"),
            Err(MoneyError::OutOfRange(_))
        ));
        assert_eq!(Credits::parse_positive("0"), Err(MoneyError::NotPositive));
    }

    #[test]
    fn prices_per_million_are_whole_pico_per_token() {
        let rate = Rate::parse_per_million("0.15").unwrap();
        assert_eq!(rate.pico_per_token(), 150_000);
        assert_eq!(rate.to_per_million_string(), "0.15");
        assert_eq!(
            Rate::parse_per_million("0.000001")
                .unwrap()
                .pico_per_token(),
            1
        );
        assert!(matches!(
            Rate::parse_per_million("0.0000001"),
            Err(MoneyError::TooPrecise { .. })
        ));
        // 1000 tokens at 0.15 credits per million tokens = 0.00015 credits.
        assert_eq!(rate.cost_of(1000).to_decimal_string(), "0.00015");
    }

    #[test]
    fn money_serializes_as_whole_pico_strings() {
        let c = Credits::parse("1.25").unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, "\"1250000000000\"");
        assert_eq!(serde_json::from_str::<Credits>(&json).unwrap(), c);
    }
}
