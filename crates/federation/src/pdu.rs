//! Checks on a PDU from another server before anything else looks at it (server-server API,
//! "Checks performed on receipt of a PDU", steps 1 to 3): a valid event for its room version,
//! signed by the servers that must sign it, and with a content hash that matches (an event whose
//! hash does not match is kept in its redacted form, as the spec says).

use ruma::canonical_json::redact;
use ruma::room_version_rules::{EventIdFormatVersion, RoomVersionRules};
use ruma::signatures::{PublicKeyMap, Verified};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomVersionId};

use crate::KeyFetcher;

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

/// A PDU that passed the checks.
#[derive(Debug, Clone)]
pub struct CheckedPdu {
    /// Its ID (computed from the reference hash from room v3; carried in the event before).
    pub event_id: OwnedEventId,
    /// Its room.
    pub room_id: OwnedRoomId,
    /// The event as it is to be stored: without `unsigned`, and redacted when its content hash
    /// did not match.
    pub object: CanonicalJsonObject,
    /// Whether its content hash did not match (so `object` is the redacted form).
    pub redacted: bool,
}

impl CheckedPdu {
    /// The event as JSON.
    pub fn json(&self) -> String {
        serde_json::to_string(&self.object).unwrap_or_default()
    }
}

/// Why a PDU was dropped.
#[derive(Debug, thiserror::Error)]
pub enum PduCheckError {
    /// Not a valid event for the room version.
    #[error("invalid event: {0}")]
    Malformed(String),
    /// A required signature is missing or does not verify, or the signing key is unknown.
    #[error("bad signature: {0}")]
    Signature(String),
}

