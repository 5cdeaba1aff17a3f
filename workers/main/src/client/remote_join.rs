//! Joining a room another server hosts (server-server API, "Joining Rooms"): ask a resident
//! server for a join template (`make_join`), complete and sign it, send it back (`send_join`
//! v2), check the room state and auth chain it answers with, and store them with the join.
//! Servers are tried in turn until one lets the user in.

use ganglion_federation::{FederationError, check_pdu};
use ganglion_http::MatrixError;
use ruma::api::federation::membership::{create_join_event, prepare_join_event};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, RoomId, RoomVersionId, UserId};
use serde_json::Value;

use crate::Rooms;

/// Room versions this server can join: every one ruma has rules for.
pub(crate) fn supported_versions() -> Vec<RoomVersionId> {
    ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"]
        .iter()
        .filter_map(|v| RoomVersionId::try_from(*v).ok())
        .filter(|v| v.rules().is_some())
        .collect()
}

pub(crate) fn now_ms() -> u64 {
    u64::from(ruma::MilliSecondsSinceUnixEpoch::now().get())
}

/// A remote failure as the client sees it: the resident's own refusal where it gave one.
pub(crate) fn client_error(e: &FederationError) -> MatrixError {
    match e {
        FederationError::Remote { status, errcode, error, .. } if (400..500).contains(status) => {
            let status = axum::http::StatusCode::from_u16(*status).unwrap_or(axum::http::StatusCode::FORBIDDEN);
            let errcode: &'static str = match errcode.as_str() {
                "M_FORBIDDEN" => "M_FORBIDDEN",
                "M_NOT_FOUND" => "M_NOT_FOUND",
                "M_INCOMPATIBLE_ROOM_VERSION" => "M_INCOMPATIBLE_ROOM_VERSION",
                "M_UNSUPPORTED_ROOM_VERSION" => "M_UNSUPPORTED_ROOM_VERSION",
                _ => "M_UNKNOWN",
            };
            MatrixError::new(status, errcode, error.clone())
        }
        _ => {
            MatrixError::new(axum::http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", "No server in the room could be reached")
        }
    }
}

/// Joins `user` to `room_id` through the first of `servers` that lets them in.
///
/// # Errors
/// The last server's refusal, or 404 when no server is known.
pub(crate) async fn join_remote(
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    servers: &[OwnedServerName],
    content: Value,
) -> Result<(), MatrixError> {
    through_first(rooms, room_id, servers, "joining", |server| join_via(rooms, room_id, user, server, &content)).await
}

/// Runs `attempt` through each of `servers` but this one, once each, until one succeeds.
///
/// # Errors
/// The last server's error, or 404 when there is no other server to try.
pub(crate) async fn through_first<'a, F, Fut>(
    rooms: &Rooms,
    room_id: &RoomId,
    servers: &'a [OwnedServerName],
    what: &str,
    mut attempt: F,
) -> Result<(), MatrixError>
where
    F: FnMut(&'a OwnedServerName) -> Fut,
    Fut: std::future::Future<Output = Result<(), MatrixError>>,
{
    let ours = rooms.writer.server_name();
    let mut seen = std::collections::HashSet::new();
    let mut last = MatrixError::not_found("No known servers for this room");
    for server in servers.iter().filter(|s| *s != ours && seen.insert(*s)) {
        match attempt(server).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::info!(%room_id, %server, error = ?e, what, "this server did not do it");
                last = e;
            }
        }
    }
    Err(last)
}

async fn join_via(
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    server: &OwnedServerName,
    content: &Value,
) -> Result<(), MatrixError> {
    let mut ask = prepare_join_event::v1::Request::new(room_id.to_owned(), user.to_owned());
    ask.ver = supported_versions();
    let template = rooms.federation.send(server, ask).await.map_err(|e| client_error(&e))?;
    let version = template.room_version.unwrap_or(RoomVersionId::V1);
    let (event_id, pdu_json) =
        complete_template(rooms, template.event.get(), &version, room_id, user, "join", content)?;
    let raw = serde_json::value::RawValue::from_string(pdu_json.clone()).map_err(MatrixError::internal)?;
    let send = create_join_event::v2::Request::new(room_id.to_owned(), event_id.clone(), raw);
    let answer = rooms.federation.send(server, send).await.map_err(|e| client_error(&e))?.room_state;

    // The resident may hand back the join with its own signature (restricted rooms need it).
    let join_json = match &answer.event {
        Some(signed) => match check_pdu(&rooms.remote_keys, &version, signed.get()).await {
            Ok(p) if p.event_id == event_id => p.json(),
            _ => pdu_json,
        },
        None => pdu_json,
    };
    let join = ganglion_core::Pdu::from_json(event_id.clone(), &join_json).map_err(MatrixError::internal)?;
    let state = checked_all(rooms, &version, room_id, &answer.state).await;
    let auth_chain = checked_all(rooms, &version, room_id, &answer.auth_chain).await;
    tracing::info!(%room_id, %server, state = state.len(), auth_chain = auth_chain.len(), "send_join answered");
    rooms.writer.receive_remote_join(&version, join, state, auth_chain).await.map_err(|e| match e {
        crate::receive::ReceiveError::Write(w) => MatrixError::from(w),
        crate::receive::ReceiveError::Missing(ids) => MatrixError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("The room's state from {server} is incomplete: {} events missing", ids.len()),
        ),
    })?;
    Ok(())
}

