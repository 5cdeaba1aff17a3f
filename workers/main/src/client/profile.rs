//! Profiles: `GET /profile/{userId}`, the display name and avatar fields, and extended profile
//! fields (spec v1.16: any namespaced key, e.g. `m.tz`, with a JSON value). A display name or avatar
//! change is copied into the user's member event in every room they are in, in the background: the
//! request returns once the profile is stored.

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::{Extension, Json};
use ganglion_core::EventTemplate;
use ganglion_http::{AuthUser, MatrixError, MatrixJson, RequestId};
use ruma::OwnedUserId;
use serde_json::{Value, json};

use crate::writer::WriteOrigin;
use crate::{Rooms, UserData};

const FIELDS: &[&str] = &["displayname", "avatar_url"];

/// The spec's limit on a key name, in bytes (`M_KEY_TOO_LARGE` beyond it).
const MAX_KEY_BYTES: usize = 255;
/// The spec's limit on a whole profile as JSON, in bytes (`M_PROFILE_TOO_LARGE` beyond it).
const MAX_PROFILE_BYTES: usize = 64 * 1024;

/// Checks a key name against the spec's grammar: `displayname`, `avatar_url`, or a namespaced
/// identifier (`[a-z][a-z0-9_]*` segments joined by dots, at least two).
fn check_key(key: &str) -> Result<(), MatrixError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(MatrixError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "M_KEY_TOO_LARGE",
            format!("Profile keys may be at most {MAX_KEY_BYTES} bytes"),
        ));
    }
    let segment_ok = |seg: &str| {
        let mut b = seg.bytes();
        b.next().is_some_and(|c| c.is_ascii_lowercase())
            && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    };
    let namespaced = key.split('.').count() >= 2 && key.split('.').all(segment_ok);
    if FIELDS.contains(&key) || namespaced {
        Ok(())
    } else {
        Err(MatrixError::invalid_param(format!("Invalid profile key {key}")))
    }
}

/// The whole profile as the spec's `GET /profile/{userId}` returns it.
async fn full_profile(data: &UserData, user_id: &OwnedUserId) -> Result<serde_json::Map<String, Value>, MatrixError> {
    if user_id.server_name() != data.server_name {
        return remote_profile(data, user_id).await;
    }
    let (name, avatar) = load(data, user_id).await?;
    let mut body = serde_json::Map::new();
    for (key, value) in data.users.profile_fields(user_id).await? {
        body.insert(key, value);
    }
    if let Some(n) = name {
        body.insert("displayname".into(), json!(n));
    }
    if let Some(a) = avatar {
        body.insert("avatar_url".into(), json!(a));
    }
    Ok(body)
}

fn parse_user(s: &str) -> Result<OwnedUserId, MatrixError> {
    OwnedUserId::try_from(s).map_err(|e| MatrixError::invalid_param(format!("Invalid user ID {s}: {e}")))
}

async fn load(data: &UserData, user_id: &OwnedUserId) -> Result<(Option<String>, Option<String>), MatrixError> {
    if let Some(profile) = data.users.profile(user_id).await? {
        return Ok(profile);
    }
    // A user of an application service's namespace may come into existence when the service is
    // asked about it (`GET /_matrix/app/v1/users/{userId}`), as a bridge creates its puppets.
    for reg in data.appservices.interested_in_user(user_id.as_str()) {
        if let Err(e) = data.appservice_client.query_user(reg, user_id.as_str()).await {
            tracing::warn!(appservice = %reg.id, %user_id, error = %e, "user query to the application service failed");
        }
        if let Some(profile) = data.users.profile(user_id).await? {
            return Ok(profile);
        }
    }
    Err(MatrixError::not_found("Profile not found"))
}

/// How long a remote user's profile is reused before asking their server again.
const REMOTE_PROFILE_TTL: Duration = Duration::from_secs(60);
/// Remote profiles kept in memory.
const REMOTE_PROFILES: usize = 1024;

/// A remote user's profile, asked of their server (`/_matrix/federation/v1/query/profile`) and
/// kept for a minute. Their server's error is passed on; an unreachable server is a 502.
async fn remote_profile(data: &UserData, user_id: &OwnedUserId) -> Result<serde_json::Map<String, Value>, MatrixError> {
    {
        let cache = data.remote_profiles.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, profile)) = cache.get(user_id)
            && at.elapsed() < REMOTE_PROFILE_TTL
        {
            return Ok(profile.clone());
        }
    }
    let user = form_urlencoded::byte_serialize(user_id.as_str().as_bytes()).collect::<String>();
    let query = format!("/_matrix/federation/v1/query/profile?user_id={user}");
    let resp = data.federation.get(user_id.server_name(), &query).await.map_err(|e| {
        tracing::info!(%user_id, error = %e, "remote profile query failed");
        MatrixError::new(axum::http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", "Failed to fetch profile")
    })?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let errcode = match body["errcode"].as_str() {
            Some("M_NOT_FOUND") => "M_NOT_FOUND",
            Some("M_FORBIDDEN") => "M_FORBIDDEN",
            _ => "M_UNKNOWN",
        };
        let status = axum::http::StatusCode::from_u16(status.as_u16()).unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
        let message = body["error"].as_str().unwrap_or("Failed to fetch profile").to_owned();
        return Err(MatrixError::new(status, errcode, message));
    }
    let Value::Object(profile) = body else {
        return Err(MatrixError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            "The remote profile is not an object",
        ));
    };
    let mut cache = data.remote_profiles.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if cache.len() >= REMOTE_PROFILES {
        cache.retain(|_, (at, _)| at.elapsed() < REMOTE_PROFILE_TTL);
        if cache.len() >= REMOTE_PROFILES {
            cache.clear();
        }
    }
    cache.insert(user_id.clone(), (Instant::now(), profile.clone()));
    Ok(profile)
}

