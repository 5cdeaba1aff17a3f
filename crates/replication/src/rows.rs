//! Row payloads: the protobuf messages carried in [`StreamRow::payload`](crate::StreamRow).
//!
//! Messages are written by hand with `prost`'s derive rather than generated from `.proto`
//! files, so the crate needs no build script. Rules for changing them (rolling upgrades run
//! old and new consumers side by side):
//! - never reuse or renumber a tag; add new fields with new tags;
//! - bump `version` only when the meaning of an existing field changes;
//! - decoders ignore unknown fields, so adding a field is always safe.
//!
//! The snapshot tests at the bottom pin the encoding; if one fails, the wire format changed.

use bytes::Bytes;
use prost::Message;

use crate::{ReplicationError, StreamName, StreamPosition, StreamRow};

/// A persisted event, published on [`StreamName::Events`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EventRow {
    /// Format version of this row; see [`EventRow::CURRENT_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The event's position on the `events` stream (the same as the [`StreamRow`]'s).
    #[prost(uint64, tag = "2")]
    pub position: u64,
    /// The room the event belongs to.
    #[prost(string, tag = "3")]
    pub room_id: String,
    /// The event's ID.
    #[prost(string, tag = "4")]
    pub event_id: String,
    /// The user who sent the event.
    #[prost(string, tag = "5")]
    pub sender: String,
    /// The event type, e.g. `m.room.message`.
    #[prost(string, tag = "6")]
    pub event_type: String,
    /// The state key, for state events only.
    #[prost(string, optional, tag = "7")]
    pub state_key: Option<String>,
    /// The `membership` of an `m.room.member` event.
    #[prost(string, optional, tag = "8")]
    pub membership: Option<String>,
    /// The full event as canonical JSON.
    #[prost(string, tag = "9")]
    pub event_json: String,
    /// The ID of the request that caused the event, for tracing across processes.
    #[prost(string, tag = "10")]
    pub request_id: String,
}

impl EventRow {
    /// The format version this build writes.
    pub const CURRENT_VERSION: u32 = 1;

    /// Encodes the row as protobuf.
    #[must_use]
    pub fn encode_to_bytes(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }

    /// Decodes a row, ignoring fields this build does not know.
    ///
    /// # Errors
    /// [`ReplicationError::Decode`] if `bytes` is not a valid encoding.
    pub fn decode_bytes(bytes: &[u8]) -> Result<Self, ReplicationError> {
        Ok(Self::decode(bytes)?)
    }

    /// Wraps the encoded row for the bus, at its own position.
    #[must_use]
    pub fn to_stream_row(&self) -> StreamRow {
        StreamRow {
            stream: StreamName::Events,
            position: StreamPosition(self.position),
            payload: self.encode_to_bytes(),
        }
    }
}

/// An account-data write, published on [`StreamName::AccountData`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AccountDataRow {
    /// Format version of this row (1).
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The row's position on the `account_data` stream.
    #[prost(uint64, tag = "2")]
    pub position: u64,
    /// Whose account data.
    #[prost(string, tag = "3")]
    pub user_id: String,
    /// The room, or empty for global account data.
    #[prost(string, tag = "4")]
    pub room_id: String,
    /// The account-data type, e.g. `m.push_rules`.
    #[prost(string, tag = "5")]
    pub data_type: String,
    /// The content, JSON.
    #[prost(string, tag = "6")]
    pub content_json: String,
}

impl AccountDataRow {
    /// Encodes the row for a [`StreamRow`] payload.
    pub fn encode_to_bytes(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }

    /// Decodes a payload.
    ///
    /// # Errors
    /// When the bytes are not an `AccountDataRow`.
    pub fn decode_bytes(bytes: &[u8]) -> Result<Self, ReplicationError> {
        Ok(Self::decode(bytes)?)
    }

    /// The transport row for this account-data write.
    pub fn to_stream_row(&self) -> StreamRow {
        StreamRow {
            stream: StreamName::AccountData,
            position: StreamPosition(self.position),
            payload: self.encode_to_bytes(),
        }
    }
}

