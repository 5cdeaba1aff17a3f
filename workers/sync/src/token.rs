//! Sync tokens: opaque to clients, `g1_e{events}.a{account_data}`: one part per stream. A part a
//! token lacks (a token from before that stream existed) reads as 0; parts this build does not know
//! are skipped, so tokens survive rolling upgrades both ways.

use std::fmt;
use std::str::FromStr;

/// The positions a client has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncToken {
    /// Position on the `events` stream.
    pub events: u64,
    /// Position on the `account_data` stream.
    pub account_data: u64,
}

impl fmt::Display for SyncToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g1_e{}.a{}", self.events, self.account_data)
    }
}

/// A token that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidToken;

impl FromStr for SyncToken {
    type Err = InvalidToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("g1_").ok_or(InvalidToken)?;
        let mut events = None;
        let mut account_data = 0;
        for part in rest.split('.') {
            // Unknown parts come from newer instances during a rolling upgrade: skip them.
            if let Some(p) = part.strip_prefix('e') {
                events = Some(p.parse().map_err(|_| InvalidToken)?);
            } else if let Some(p) = part.strip_prefix('a') {
                account_data = p.parse().map_err(|_| InvalidToken)?;
            }
        }
        Ok(Self { events: events.ok_or(InvalidToken)?, account_data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let t = SyncToken { events: 42, account_data: 3 };
        assert_eq!(t.to_string(), "g1_e42.a3");
        assert_eq!("g1_e42.a3".parse::<SyncToken>(), Ok(t));
        assert_eq!("g1_e42.a3.x7".parse::<SyncToken>(), Ok(t), "unknown parts are skipped");
        assert_eq!(
            "g1_e42".parse::<SyncToken>(),
            Ok(SyncToken { events: 42, account_data: 0 }),
            "missing parts read as 0"
        );
        for bad in ["", "s72594_4483_1934", "g1_", "g1_eNaN", "g2_e1", "g1_x5", "g1_e1.aX"] {
            assert_eq!(bad.parse::<SyncToken>(), Err(InvalidToken), "{bad}");
        }
    }
}
