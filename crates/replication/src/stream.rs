//! Stream names, positions and the transport-level row.

use std::{fmt, str::FromStr};

use bytes::Bytes;

use crate::ReplicationError;

/// A position on one named stream.
///
/// The writer (`main`) allocates positions per stream, contiguous and increasing from 1; `0`
/// means "before the first row", so it is the position a new consumer starts after.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamPosition(pub u64);

impl StreamPosition {
    /// The position right after this one.
    ///
    /// Saturates at `u64::MAX`, which no writer will ever reach.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Declares [`StreamName`] from one list, so a new stream is one line here.
macro_rules! stream_names {
    ($( $(#[$meta:meta])* $variant:ident => $name:literal, )+) => {
        /// A named replication stream; each has its own positions.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum StreamName {
            $( $(#[$meta])* $variant, )+
        }

        impl StreamName {
            /// Every stream, in declaration order.
            pub const ALL: &'static [StreamName] = &[$(StreamName::$variant),+];

            /// The stream's wire name, used in Redis keys, logs and configuration.
            #[must_use]
            pub fn as_str(&self) -> &'static str {
                match self {
                    $( StreamName::$variant => $name, )+
                }
            }
        }

        impl FromStr for StreamName {
            type Err = ReplicationError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $name => Ok(StreamName::$variant), )+
                    _ => Err(ReplicationError::UnknownStream(s.to_owned())),
                }
            }
        }
    };
}

stream_names! {
    /// Persisted room events, payload [`EventRow`](crate::EventRow).
    Events => "events",
    /// Cache invalidations.
    Caches => "caches",
    /// Users' global and per-room account data, payload [`AccountDataRow`](crate::AccountDataRow).
    AccountData => "account_data",
    /// To-device messages, payload [`UserRow`](crate::UserRow) naming the recipient device.
    ToDevice => "to_device",
    /// Changes to a user's devices or keys, payload [`UserRow`](crate::UserRow).
    DeviceLists => "device_lists",
    /// Read receipts, payload [`UserRow`](crate::UserRow) (user, and the room in `device_id`).
    Receipts => "receipts",
    /// Typing notifications, payload [`UserRow`](crate::UserRow) (the room in `device_id`).
    Typing => "typing",
    /// Presence changes, payload [`UserRow`](crate::UserRow).
    Presence => "presence",
    /// Changes to a user's pushers, payload [`UserRow`](crate::UserRow).
    Pushers => "pushers",
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row on a stream as the transport carries it: where it belongs and its encoded payload.
///
/// The payload is a protobuf message whose type depends on the stream (for example
/// [`EventRow`](crate::EventRow) on [`StreamName::Events`]); the transport never looks inside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRow {
    /// The stream the row belongs to.
    pub stream: StreamName,
    /// The row's position on that stream.
    pub position: StreamPosition,
    /// The encoded row.
    pub payload: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_round_trip() {
        for name in StreamName::ALL {
            assert_eq!(name.as_str().parse::<StreamName>().unwrap(), *name);
            assert_eq!(name.to_string(), name.as_str());
        }
        assert_eq!(StreamName::Events.as_str(), "events");
        assert_eq!(StreamName::Caches.as_str(), "caches");
        assert!(matches!(
            "nope".parse::<StreamName>(),
            Err(ReplicationError::UnknownStream(s)) if s == "nope"
        ));
    }

    #[test]
    fn positions_order_and_display() {
        assert_eq!(StreamPosition::default(), StreamPosition(0));
        assert!(StreamPosition(2) > StreamPosition(1));
        assert_eq!(StreamPosition(41).next(), StreamPosition(42));
        assert_eq!(StreamPosition(u64::MAX).next(), StreamPosition(u64::MAX));
        assert_eq!(StreamPosition(7).to_string(), "7");
    }
}