/// A thin row naming a user (and device) whose data changed at a position, published on
/// [`StreamName::ToDevice`] and [`StreamName::DeviceLists`]; readers fetch the data itself.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct UserRow {
    /// Format version of this row (1).
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The row's position on its stream.
    #[prost(uint64, tag = "2")]
    pub position: u64,
    /// The user concerned.
    #[prost(string, tag = "3")]
    pub user_id: String,
    /// The device concerned, when the stream is per device.
    #[prost(string, tag = "4")]
    pub device_id: String,
}

impl UserRow {
    /// The transport row for `stream`.
    pub fn to_stream_row(&self, stream: StreamName) -> StreamRow {
        StreamRow { stream, position: StreamPosition(self.position), payload: Bytes::from(self.encode_to_vec()) }
    }

    /// Decodes a payload.
    ///
    /// # Errors
    /// When the bytes are not a `UserRow`.
    pub fn decode_bytes(bytes: &[u8]) -> Result<Self, ReplicationError> {
        Ok(Self::decode(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EventRow {
        EventRow {
            version: EventRow::CURRENT_VERSION,
            position: 300,
            room_id: "!r:x".to_owned(),
            event_id: "$e".to_owned(),
            sender: "@a:x".to_owned(),
            event_type: "m.room.member".to_owned(),
            state_key: Some("@a:x".to_owned()),
            membership: Some("join".to_owned()),
            event_json: "{}".to_owned(),
            request_id: "req1".to_owned(),
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// Pinned encoding of [`sample`]. Changing this literal is a wire-format change: only do it
    /// together with a compatibility plan (see the module docs).
    ///
    /// Field by field: `0801` version 1 · `10ac02` position 300 · `1a04` room_id · `2202`
    /// event_id · `2a04` sender · `320d` event_type · `3a04` state_key · `4204` membership ·
    /// `4a02` event_json · `5204` request_id.
    #[rustfmt::skip]
    const SAMPLE_HEX: &str = concat!(
        "0801",
        "10ac02",
        "1a04", "21723a78",
        "2202", "2465",
        "2a04", "40613a78",
        "320d", "6d2e726f6f6d2e6d656d626572",
        "3a04", "40613a78",
        "4204", "6a6f696e",
        "4a02", "7b7d",
        "5204", "72657131",
    );

    #[test]
    fn event_row_wire_format_is_pinned() {
        assert_eq!(hex(&sample().encode_to_bytes()), SAMPLE_HEX);
        assert_eq!(EventRow::decode_bytes(&unhex(SAMPLE_HEX)).unwrap(), sample());
    }

    #[test]
    fn event_row_absent_options_stay_absent() {
        let row = EventRow { state_key: None, membership: None, ..sample() };
        let decoded = EventRow::decode_bytes(&row.encode_to_bytes()).unwrap();
        assert_eq!(decoded.state_key, None);
        assert_eq!(decoded.membership, None);
        // An empty state key is a real value, distinct from "not a state event".
        let row = EventRow { state_key: Some(String::new()), ..sample() };
        let decoded = EventRow::decode_bytes(&row.encode_to_bytes()).unwrap();
        assert_eq!(decoded.state_key.as_deref(), Some(""));
    }

    #[test]
    fn event_row_tolerates_unknown_fields() {
        let mut bytes = sample().encode_to_bytes().to_vec();
        // Field 99, wire type 2 (length-delimited), 3 bytes: what a newer writer might add.
        bytes.extend_from_slice(&[0x9a, 0x06, 0x03, b'n', b'e', b'w']);
        // Field 100, varint.
        bytes.extend_from_slice(&[0xa0, 0x06, 0x2a]);
        assert_eq!(EventRow::decode_bytes(&bytes).unwrap(), sample());
    }

    #[test]
    fn event_row_rejects_garbage() {
        assert!(matches!(EventRow::decode_bytes(&[0x1a, 0x05, b'a']), Err(ReplicationError::Decode(_))));
    }

    #[test]
    fn to_stream_row_uses_the_row_position() {
        let row = sample().to_stream_row();
        assert_eq!(row.stream, StreamName::Events);
        assert_eq!(row.position, StreamPosition(300));
        assert_eq!(EventRow::decode_bytes(&row.payload).unwrap(), sample());
    }
}
