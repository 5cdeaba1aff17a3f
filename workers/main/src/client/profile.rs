//! Profiles: `GET /profile/{userId}` and the display name and avatar fields. A change is copied
//! into the user's member event in every room they are in, in the background: the request
//! returns once the profile is stored.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use ganglion_core::EventTemplate;
use ganglion_http::{AuthUser, MatrixError, MatrixJson, RequestId};
use ruma::OwnedUserId;
use serde_json::{Value, json};

use crate::writer::WriteOrigin;
use crate::{Rooms, UserData};

const FIELDS: &[&str] = &["displayname", "avatar_url"];

fn parse_user(s: &str) -> Result<OwnedUserId, MatrixError> {
    OwnedUserId::try_from(s).map_err(|e| MatrixError::invalid_param(format!("Invalid user ID {s}: {e}")))
}

async fn load(data: &UserData, user_id: &OwnedUserId) -> Result<(Option<String>, Option<String>), MatrixError> {
    if user_id.server_name() != data.server_name {
        // Remote profiles come over federation once it exists.
        return Err(MatrixError::not_found("Profile not found"));
    }
    data.users.profile(user_id).await?.ok_or_else(|| MatrixError::not_found("Profile not found"))
}

/// `GET /_matrix/client/v3/profile/{userId}`.
pub(crate) async fn get_profile(
    State(data): State<UserData>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    let user_id = parse_user(&user_id)?;
    let (name, avatar) = load(&data, &user_id).await?;
    let mut body = serde_json::Map::new();
    if let Some(n) = name {
        body.insert("displayname".into(), json!(n));
    }
    if let Some(a) = avatar {
        body.insert("avatar_url".into(), json!(a));
    }
    Ok(Json(Value::Object(body)))
}

/// `GET /_matrix/client/v3/profile/{userId}/{field}`.
pub(crate) async fn get_field(
    State(data): State<UserData>,
    Path((user_id, field)): Path<(String, String)>,
) -> Result<Json<Value>, MatrixError> {
    let user_id = parse_user(&user_id)?;
    let (name, avatar) = load(&data, &user_id).await?;
    let value = match field.as_str() {
        "displayname" => name,
        "avatar_url" => avatar,
        _ => return Err(MatrixError::not_found(format!("Unknown profile field {field}"))),
    };
    let value = value.ok_or_else(|| MatrixError::not_found(format!("No {field} set")))?;
    Ok(Json(json!({ field: value })))
}

/// `PUT /_matrix/client/v3/profile/{userId}/{field}`.
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
    if !FIELDS.contains(&field.as_str()) {
        return Err(MatrixError::not_found(format!("Unknown profile field {field}")));
    }
    let value = match body.get(field.as_str()) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 256 => Some(s.clone()),
        Some(Value::String(_)) => return Err(MatrixError::too_large(format!("{field} is too long"))),
        Some(_) => return Err(MatrixError::bad_json(format!("{field} must be a string"))),
    };
    if field == "avatar_url" && value.as_deref().is_some_and(|v| !v.is_empty() && !v.starts_with("mxc://")) {
        return Err(MatrixError::invalid_param("avatar_url must be an mxc:// URI"));
    }
    data.users.set_profile_field(&user.user_id, &field, value.as_deref()).await?;
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
        let origin = WriteOrigin { txn: None, request_id };
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
