//! Sync tokens: the vector of stream positions a client has seen, opaque to clients:
//! `g1_e{events}.a{account_data}.t{to_device}.d{device_lists}.r{receipts}.y{typing}.p{presence}`. A part a token lacks (a token from
//! before that stream existed) reads as 0; parts this build does not know are skipped, so tokens
//! survive rolling upgrades both ways. Lives here, beside the streams, because every role that
//! reads or writes tokens (sync, `/keys/changes` on main) must agree on it.

use std::fmt;
use std::str::FromStr;

/// The positions a client has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncToken {
    /// Position on the `events` stream.
    pub events: u64,
    /// Position on the `account_data` stream.
    pub account_data: u64,
    /// Position on the `to_device` stream.
    pub to_device: u64,
    /// Position on the `device_lists` stream.
    pub device_lists: u64,
    /// Position on the `receipts` stream.
    pub receipts: u64,
    /// Position on the `typing` stream.
    pub typing: u64,
    /// Position on the `presence` stream.
    pub presence: u64,
}

impl SyncToken {
    /// Each stream's position: the further of the two.
    #[must_use]
    pub fn max(self, other: Self) -> Self {
        Self {
            events: self.events.max(other.events),
            account_data: self.account_data.max(other.account_data),
            to_device: self.to_device.max(other.to_device),
            device_lists: self.device_lists.max(other.device_lists),
            receipts: self.receipts.max(other.receipts),
            typing: self.typing.max(other.typing),
            presence: self.presence.max(other.presence),
        }
    }

    /// Whether every stream of `self` has reached `other`'s position.
    pub fn covers(&self, other: &Self) -> bool {
        self.max(*other) == *self
    }
}

impl fmt::Display for SyncToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "g1_e{}.a{}.t{}.d{}.r{}.y{}.p{}",
            self.events,
            self.account_data,
            self.to_device,
            self.device_lists,
            self.receipts,
            self.typing,
            self.presence
        )
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
        let mut t = Self::default();
        for part in rest.split('.') {
            let Some(tag) = part.chars().next() else { return Err(InvalidToken) };
            let value = || part[1..].parse::<u64>().map_err(|_| InvalidToken);
            match tag {
                'e' => events = Some(value()?),
                'a' => t.account_data = value()?,
                't' => t.to_device = value()?,
                'd' => t.device_lists = value()?,
                'r' => t.receipts = value()?,
                'y' => t.typing = value()?,
                'p' => t.presence = value()?,
                // Unknown parts come from newer instances during a rolling upgrade: skip them.
                _ => {}
            }
        }
        t.events = events.ok_or(InvalidToken)?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let t = SyncToken {
            events: 42,
            account_data: 3,
            to_device: 7,
            device_lists: 1,
            receipts: 5,
            typing: 9,
            presence: 2,
        };
        assert_eq!(t.to_string(), "g1_e42.a3.t7.d1.r5.y9.p2");
        assert_eq!("g1_e42.a3.t7.d1.r5.y9.p2".parse::<SyncToken>(), Ok(t));
        assert_eq!("g1_e42.a3.t7.d1.r5.y9.p2.x7".parse::<SyncToken>(), Ok(t), "unknown parts are skipped");
        assert_eq!(
            "g1_e42".parse::<SyncToken>(),
            Ok(SyncToken { events: 42, ..SyncToken::default() }),
            "missing parts read as 0"
        );
        for bad in ["", "s72594_4483_1934", "g1_", "g1_eNaN", "g2_e1", "g1_x5", "g1_e1.aX", "g1_e1..a2"] {
            assert_eq!(bad.parse::<SyncToken>(), Err(InvalidToken), "{bad}");
        }
    }
}
