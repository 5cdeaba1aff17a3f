//! Building, hashing, signing and authorising a local event.

use ruma::events::TimelineEventType;
use ruma::room_version_rules::{EventIdFormatVersion, RoomVersionRules};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomVersionId, ServerName, UserId};
use serde_json::value::to_raw_value;

use crate::{Pdu, ServerSigningKey, StateMap};

/// Why an event could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The auth rules reject it; the reason is for the client.
    #[error("{0}")]
    Forbidden(String),
    /// The event is over 65,536 bytes.
    #[error("event too large")]
    TooLarge,
    /// The content or a field is invalid.
    #[error("invalid event: {0}")]
    Invalid(String),
    /// The room version is not supported here.
    #[error("unsupported room version {0}")]
    UnsupportedRoomVersion(String),
}

/// What a client asks to send.
#[derive(Debug, Clone)]
pub struct EventTemplate {
    /// `type`.
    pub event_type: String,
    /// `state_key` for state events.
    pub state_key: Option<String>,
    /// `content`.
    pub content: serde_json::Value,
}

/// The room an event is built in, loaded by the caller.
#[derive(Debug)]
pub struct RoomContext<'a> {
    /// The room; `None` when building a room v12 `m.room.create`.
    pub room_id: Option<&'a ruma::RoomId>,
    /// The room version.
    pub version: &'a RoomVersionId,
    /// The state before the new event.
    pub state: &'a StateMap,
    /// The room's forward extremities, which the new event follows.
    pub prev_events: Vec<OwnedEventId>,
    /// The greatest depth among `prev_events` (0 for a create event).
    pub max_prev_depth: u64,
}

/// The rules of a room version, or `None` when it is unknown.
pub fn room_version_rules(version: &RoomVersionId) -> Option<RoomVersionRules> {
    version.rules()
}

const MAX_PDU_BYTES: usize = 65_536;

/// The unsigned event a template becomes in a room: auth events picked from the state, prev
/// events, depth, timestamp, sender, and (before room v11) `origin`; for room v1/v2 a fresh
/// `event_id` of `server_name`. Not checked against the auth rules. [`build_event`] signs it;
/// `make_join` hands it to the joining server, which signs it.
///
/// # Errors
/// [`BuildError::Invalid`] for malformed content or an unknown room version.
pub fn proto_event(
    template: &EventTemplate,
    sender: &UserId,
    ctx: &RoomContext<'_>,
    server_name: &ServerName,
    now_ms: u64,
) -> Result<CanonicalJsonObject, BuildError> {
    let rules = ctx.version.rules().ok_or_else(|| BuildError::UnsupportedRoomVersion(ctx.version.to_string()))?;
    let event_type = TimelineEventType::from(template.event_type.as_str());
    let content_raw = to_raw_value(&template.content).map_err(|e| BuildError::Invalid(e.to_string()))?;
    let auth_types = ruma::state_res::auth_types_for_event(
        &event_type,
        sender,
        template.state_key.as_deref(),
        &content_raw,
        &rules.authorization,
    )
    .map_err(BuildError::Invalid)?;
    let mut auth_events: Vec<OwnedEventId> = auth_types
        .iter()
        .filter_map(|(ty, key)| ctx.state.get(&(ty.to_string(), key.clone())).map(|p| p.event_id.clone()))
        .collect();
    auth_events.sort();
    auth_events.dedup();

    let legacy_ids = matches!(rules.event_id_format, EventIdFormatVersion::V1);
    let event_ref = |id: &OwnedEventId| -> CanonicalJsonValue {
        if legacy_ids {
            // Room v1/v2 reference events as [id, {hashes}]; an empty hash object is what many
            // servers send for their own events.
            CanonicalJsonValue::Array(vec![
                CanonicalJsonValue::String(id.to_string()),
                CanonicalJsonValue::Object(CanonicalJsonObject::new()),
            ])
        } else {
            CanonicalJsonValue::String(id.to_string())
        }
    };

    let content: CanonicalJsonValue =
        serde_json::from_value(template.content.clone()).map_err(|e| BuildError::Invalid(format!("content: {e}")))?;
    let mut obj = CanonicalJsonObject::new();
    obj.insert("auth_events".into(), CanonicalJsonValue::Array(auth_events.iter().map(event_ref).collect()));
    obj.insert("prev_events".into(), CanonicalJsonValue::Array(ctx.prev_events.iter().map(event_ref).collect()));
    obj.insert("content".into(), content);
    let depth = ctx.max_prev_depth.saturating_add(1);
    obj.insert(
        "depth".into(),
        CanonicalJsonValue::Integer(ruma::Int::try_from(depth).map_err(|_| BuildError::Invalid("depth".into()))?),
    );
    obj.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(ruma::Int::try_from(now_ms).map_err(|_| BuildError::Invalid("timestamp".into()))?),
    );
    obj.insert("sender".into(), CanonicalJsonValue::String(sender.to_string()));
    obj.insert("type".into(), CanonicalJsonValue::String(template.event_type.clone()));
    if let Some(sk) = &template.state_key {
        obj.insert("state_key".into(), CanonicalJsonValue::String(sk.clone()));
    }
    if let Some(room_id) = ctx.room_id {
        obj.insert("room_id".into(), CanonicalJsonValue::String(room_id.to_string()));
    } else if !(rules.authorization.room_create_event_id_as_room_id && event_type == TimelineEventType::RoomCreate) {
        return Err(BuildError::Invalid("room_id is required".into()));
    }
    if !rules.redaction.content_field_redacts && event_type == TimelineEventType::RoomRedaction {
        // Before v11 `redacts` is a top-level key; clients always send it in content.
        if let Some(r) = template.content.get("redacts").and_then(|r| r.as_str()) {
            obj.insert("redacts".into(), CanonicalJsonValue::String(r.to_owned()));
        }
    }
    if legacy_ids {
        let id = format!("${}:{}", random_string(18), server_name);
        obj.insert("event_id".into(), CanonicalJsonValue::String(id));
    }
    if rules.authorization.use_room_create_sender {
        // From v11 `origin` is no longer part of events; before it, servers still set it.
    } else {
        obj.insert("origin".into(), CanonicalJsonValue::String(server_name.to_string()));
    }
    Ok(obj)
}

