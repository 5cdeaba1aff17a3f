//! createRoom, join, send, `/messages` and `joined_rooms`.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, RawQuery, State};
use axum::{Extension, Json};
use ganglion_core::{EventTemplate, PageToken};
use ganglion_http::{AuthUser, MatrixError, MatrixJson, RequestId};
use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, RoomVersionId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::pagination;
use crate::Rooms;
use crate::writer::{WriteOrigin, Written};

fn origin(req: &Option<Extension<RequestId>>, txn: Option<(String, String)>) -> WriteOrigin {
    WriteOrigin { txn, request_id: req.as_ref().map(|r| r.0.0.clone()).unwrap_or_default(), ts: None }
}

#[derive(Debug, Deserialize)]
pub(crate) struct StateEventBody {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    state_key: String,
    content: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CreateRoomBody {
    visibility: Option<String>,
    room_alias_name: Option<String>,
    name: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    invite: Vec<String>,
    room_version: Option<String>,
    creation_content: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    initial_state: Vec<StateEventBody>,
    preset: Option<String>,
    #[serde(default)]
    is_direct: bool,
    power_level_content_override: Option<serde_json::Map<String, Value>>,
}

fn state(event_type: &str, state_key: &str, content: Value) -> EventTemplate {
    EventTemplate { event_type: event_type.to_owned(), state_key: Some(state_key.to_owned()), content }
}

/// `POST /_matrix/client/v3/createRoom`: creates a room with the initial state the spec prescribes
/// for its preset, in the spec's order.
pub(crate) async fn create_room(
    State(rooms): State<Rooms>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    MatrixJson(body): MatrixJson<CreateRoomBody>,
) -> Result<Json<Value>, MatrixError> {
    if user.rate_limited() {
        rooms.limits.rooms.check(user.user_id.as_str())?;
    }
    let version = match &body.room_version {
        Some(v) => RoomVersionId::try_from(v.as_str())
            .ok()
            .filter(|v| v.rules().is_some())
            .ok_or_else(|| MatrixError::unsupported_room_version(format!("Room version {v} is not supported")))?,
        None => rooms.default_version.clone(),
    };
    let rules = version.rules().ok_or_else(|| MatrixError::unsupported_room_version("unsupported"))?;
    let preset = match body.preset.as_deref() {
        Some(p @ ("private_chat" | "public_chat" | "trusted_private_chat")) => p.to_owned(),
        Some(other) => return Err(MatrixError::invalid_param(format!("Unknown preset {other}"))),
        None if body.visibility.as_deref() == Some("public") => "public_chat".to_owned(),
        None => "private_chat".to_owned(),
    };
    match body.visibility.as_deref() {
        None | Some("public" | "private") => {}
        Some(other) => return Err(MatrixError::invalid_param(format!("Unknown visibility {other}"))),
    }
    let invitees: Vec<OwnedUserId> = body
        .invite
        .iter()
        .map(|u| {
            OwnedUserId::try_from(u.as_str()).map_err(|_| MatrixError::invalid_param(format!("Invalid user ID {u}")))
        })
        .collect::<Result<_, _>>()?;
    let alias = match &body.room_alias_name {
        Some(local) => {
            if local.contains(':') || local.contains('#') || local.trim().is_empty() {
                return Err(MatrixError::invalid_param("room_alias_name must be a bare localpart"));
            }
            let alias = OwnedRoomAliasId::try_from(format!("#{local}:{}", rooms.writer.server_name()))
                .map_err(|e| MatrixError::invalid_param(format!("Invalid alias: {e}")))?;
            if rooms.events.alias_room(alias.as_str()).await?.is_some() {
                return Err(MatrixError::room_in_use("Room alias already taken"));
            }
            if let Some(owner) = rooms.appservices.exclusive_alias_owner(alias.as_str())
                && user.appservice.as_ref().is_none_or(|a| a.id != owner.id)
            {
                return Err(MatrixError::exclusive("This alias is reserved by an application service"));
            }
            Some(alias)
        }
        None => None,
    };

    // m.room.create
    let mut create = body.creation_content.clone().unwrap_or_default();
    create.insert("room_version".into(), json!(version.as_str()));
    if rules.authorization.use_room_create_sender {
        create.remove("creator");
    } else {
        create.insert("creator".into(), json!(user.user_id));
    }
    let privileged_creators = rules.authorization.explicitly_privilege_room_creators;
    let mut additional_creators: Vec<OwnedUserId> = Vec::new();
    if privileged_creators {
        if let Some(extra) = create.get("additional_creators") {
            let list = extra.as_array().ok_or_else(|| MatrixError::bad_json("additional_creators must be an array"))?;
            for u in list {
                let u = u.as_str().and_then(|s| OwnedUserId::try_from(s).ok());
                additional_creators
                    .push(u.ok_or_else(|| MatrixError::bad_json("additional_creators holds an invalid user ID"))?);
            }
        }
        if preset == "trusted_private_chat" {
            for i in &invitees {
                if !additional_creators.contains(i) {
                    additional_creators.push(i.clone());
                }
            }
            if !additional_creators.is_empty() {
                create.insert("additional_creators".into(), json!(additional_creators));
            }
        }
    }
    let origin = origin(&req, None);
    let created = rooms.writer.create_room(&version, &user.user_id, Value::Object(create), &origin).await?;
    let room_id = created.room_id.clone();

    let mut events: Vec<EventTemplate> = Vec::new();
    let member = with_profile(&rooms, &user.user_id, json!({ "membership": "join" })).await?;
    events.push(state("m.room.member", user.user_id.as_str(), member));

    // Power levels: the defaults Synapse uses, the creator at 100 (implicit from v12), trusted
    // invitees at 100, then the client's override on top.
    let mut users = serde_json::Map::new();
    if !privileged_creators {
        users.insert(user.user_id.to_string(), json!(100));
        if preset == "trusted_private_chat" {
            for i in &invitees {
                users.insert(i.to_string(), json!(100));
            }
        }
    }
    let mut pl = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "historical": 100,
    });
    // As Synapse: public rooms let only moderators invite or ring; from v12 the tombstone (a
    // room's end) is above every ordinary level, for the creators alone.
    if preset == "public_chat" {
        pl["invite"] = json!(50);
        pl["events"]["m.call.invite"] = json!(50);
    }
    if privileged_creators {
        pl["events"]["m.room.tombstone"] = json!(150);
    }
    if let Some(o) = &body.power_level_content_override {
        for (k, v) in o {
            pl[k] = v.clone();
        }
    }
    events.push(state("m.room.power_levels", "", pl));
    if let Some(alias) = &alias {
        events.push(state("m.room.canonical_alias", "", json!({ "alias": alias })));
    }
    let (join_rule, history, guest) = match preset.as_str() {
        "public_chat" => ("public", "shared", "forbidden"),
        _ => ("invite", "shared", "can_join"),
    };
    events.push(state("m.room.join_rules", "", json!({ "join_rule": join_rule })));
    events.push(state("m.room.history_visibility", "", json!({ "history_visibility": history })));
    if guest == "can_join" {
        events.push(state("m.room.guest_access", "", json!({ "guest_access": guest })));
    }
    for s in &body.initial_state {
        if s.event_type == "m.room.member" || s.event_type == "m.room.create" {
            return Err(MatrixError::invalid_param(format!("initial_state may not contain {}", s.event_type)));
        }
        // A later entry of the same (type, state_key) replaces the preset's.
        events.retain(|e| !(e.event_type == s.event_type && e.state_key.as_deref() == Some(s.state_key.as_str())));
        events.push(state(&s.event_type, &s.state_key, Value::Object(s.content.clone())));
    }
    if let Some(name) = &body.name {
        events.push(state("m.room.name", "", json!({ "name": name })));
    }
    if let Some(topic) = &body.topic {
        // The plain topic and its rich form (`m.topic`, spec v1.15).
        events.push(state("m.room.topic", "", json!({ "topic": topic, "m.topic": { "m.text": [{ "body": topic }] } })));
    }
    let mut remote_invites = Vec::new();
    for i in &invitees {
        let mut content = with_profile(&rooms, i, json!({ "membership": "invite" })).await?;
        if body.is_direct {
            content["is_direct"] = json!(true);
        }
        if i.server_name() == rooms.writer.server_name() {
            events.push(state("m.room.member", i.as_str(), content));
        } else {
            remote_invites.push((i, content));
        }
    }
    for template in events {
        rooms.writer.send(&room_id, &user.user_id, template, &origin).await?;
    }
    // Each invitee's server countersigns its invite; one that cannot be reached does not undo
    // the room (the inviter can invite again).
    for (invitee, content) in remote_invites {
        if let Err(e) = super::remote_membership::invite_remote(&rooms, &room_id, &user.user_id, invitee, content).await
        {
            tracing::warn!(%room_id, %invitee, error = ?e, "could not invite a user of another server");
        }
    }
    if let Some(alias) = &alias {
        rooms.events.create_alias(alias.as_str(), &room_id, &user.user_id).await.map_err(|e| match e {
            ganglion_storage::Error::Conflict(_) => MatrixError::room_in_use("Room alias already taken"),
            other => other.into(),
        })?;
    }
    if body.visibility.as_deref() == Some("public") {
        rooms.events.set_room_published(&room_id, true).await?;
    }
    tracing::info!(room_id = %room_id, "created room");
    Ok(Json(json!({ "room_id": room_id })))
}

