//! A persistent data unit: a room event as it lives in the DAG, with ruma's `Event` trait so the
//! auth rules and state resolution can read it.

use std::collections::HashMap;

use ruma::events::TimelineEventType;
use ruma::{
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A room's state: (event type, state key) → the PDU holding it.
pub type StateMap = HashMap<(String, String), Pdu>;

/// A PDU that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid pdu: {0}")]
pub struct PduError(pub String);

/// A room event with the fields auth and state resolution need, and its full JSON.
#[derive(Debug, Clone)]
pub struct Pdu {
    /// The event ID.
    pub event_id: OwnedEventId,
    /// The room; `None` only for a room v12 `m.room.create`, whose ID is derived from the event.
    pub room_id: Option<OwnedRoomId>,
    /// The sender.
    pub sender: OwnedUserId,
    /// `origin_server_ts`.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// `type`.
    pub event_type: TimelineEventType,
    /// `content`.
    pub content: Box<RawValue>,
    /// `state_key`.
    pub state_key: Option<String>,
    /// `prev_events`.
    pub prev_events: Vec<OwnedEventId>,
    /// `auth_events`.
    pub auth_events: Vec<OwnedEventId>,
    /// `redacts` (top level before v11, in content from v11).
    pub redacts: Option<OwnedEventId>,
    /// `depth`.
    pub depth: UInt,
    /// Whether the event was rejected by the auth rules.
    pub rejected: bool,
    /// The full event JSON (with hashes and signatures; without `event_id` from room v3 on).
    pub json: String,
}

#[derive(Deserialize)]
struct Fields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    event_type: TimelineEventType,
    content: Box<RawValue>,
    state_key: Option<String>,
    #[serde(default)]
    prev_events: Vec<serde_json::Value>,
    #[serde(default)]
    auth_events: Vec<serde_json::Value>,
    redacts: Option<OwnedEventId>,
    depth: UInt,
}

#[derive(Deserialize)]
struct RedactsInContent {
    redacts: Option<OwnedEventId>,
}

/// Room v1/v2 reference other events as `[event_id, hashes]` pairs; later versions as plain IDs.
fn event_refs(values: Vec<serde_json::Value>) -> Result<Vec<OwnedEventId>, PduError> {
    values
        .into_iter()
        .map(|v| {
            let s = match &v {
                serde_json::Value::String(s) => s.as_str(),
                serde_json::Value::Array(a) => a.first().and_then(|x| x.as_str()).unwrap_or_default(),
                _ => "",
            };
            OwnedEventId::try_from(s).map_err(|e| PduError(format!("bad event reference {v}: {e}")))
        })
        .collect()
}

impl Pdu {
    /// Reads a PDU from its JSON and ID.
    ///
    /// # Errors
    /// When a required field is missing or malformed.
    pub fn from_json(event_id: OwnedEventId, json: &str) -> Result<Self, PduError> {
        let f: Fields = serde_json::from_str(json).map_err(|e| PduError(e.to_string()))?;
        let redacts = match f.redacts {
            Some(r) => Some(r),
            None if f.event_type == TimelineEventType::RoomRedaction => {
                serde_json::from_str::<RedactsInContent>(f.content.get()).ok().and_then(|c| c.redacts)
            }
            None => None,
        };
        Ok(Self {
            event_id,
            room_id: f.room_id,
            sender: f.sender,
            origin_server_ts: f.origin_server_ts,
            event_type: f.event_type,
            content: f.content,
            state_key: f.state_key,
            prev_events: event_refs(f.prev_events)?,
            auth_events: event_refs(f.auth_events)?,
            redacts,
            depth: f.depth,
            rejected: false,
            json: json.to_owned(),
        })
    }

    /// Reads a PDU from a canonical JSON object.
    ///
    /// # Errors
    /// As [`Pdu::from_json`].
    pub fn from_canonical(event_id: OwnedEventId, obj: &CanonicalJsonObject) -> Result<Self, PduError> {
        let json = serde_json::to_string(obj).map_err(|e| PduError(e.to_string()))?;
        Self::from_json(event_id, &json)
    }

    /// The content as a JSON value.
    pub fn content_value(&self) -> serde_json::Value {
        serde_json::from_str(self.content.get()).unwrap_or(serde_json::Value::Null)
    }

    /// `content.membership` of a member event.
    pub fn membership(&self) -> Option<String> {
        if self.event_type != TimelineEventType::RoomMember {
            return None;
        }
        self.content_value().get("membership").and_then(|m| m.as_str()).map(str::to_owned)
    }

    /// Drops `unsigned` from the JSON: what another server writes there is not part of the event
    /// (no hash or signature covers it), and a stored `unsigned` holds only this server's own
    /// notes, such as a redaction's `redacted_because`, which clients are shown.
    pub fn drop_unsigned(&mut self) {
        let Ok(mut obj) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&self.json) else {
            return;
        };
        if obj.remove("unsigned").is_some()
            && let Ok(json) = serde_json::to_string(&obj)
        {
            self.json = json;
        }
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.event_type
    }

    fn content(&self) -> &RawValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        self.rejected
    }
}