/// `GET /_matrix/client/v3/profile/{userId}`: every field.
pub(crate) async fn get_profile(
    State(data): State<UserData>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    let user_id = parse_user(&user_id)?;
    Ok(Json(Value::Object(full_profile(&data, &user_id).await?)))
}

/// `GET /_matrix/client/v3/profile/{userId}/{keyName}`.
pub(crate) async fn get_field(
    State(data): State<UserData>,
    Path((user_id, field)): Path<(String, String)>,
) -> Result<Json<Value>, MatrixError> {
    let user_id = parse_user(&user_id)?;
    check_key(&field)?;
    let mut profile = full_profile(&data, &user_id).await?;
    let value = profile.remove(&field).ok_or_else(|| MatrixError::not_found(format!("No {field} set")))?;
    Ok(Json(json!({ field: value })))
}

/// `PUT /_matrix/client/v3/profile/{userId}/{keyName}`.
pub(crate) async fn put_field(
    State(data): State<UserData>,
    State(rooms): State<Rooms>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path((user_id, field)): Path<(String, String)>,
    MatrixJson(body): MatrixJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    if user.user_id.as_str() != user_id {
        return Err(MatrixError::forbidden("Cannot change another user's profile"));
    }
    check_key(&field)?;
    let Some(raw) = body.get(field.as_str()) else {
        return Err(MatrixError::missing_param(format!("The body must hold {field}")));
    };
    if !FIELDS.contains(&field.as_str()) {
        if field == "m.tz" && !raw.is_string() {
            return Err(MatrixError::invalid_param("m.tz must be a string (an IANA time zone)"));
        }
        let mut profile = full_profile(&data, &user.user_id).await?;
        profile.insert(field.clone(), raw.clone());
        check_size(&profile)?;
        data.users.set_profile_custom_field(&user.user_id, &field, raw).await?;
        return Ok(Json(json!({})));
    }
    let value = match raw {
        Value::Null => None,
        Value::String(s) if s.len() <= 256 => Some(s.clone()),
        Value::String(_) => return Err(MatrixError::too_large(format!("{field} is too long"))),
        _ => return Err(MatrixError::bad_json(format!("{field} must be a string"))),
    };
    if field == "avatar_url" && value.as_deref().is_some_and(|v| !v.is_empty() && !v.starts_with("mxc://")) {
        return Err(MatrixError::invalid_param("avatar_url must be an mxc:// URI"));
    }
    let mut profile = full_profile(&data, &user.user_id).await?;
    profile.insert(field.clone(), raw.clone());
    check_size(&profile)?;
    set_standard_field(data, rooms, &user, req, &field, value.as_deref()).await
}

/// `DELETE /_matrix/client/v3/profile/{userId}/{keyName}` (spec v1.16).
pub(crate) async fn delete_field(
    State(data): State<UserData>,
    State(rooms): State<Rooms>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path((user_id, field)): Path<(String, String)>,
) -> Result<Json<Value>, MatrixError> {
    if user.user_id.as_str() != user_id {
        return Err(MatrixError::forbidden("Cannot change another user's profile"));
    }
    check_key(&field)?;
    if FIELDS.contains(&field.as_str()) {
        return set_standard_field(data, rooms, &user, req, &field, None).await;
    }
    data.users.delete_profile_custom_field(&user.user_id, &field).await?;
    Ok(Json(json!({})))
}

fn check_size(profile: &serde_json::Map<String, Value>) -> Result<(), MatrixError> {
    if serde_json::to_vec(profile).map_or(usize::MAX, |v| v.len()) > MAX_PROFILE_BYTES {
        return Err(MatrixError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "M_PROFILE_TOO_LARGE",
            "The profile would exceed 64 KiB",
        ));
    }
    Ok(())
}

/// Stores `displayname` or `avatar_url` and copies it into the user's member events.
async fn set_standard_field(
    data: UserData,
    rooms: Rooms,
    user: &AuthUser,
    req: Option<Extension<RequestId>>,
    field: &str,
    value: Option<&str>,
) -> Result<Json<Value>, MatrixError> {
    data.users.set_profile_field(&user.user_id, field, value).await?;
    let request_id = req.map(|r| r.0.0).unwrap_or_default();
    tokio::spawn(propagate(rooms, data, user.user_id.clone(), request_id));
    Ok(Json(json!({})))
}

/// Copies the profile into the user's member event of each joined room. Propagations run one at
/// a time and read the profile once they hold the lock, so the last one always writes the latest
/// profile even when two changes race.
async fn propagate(rooms: Rooms, data: UserData, user: OwnedUserId, request_id: String) {
    let _turn = data.propagation.lock().await;
    let result: Result<(), MatrixError> = async {
        let (name, avatar) = data.users.profile(&user).await?.unwrap_or_default();
        let origin = WriteOrigin { txn: None, request_id, ts: None };
        for m in rooms.events.rooms_for_user(&user).await? {
            if m.membership != "join" {
                continue;
            }
            let mut content = json!({ "membership": "join" });
            if let Some(n) = &name {
                content["displayname"] = json!(n);
            }
            if let Some(a) = &avatar {
                content["avatar_url"] = json!(a);
            }
            let template = EventTemplate { event_type: "m.room.member".into(), state_key: Some(user.to_string()), content };
            if let Err(e) = rooms.writer.send(&m.room_id, &user, template, &origin).await {
                tracing::warn!(room_id = %m.room_id, error = %e, "could not update the member event with the new profile");
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(user_id = %user, error = %e, "profile propagation failed");
    }
}