fn bad_gateway(why: impl Into<String>) -> MatrixError {
    MatrixError::new(axum::http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", why)
}

/// A resident server's `make_join`/`make_leave` template, completed as `membership` of `user`:
/// our content merged over the template's (the profile, and whatever the template set, such as
/// a restricted join's authoriser), our timestamp, origin and signature. Returns the event's ID
/// and JSON.
///
/// # Errors
/// 502 when the template is not such an event of this user; 400 for an unsupported version.
pub(crate) fn complete_template(
    rooms: &Rooms,
    template: &str,
    version: &RoomVersionId,
    room_id: &RoomId,
    user: &UserId,
    membership: &str,
    content: &Value,
) -> Result<(ruma::OwnedEventId, String), MatrixError> {
    let rules = version
        .rules()
        .ok_or_else(|| MatrixError::unsupported_room_version(format!("Room version {version} is not supported")))?;
    let mut event: CanonicalJsonObject =
        serde_json::from_str(template).map_err(|e| bad_gateway(format!("make_{membership}: {e}")))?;
    let checks = |e: &CanonicalJsonObject| -> bool {
        matches!(e.get("type"), Some(CanonicalJsonValue::String(t)) if t == "m.room.member")
            && matches!(e.get("state_key"), Some(CanonicalJsonValue::String(k)) if k == user.as_str())
            && matches!(e.get("sender"), Some(CanonicalJsonValue::String(k)) if k == user.as_str())
            && matches!(e.get("room_id"), Some(CanonicalJsonValue::String(r)) if r == room_id.as_str())
    };
    if !checks(&event) {
        return Err(bad_gateway(format!("The resident server's template is not a {membership} of this user")));
    }
    let mut merged = match event.remove("content") {
        Some(CanonicalJsonValue::Object(c)) => c,
        _ => CanonicalJsonObject::new(),
    };
    if let Value::Object(ours) = content {
        for (k, v) in ours {
            if let Ok(v) = serde_json::from_value::<CanonicalJsonValue>(v.clone()) {
                merged.insert(k.clone(), v);
            }
        }
    }
    merged.insert("membership".into(), CanonicalJsonValue::String(membership.into()));
    event.insert("content".into(), CanonicalJsonValue::Object(merged));
    for k in ["signatures", "hashes", "unsigned"] {
        event.remove(k);
    }
    let ours = rooms.writer.server_name();
    event.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(ruma::Int::try_from(now_ms()).unwrap_or_default()),
    );
    if !rules.authorization.use_room_create_sender || event.contains_key("origin") {
        event.insert("origin".into(), CanonicalJsonValue::String(ours.to_string()));
    }
    if matches!(rules.event_id_format, ruma::room_version_rules::EventIdFormatVersion::V1) {
        let id = format!("${}:{ours}", crate::writer::random_localpart(18));
        event.insert("event_id".into(), CanonicalJsonValue::String(id));
    }
    let (event_id, _) = ganglion_core::sign_event(&mut event, ours, &rooms.signing_key, &rules)
        .map_err(|e| MatrixError::bad_request(e.to_string()))?;
    let json = serde_json::to_string(&event).map_err(MatrixError::internal)?;
    Ok((event_id, json))
}

/// The events of `raw` that pass the PDU checks and belong to the room; the others are left
/// out (the auth rules then decide whether what is left is enough).
async fn checked_all(
    rooms: &Rooms,
    version: &RoomVersionId,
    room_id: &RoomId,
    raw: &[Box<serde_json::value::RawValue>],
) -> Vec<ganglion_core::Pdu> {
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        match check_pdu(&rooms.remote_keys, version, r.get()).await {
            Ok(p) if p.room_id == room_id => match ganglion_core::Pdu::from_canonical(p.event_id.clone(), &p.object) {
                Ok(pdu) => out.push(pdu),
                Err(e) => tracing::info!(error = %e, "a state event of the joined room does not read"),
            },
            Ok(p) => tracing::info!(event_id = %p.event_id, "send_join answered an event of another room"),
            Err(e) => tracing::info!(error = %e, "a state event of the joined room failed its checks"),
        }
    }
    out
}