async fn join(
    rooms: &Rooms,
    data: &crate::UserData,
    room_id: &RoomId,
    user: &AuthUser,
    origin: &WriteOrigin,
    via: &[OwnedServerName],
) -> Result<Json<Value>, MatrixError> {
    let user_id = &user.user_id;
    if user.rate_limited() {
        rooms.limits.rooms.check(user_id.as_str())?;
    }
    let known = rooms.events.room_version(room_id).await?.is_some();
    if known && rooms.events.membership(room_id, user_id).await?.as_deref() == Some("join") {
        return Ok(Json(json!({ "room_id": room_id })));
    }
    if !known || !resident(rooms, room_id).await? {
        // Another server hosts the room (or nobody here is in it any more): join through one
        // that is in it.
        let mut servers: Vec<OwnedServerName> = via.to_vec();
        // Invited from another server: the inviter's server is in the room.
        if known
            && let Some(m) = rooms.events.state_event(room_id, "m.room.member", user_id.as_str()).await?
            && m.membership.as_deref() == Some("invite")
        {
            servers.push(m.sender.server_name().to_owned());
        }
        if let Some(server) = room_id.server_name() {
            servers.push(server.to_owned());
        }
        if known {
            for member in rooms.events.members_with(room_id, "join").await? {
                if let Some(server) = member.split_once(':').and_then(|(_, s)| OwnedServerName::try_from(s).ok()) {
                    servers.push(server);
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        servers.retain(|s| s != rooms.writer.server_name() && seen.insert(s.clone()));
        if servers.is_empty() {
            return Err(MatrixError::not_found("No known servers for this room"));
        }
        let content = with_profile(rooms, user_id, json!({ "membership": "join" })).await?;
        super::remote_join::join_remote(rooms, room_id, user_id, &servers, content).await?;
        return Ok(Json(json!({ "room_id": room_id })));
    }
    if user.is_guest && !guests_can_join(rooms, room_id).await? {
        return Err(MatrixError::guest_access_forbidden("Guests may not join this room"));
    }
    let mut content = with_profile(rooms, user_id, json!({ "membership": "join" })).await?;
    if let Some(authoriser) = restricted_join_authoriser(rooms, room_id, user_id).await? {
        content["join_authorised_via_users_server"] = json!(authoriser);
    }
    let template = state("m.room.member", user_id.as_str(), content);
    rooms.writer.send(room_id, user_id, template, origin).await?;
    // Joining the replacement of an upgraded room brings the user's tags, push rules and
    // direct-message flag along; a failure there does not undo the join.
    if let Err(e) = super::upgrade::copy_user_state(rooms, data, room_id, user_id).await {
        tracing::warn!(%room_id, error = ?e, "could not carry the user's room state over from the old room");
    }
    Ok(Json(json!({ "room_id": room_id })))
}

/// For a `restricted` or `knock_restricted` room the user is not invited to: a member of the
/// room who may invite, to name in `join_authorised_via_users_server`, once the user is shown to
/// be joined to one of the rooms the join rules allow (the auth rules then check the
/// authoriser's power). `None` when the room is not restricted or the user is invited; 403 when
/// no allowed room has the user.
async fn restricted_join_authoriser(
    rooms: &Rooms,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<Option<OwnedUserId>, MatrixError> {
    let Some(rules_event) = rooms.events.state_event(room_id, "m.room.join_rules", "").await? else {
        return Ok(None);
    };
    let rules: Value = serde_json::from_str(&rules_event.json).map_err(MatrixError::internal)?;
    let join_rule = rules["content"]["join_rule"].as_str().unwrap_or_default();
    if !matches!(join_rule, "restricted" | "knock_restricted")
        || rooms.events.membership(room_id, user_id).await?.as_deref() == Some("invite")
    {
        return Ok(None);
    }
    let mut qualifies = false;
    for allow in rules["content"]["allow"].as_array().into_iter().flatten() {
        let Some(allowed) = allow["room_id"].as_str().filter(|_| allow["type"] == "m.room_membership") else {
            continue;
        };
        let Ok(allowed) = <&RoomId>::try_from(allowed) else { continue };
        if rooms.events.membership(allowed, user_id).await?.as_deref() == Some("join") {
            qualifies = true;
            break;
        }
    }
    if !qualifies {
        return Err(MatrixError::forbidden(
            "You are not invited to this room, nor a member of a room that allows joining it",
        ));
    }
    let version = rooms.events.room_version(room_id).await?.unwrap_or_default();
    let version_rules = ruma::RoomVersionId::try_from(version.as_str())
        .ok()
        .and_then(|v| v.rules())
        .ok_or_else(|| MatrixError::internal(format!("unknown room version {version}")))?;
    let state = rooms.writer.room_state(room_id).await?;
    let invite_level = ganglion_core::required_level(&state, "invite", 0);
    let authoriser = rooms
        .events
        .members_with(room_id, "join")
        .await?
        .into_iter()
        .filter_map(|m| OwnedUserId::try_from(m).ok())
        .filter(|m| m.server_name() == rooms.writer.server_name())
        .find(|m| ganglion_core::user_power_level(&state, m, &version_rules) >= invite_level);
    authoriser
        .map(Some)
        .ok_or_else(|| MatrixError::forbidden("No member of this room on this server may authorise the join"))
}

/// Whether a local user is joined to the room, so this server can write to it itself.
async fn resident(rooms: &Rooms, room_id: &RoomId) -> Result<bool, MatrixError> {
    let ours = format!(":{}", rooms.writer.server_name());
    Ok(rooms.events.members_with(room_id, "join").await?.iter().any(|m| m.ends_with(&ours)))
}

/// The servers a join may go through: `via` (and the deprecated `server_name`) query values.
fn via_servers(query: Option<&str>) -> Vec<OwnedServerName> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "via" || k == "server_name")
        .filter_map(|(_, v)| OwnedServerName::try_from(v.as_ref()).ok())
        .collect()
}

/// `content` with a local user's display name and avatar, as their member events carry them.
pub(crate) async fn with_profile(rooms: &Rooms, user: &UserId, mut content: Value) -> Result<Value, MatrixError> {
    if user.server_name() != rooms.writer.server_name() {
        return Ok(content);
    }
    if let Some((displayname, avatar_url)) = rooms.users.profile(user).await? {
        if let Some(name) = displayname {
            content["displayname"] = json!(name);
        }
        if let Some(url) = avatar_url {
            content["avatar_url"] = json!(url);
        }
    }
    Ok(content)
}

/// Whether the room's `m.room.guest_access` is `can_join` (the spec's condition for guests to join).
async fn guests_can_join(rooms: &Rooms, room_id: &RoomId) -> Result<bool, MatrixError> {
    let Some(event) = rooms.events.state_event(room_id, "m.room.guest_access", "").await? else { return Ok(false) };
    let event: Value = serde_json::from_str(&event.json).map_err(MatrixError::internal)?;
    Ok(event["content"]["guest_access"] == "can_join")
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`.
pub(crate) async fn join_room(
    State(rooms): State<Rooms>,
    State(data): State<crate::UserData>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path(room_id): Path<String>,
    RawQuery(query): RawQuery,
    MatrixJson(_body): MatrixJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    let room_id =
        OwnedRoomId::try_from(room_id).map_err(|e| MatrixError::invalid_param(format!("Invalid room ID: {e}")))?;
    join(&rooms, &data, &room_id, &user, &origin(&req, None), &via_servers(query.as_deref())).await
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}`.
pub(crate) async fn join_by_id_or_alias(
    State(rooms): State<Rooms>,
    State(data): State<crate::UserData>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path(target): Path<String>,
    RawQuery(query): RawQuery,
    MatrixJson(_body): MatrixJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    let (room_id, via) = room_and_servers(&rooms, &target, query.as_deref()).await?;
    join(&rooms, &data, &room_id, &user, &origin(&req, None), &via).await
}

/// The room a `{roomIdOrAlias}` names and the servers to reach it through: `via` and
/// `server_name` of the query, and for another server's alias, what its `/query/directory`
/// answers.
pub(crate) async fn room_and_servers(
    rooms: &Rooms,
    target: &str,
    query: Option<&str>,
) -> Result<(OwnedRoomId, Vec<OwnedServerName>), MatrixError> {
    let mut via = via_servers(query);
    let room_id = match remote_alias(rooms, target)? {
        Some(alias) => {
            // Another server's alias: that server names the room and servers in it.
            let ask = ruma::api::federation::query::get_room_information::v1::Request::new(alias.clone());
            let answer = rooms.federation.send(alias.server_name(), ask).await.map_err(|e| match e {
                ganglion_federation::FederationError::Remote { status: 404, .. } => {
                    MatrixError::not_found("Room alias not found")
                }
                other => {
                    tracing::info!(%alias, error = %other, "remote alias lookup failed");
                    MatrixError::new(axum::http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", "Could not look up the alias")
                }
            })?;
            via.extend(answer.servers);
            answer.room_id
        }
        None => super::resolve_room_id_or_alias(rooms, target).await?,
    };
    Ok((room_id, via))
}

/// The alias `target` names when it is another server's.
fn remote_alias(rooms: &Rooms, target: &str) -> Result<Option<OwnedRoomAliasId>, MatrixError> {
    if !target.starts_with('#') {
        return Ok(None);
    }
    let alias =
        OwnedRoomAliasId::try_from(target).map_err(|e| MatrixError::invalid_param(format!("Invalid alias: {e}")))?;
    Ok((alias.server_name() != rooms.writer.server_name()).then_some(alias))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`: a message event, idempotent
/// per device and transaction id.
pub(crate) async fn send_message(
    State(rooms): State<Rooms>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path((room_id, event_type, txn_id)): Path<(String, String, String)>,
    MatrixJson(content): MatrixJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    let room_id =
        OwnedRoomId::try_from(room_id).map_err(|e| MatrixError::invalid_param(format!("Invalid room ID: {e}")))?;
    if user.rate_limited() {
        rooms.limits.messages.check(user.user_id.as_str())?;
    }
    if event_type.is_empty() || event_type.len() > 255 {
        return Err(MatrixError::invalid_param("Invalid event type"));
    }
    if rooms.events.membership(&room_id, &user.user_id).await?.as_deref() != Some("join") {
        return Err(MatrixError::forbidden(format!("User {} not in room {room_id}", user.user_id)));
    }
    // A transaction ID is scoped to the device and the request path (the spec's "same endpoint"),
    // so the same ID in another room or for another type is another request.
    let scoped_txn = format!("send:{room_id}/{event_type}/{txn_id}");
    let template = EventTemplate { event_type, state_key: None, content: Value::Object(content) };
    let origin = WriteOrigin { ts: user.ts, ..origin(&req, Some((user.device_str().to_owned(), scoped_txn))) };
    let Written { event_id, .. } = rooms.writer.send(&room_id, &user.user_id, template, &origin).await?;
    Ok(Json(json!({ "event_id": event_id })))
}

/// `GET /_matrix/client/v3/joined_rooms`.
pub(crate) async fn joined_rooms(State(rooms): State<Rooms>, user: AuthUser) -> Result<Json<Value>, MatrixError> {
    let joined: Vec<OwnedRoomId> = rooms
        .events
        .rooms_for_user(&user.user_id)
        .await?
        .into_iter()
        .filter(|m| m.membership == "join")
        .map(|m| m.room_id)
        .collect();
    Ok(Json(json!({ "joined_rooms": joined })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct MessagesQuery {
    from: Option<String>,
    to: Option<String>,
    dir: Option<String>,
    limit: Option<String>,
    filter: Option<String>,
}

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`: pages through a room's timeline in
/// topological order, with the events a `RoomEventFilter` lets through.
pub(crate) async fn messages(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(room_id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Result<Json<Value>, MatrixError> {
    let room_id =
        OwnedRoomId::try_from(room_id).map_err(|e| MatrixError::invalid_param(format!("Invalid room ID: {e}")))?;
    let backwards = match q.dir.as_deref() {
        Some("b") => true,
        Some("f") => false,
        None => return Err(MatrixError::missing_param("Missing dir parameter")),
        Some(other) => return Err(MatrixError::invalid_param(format!("dir must be b or f, not {other}"))),
    };
    let filter = pagination::parse_filter(q.filter.as_deref())?;
    let limit = pagination::parse_limit(q.limit.as_deref(), &filter, 10, 1000)?;
    let from = q.from.as_deref().map(|t| pagination::parse_token(t, "from")).transpose()?;
    let to = q.to.as_deref().map(|t| pagination::parse_token(t, "to")).transpose()?;
    let upto = super::visible_upto(&rooms, &user.user_id, &room_id).await?;
    let start = match from {
        Some(from) => from,
        None if backwards => pagination::newest_visible(&rooms, upto),
        None => PageToken::START,
    };
    let page = pagination::page(&rooms, &room_id, start, to, backwards, upto, limit, &filter).await?;
    let state = pagination::lazy_members(&rooms, &room_id, &filter, &page.events).await?;
    let events = super::relations::client_events(&rooms, &user.user_id, upto, &page.events).await?;
    let mut body = BTreeMap::new();
    body.insert("chunk", json!(events));
    // A client's own `from` goes back as it came (a sync token stays a sync token).
    body.insert("start", json!(q.from.clone().unwrap_or_else(|| start.to_string())));
    if let Some(end) = page.next {
        body.insert("end", json!(end.to_string()));
    }
    if !state.is_empty() {
        body.insert("state", json!(state.iter().map(super::room_state::to_client).collect::<Vec<_>>()));
    }
    Ok(Json(json!(body)))
}