/// The ID of an event under `rules`: its reference hash from room v3, its `event_id` field before.
///
/// # Errors
/// When the event has no usable ID.
pub fn event_id_of(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId, PduCheckError> {
    let id = match rules.event_id_format {
        EventIdFormatVersion::V1 => match object.get("event_id") {
            Some(CanonicalJsonValue::String(s)) => s.clone(),
            _ => return Err(PduCheckError::Malformed("event_id is required in this room version".into())),
        },
        _ => {
            let hash = ruma::signatures::reference_hash(object, rules)
                .map_err(|e| PduCheckError::Malformed(format!("reference hash: {e}")))?;
            format!("${hash}")
        }
    };
    OwnedEventId::try_from(id).map_err(|e| PduCheckError::Malformed(format!("event_id: {e}")))
}

/// Parses and checks a PDU of a room of `version`: format (with the size limit), the required
/// signatures (keys fetched through `keys`), and the content hash.
///
/// # Errors
/// [`PduCheckError`] when the PDU is to be dropped.
pub async fn check_pdu(keys: &KeyFetcher, version: &RoomVersionId, raw: &str) -> Result<CheckedPdu, PduCheckError> {
    check_pdu_signed_by(keys, version, raw, None).await
}

/// [`check_pdu`], and the PDU must carry a good signature of `also` besides: an invite comes
/// back from the invitee's server countersigned by it.
///
/// # Errors
/// [`PduCheckError`] when the PDU is to be dropped.
pub async fn check_pdu_signed_by(
    keys: &KeyFetcher,
    version: &RoomVersionId,
    raw: &str,
    also: Option<&ruma::ServerName>,
) -> Result<CheckedPdu, PduCheckError> {
    let rules =
        version.rules().ok_or_else(|| PduCheckError::Malformed(format!("unsupported room version {version}")))?;
    if raw.len() > MAX_PDU_BYTES {
        return Err(PduCheckError::Malformed("over 65536 bytes".into()));
    }
    let mut object: CanonicalJsonObject =
        serde_json::from_str(raw).map_err(|e| PduCheckError::Malformed(format!("not canonical JSON: {e}")))?;
    object.remove("unsigned");
    let event_id = event_id_of(&object, &rules)?;
    let room_id = match object.get("room_id") {
        Some(CanonicalJsonValue::String(s)) => {
            OwnedRoomId::try_from(s.as_str()).map_err(|e| PduCheckError::Malformed(format!("room_id: {e}")))?
        }
        // From room v12 the create event names no room: the room's ID is derived from it.
        None if rules.authorization.room_create_event_id_as_room_id
            && matches!(object.get("type"), Some(CanonicalJsonValue::String(t)) if t == "m.room.create") =>
        {
            OwnedRoomId::try_from(format!("!{}", &event_id.as_str()[1..]))
                .map_err(|e| PduCheckError::Malformed(format!("room_id: {e}")))?
        }
        _ => return Err(PduCheckError::Malformed("room_id is required".into())),
    };
    // The fields the auth rules read must be there and well typed.
    ganglion_core::Pdu::from_canonical(event_id.clone(), &object)
        .map_err(|e| PduCheckError::Malformed(e.to_string()))?;

    let servers = ruma::signatures::required_server_signatures_to_verify_event(&object, &rules.signatures)
        .map_err(|e| PduCheckError::Signature(e.to_string()))?;
    let mut servers = servers;
    if let Some(also) = also.filter(|a| !servers.iter().any(|s| s == a)) {
        servers.insert(also.to_owned());
    }
    let signatures = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(s)) => s.clone(),
        _ => return Err(PduCheckError::Signature("no signatures".into())),
    };
    let mut key_map = PublicKeyMap::new();
    for server in &servers {
        let Some(CanonicalJsonValue::Object(by_key)) = signatures.get(server.as_str()) else {
            return Err(PduCheckError::Signature(format!("not signed by {server}")));
        };
        let mut set = std::collections::BTreeMap::new();
        for key_id in by_key.keys().filter(|k| k.starts_with("ed25519:")) {
            match keys.public_key(server, key_id).await {
                Ok(public) => {
                    let public = ruma::serde::Base64::parse(public)
                        .map_err(|e| PduCheckError::Signature(format!("{server} {key_id}: {e}")))?;
                    set.insert(key_id.clone(), public);
                }
                Err(e) => tracing::debug!(%server, %key_id, error = %e, "signing key not available"),
            }
        }
        if set.is_empty() {
            return Err(PduCheckError::Signature(format!("no known key of {server} signed it")));
        }
        key_map.insert(server.to_string(), set);
    }
    let verified = ruma::signatures::verify_event(&key_map, &object, &rules)
        .map_err(|e| PduCheckError::Signature(e.to_string()))?;
    if let Some(also) = also {
        // verify_event checks only the servers the room version requires.
        let mut copy =
            redact(object.clone(), &rules.redaction, None).map_err(|e| PduCheckError::Malformed(e.to_string()))?;
        if let Some(CanonicalJsonValue::Object(sigs)) = copy.get_mut("signatures") {
            sigs.retain(|server, _| server == also.as_str());
        }
        let mut only = PublicKeyMap::new();
        only.extend(key_map.get(also.as_str()).map(|k| (also.to_string(), k.clone())));
        ruma::signatures::verify_json(&only, &copy).map_err(|e| PduCheckError::Signature(format!("{also}: {e}")))?;
    }
    let redacted = verified == Verified::Signatures;
    if redacted {
        tracing::info!(%event_id, "content hash does not match; keeping the redacted event");
        object = redact(object, &rules.redaction, None).map_err(|e| PduCheckError::Malformed(e.to_string()))?;
    }
    Ok(CheckedPdu { event_id, room_id, object, redacted })
}

/// An event as it is sent to other servers: the stored JSON without `unsigned` (where local
/// bookkeeping such as `redacted_because` lives).
pub fn outgoing_pdu(json: &str) -> Option<Box<serde_json::value::RawValue>> {
    let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json).ok()?;
    object.remove("unsigned");
    serde_json::value::to_raw_value(&object).ok()
}

/// One event of an invite's or knock's room state as JSON, whether sent as a full PDU (Matrix
/// 1.16) or in the older stripped form.
#[must_use]
pub fn room_state_json(event: &ruma::api::federation::membership::RawStrippedState) -> Option<serde_json::Value> {
    use ruma::api::federation::membership::RawStrippedState;
    let json = match event {
        RawStrippedState::Pdu(raw) => raw.get(),
        #[allow(deprecated)]
        RawStrippedState::Stripped(raw) => raw.json().get(),
        _ => return None,
    };
    serde_json::from_str(json).ok()
}