/// Builds an event: picks its auth events from the state, hashes and signs it, derives its ID (and,
/// for a room v12 create event, the room ID), then checks it against the room version's auth rules.
///
/// Returns the PDU and the room ID it belongs to.
///
/// # Errors
/// [`BuildError::Forbidden`] when the auth rules reject it, [`BuildError::TooLarge`] past 65,536
/// bytes, [`BuildError::Invalid`] for malformed content.
pub fn build_event(
    template: &EventTemplate,
    sender: &UserId,
    ctx: &RoomContext<'_>,
    server_name: &ServerName,
    key: &ServerSigningKey,
    now_ms: u64,
) -> Result<(Pdu, OwnedRoomId), BuildError> {
    let rules = ctx.version.rules().ok_or_else(|| BuildError::UnsupportedRoomVersion(ctx.version.to_string()))?;
    let mut obj = proto_event(template, sender, ctx, server_name, now_ms)?;
    let (event_id, _) = sign_event(&mut obj, server_name, key, &rules)?;
    let json = serde_json::to_string(&obj).map_err(|e| BuildError::Invalid(e.to_string()))?;
    let room_id = match ctx.room_id {
        Some(r) => r.to_owned(),
        None => OwnedRoomId::try_from(format!("!{}", &event_id.as_str()[1..]))
            .map_err(|e| BuildError::Invalid(e.to_string()))?,
    };
    let pdu = Pdu::from_json(event_id, &json).map_err(|e| BuildError::Invalid(e.to_string()))?;

    // The same rules a remote server will apply when it receives this event. From room v12 the
    // create event is not among the auth events but is still looked up, by the room ID.
    let by_id: std::collections::HashMap<&OwnedEventId, &Pdu> = ctx.state.values().map(|p| (&p.event_id, p)).collect();
    ruma::state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |id| {
        by_id.get(&id.to_owned()).map(|p| (*p).clone())
    })
    .map_err(BuildError::Forbidden)?;
    ruma::state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, |ty, key| {
        ctx.state.get(&(ty.to_string(), key.to_owned())).cloned()
    })
    .map_err(BuildError::Forbidden)?;
    Ok((pdu, room_id))
}

fn random_string(n: usize) -> String {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    (0..n).map(|_| rng.sample(rand::distributions::Alphanumeric) as char).collect()
}

/// Hashes and signs an event object as `server_name` and derives its ID: the reference hash from
/// room v3, the `event_id` field before. Used for events built here and for the templates another
/// server hands out (`make_join`), which this server completes and signs. Returns the ID and the
/// size of the signed JSON.
///
/// # Errors
/// [`BuildError::TooLarge`] past 65,536 bytes, [`BuildError::Invalid`] otherwise.
pub fn sign_event(
    obj: &mut CanonicalJsonObject,
    server_name: &ServerName,
    key: &ServerSigningKey,
    rules: &RoomVersionRules,
) -> Result<(OwnedEventId, usize), BuildError> {
    ruma::signatures::hash_and_sign_event(server_name.as_str(), key.pair(), obj, &rules.redaction).map_err(
        |e| match e {
            ruma::signatures::JsonError::PduTooLarge => BuildError::TooLarge,
            other => BuildError::Invalid(other.to_string()),
        },
    )?;
    let json = serde_json::to_string(&*obj).map_err(|e| BuildError::Invalid(e.to_string()))?;
    if json.len() > MAX_PDU_BYTES {
        return Err(BuildError::TooLarge);
    }
    let event_id = match (&rules.event_id_format, obj.get("event_id")) {
        (EventIdFormatVersion::V1, Some(CanonicalJsonValue::String(id))) => id.clone(),
        (EventIdFormatVersion::V1, _) => return Err(BuildError::Invalid("event_id is required".into())),
        _ => {
            let hash = ruma::signatures::reference_hash(obj, rules).map_err(|e| match e {
                ruma::signatures::JsonError::PduTooLarge => BuildError::TooLarge,
                other => BuildError::Invalid(other.to_string()),
            })?;
            format!("${hash}")
        }
    };
    let event_id = OwnedEventId::try_from(event_id).map_err(|e| BuildError::Invalid(e.to_string()))?;
    Ok((event_id, json.len()))
}
