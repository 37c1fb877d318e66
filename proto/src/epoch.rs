//! Epoch numbers.
//!
//! An epoch is the interval between two checkpoints. Epoch numbers are `u64`, strictly
//! increasing over the life of a protected VM, and appear on every control and wire message so
//! that a late or duplicated message can always be recognised as such.

use std::fmt;
use std::str::FromStr;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    pub const ZERO: Epoch = Epoch(0);

    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an epoch number (expected a decimal u64): {0:?}")]
pub struct ParseEpochError(pub String);

impl FromStr for Epoch {
    type Err = ParseEpochError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only plain decimal digits: "+5", " 5" or "0x5" are rejected so that the shell protocol
        // has exactly one spelling per epoch.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseEpochError(s.to_string()));
        }
        s.parse::<u64>()
            .map(Epoch)
            .map_err(|_| ParseEpochError(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_decimal_only() {
        assert_eq!("42".parse::<Epoch>(), Ok(Epoch(42)));
        assert_eq!("18446744073709551615".parse::<Epoch>(), Ok(Epoch(u64::MAX)));
        for bad in [
            "",
            "-1",
            "+1",
            "0x10",
            " 1",
            "1 ",
            "18446744073709551616",
            "1e3",
        ] {
            assert!(bad.parse::<Epoch>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn next_saturates() {
        assert_eq!(Epoch(1).next(), Epoch(2));
        assert_eq!(Epoch(u64::MAX).next(), Epoch(u64::MAX));
    }
}
