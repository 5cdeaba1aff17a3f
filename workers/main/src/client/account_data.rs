//! Account data (global and per room), room tags, filters and push rules. Push rules live in
//! the global account data `m.push_rules`, so sync delivers them like any other account data.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use ruma::UserId;
use serde_json::{Value, json};

use super::parse_room_id;
use crate::UserData;

/// Only the owner reads and writes their account data.
fn own(user: &AuthUser, path_user: &str, what: &str) -> Result<(), MatrixError> {
    if user.user_id.as_str() != path_user {
        return Err(MatrixError::forbidden(format!("Cannot access {what} of other users")));
    }
    Ok(())
}

/// Types the server controls: clients change them through their own endpoints.
fn server_controlled(data_type: &str) -> Result<(), MatrixError> {
    if matches!(data_type, "m.fully_read" | "m.push_rules") {
        return Err(MatrixError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
            format!("Cannot set {data_type} through account data; it is controlled by the server"),
        ));
    }
    Ok(())
}

async fn get_data(data: &UserData, user: &UserId, room: &str, data_type: &str) -> Result<Json<Value>, MatrixError> {
    if room.is_empty() && data_type == "m.push_rules" {
        return Ok(Json(push_rules_content(data, user).await?));
    }
    let content =
        data.store.get(user, room, data_type).await?.ok_or_else(|| MatrixError::not_found("Account data not found"))?;
    Ok(Json(serde_json::from_str(&content).map_err(MatrixError::internal)?))
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`.
pub(crate) async fn get_global(
    State(data): State<UserData>,
    user: AuthUser,
    Path((user_id, data_type)): Path<(String, String)>,
) -> Result<Json<Value>, MatrixError> {
    own(&user, &user_id, "account data")?;
    get_data(&data, &user.user_id, "", &data_type).await
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`.
pub(crate) async fn put_global(
    State(data): State<UserData>,
    user: AuthUser,
    Path((user_id, data_type)): Path<(String, String)>,
    MatrixJson(content): MatrixJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    own(&user, &user_id, "account data")?;
    server_controlled(&data_type)?;
    data.writer.put(&user.user_id, "", &data_type, &Value::Object(content)).await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`.
pub(crate) async fn get_room(
    State(data): State<UserData>,
    user: AuthUser,
    Path((user_id, room_id, data_type)): Path<(String, String, String)>,
) -> Result<Json<Value>, MatrixError> {
    own(&user, &user_id, "account data")?;
    let room_id = parse_room_id(&room_id)?;
    get_data(&data, &user.user_id, room_id.as_str(), &data_type).await
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`.
pub(crate) async fn put_room(
    State(data): State<UserData>,
    user: AuthUser,
    Path((user_id, room_id, data_type)): Path<(String, String, String)>,
    MatrixJson(content): MatrixJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    own(&user, &user_id, "account data")?;
    let room_id = parse_room_id(&room_id)?;
    server_controlled(&data_type)?;
    data.writer.put(&user.user_id, room_id.as_str(), &data_type, &Value::Object(content)).await?;
    Ok(Json(json!({})))
}

async fn tags_of(data: &UserData, user: &UserId, room: &str) -> Result<serde_json::Map<String, Value>, MatrixError> {
    Ok(match data.store.get(user, room, "m.tag").await? {
        Some(c) => serde_json::from_str::<Value>(&c)
            .ok()
            .and_then(|v| v.get("tags").and_then(Value::as_object).cloned())
            .unwrap_or_default(),
        None => serde_json::Map::new(),
    })
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`.
pub(crate) async fn get_tags(
    State(data): State<UserData>,
    user: AuthUser,
    Path((user_id, room_id)): Path<(String, String)>,
) -> Result<Json<Value>, MatrixError> {
    own(&user, &user_id, "tags")?;
    let room_id = parse_room_id(&room_id)?;
    Ok(Json(json!({ "tags": tags_of(&data, &user.user_id, room_id.as_str()).await? })))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`.
pub(crate) async fn put_tag(
    State(data): State<UserData>,
    user: AuthUser,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
    MatrixJson(body): MatrixJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    own(&user, &user_id, "tags")?;
    let room_id = parse_room_id(&room_id)?;
    if tag.is_empty() || tag.len() > 255 {
        return Err(MatrixError::invalid_param("Invalid tag"));
    }
    if body.get("order").is_some_and(|o| !o.is_number()) {
        return Err(MatrixError::bad_json("order must be a number"));
    }
    let mut tags = tags_of(&data, &user.user_id, room_id.as_str()).await?;
    tags.insert(tag, Value::Object(body));
    data.writer.put(&user.user_id, room_id.as_str(), "m.tag", &json!({ "tags": tags })).await?;
    Ok(Json(json!({})))
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`.
pub(crate) async fn delete_tag(
    State(data): State<UserData>,
    user: AuthUser,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
) -> Result<Json<Value>, MatrixError> {
    own(&user, &user_id, "tags")?;
    let room_id = parse_room_id(&room_id)?;
    let mut tags = tags_of(&data, &user.user_id, room_id.as_str()).await?;
    if tags.remove(&tag).is_some() {
        data.writer.put(&user.user_id, room_id.as_str(), "m.tag", &json!({ "tags": tags })).await?;
    }
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/user/{userId}/filter`.
pub(crate) async fn create_filter(
    State(data): State<UserData>,
    user: AuthUser,
    Path(user_id): Path<String>,
    MatrixJson(filter): MatrixJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    own(&user, &user_id, "filters")?;
    let filter = Value::Object(filter);
    // Checked against the spec's shape, so a later sync never meets a filter it cannot read.
    serde_json::from_value::<ruma::api::client::filter::FilterDefinition>(filter.clone())
        .map_err(|e| MatrixError::bad_json(format!("Invalid filter: {e}")))?;
    let filter_id = crate::writer::random_localpart(8);
    data.users.create_filter(&user.user_id, &filter_id, &filter.to_string()).await?;
    Ok(Json(json!({ "filter_id": filter_id })))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`.
pub(crate) async fn get_filter(
    State(data): State<UserData>,
    user: AuthUser,
    Path((user_id, filter_id)): Path<(String, String)>,
) -> Result<Json<Value>, MatrixError> {
    own(&user, &user_id, "filters")?;
    let json =
        data.users.filter(&user.user_id, &filter_id).await?.ok_or_else(|| MatrixError::not_found("No such filter"))?;
    Ok(Json(serde_json::from_str(&json).map_err(MatrixError::internal)?))
}

/// The user's push rules: the stored ones with the server defaults brought up to date (or the
/// defaults), and the room or sender rules kept beside them whose IDs ruma cannot type
/// (`ganglion_core::push_rules::split_loose`).
pub(crate) async fn user_push_rules(
    data: &UserData,
    user: &UserId,
) -> Result<(ruma::push::Ruleset, Vec<(String, Value)>), MatrixError> {
    let Some(saved) = data.store.get(user, "", "m.push_rules").await? else {
        return Ok((ganglion_core::push_rules::server_default(user), Vec::new()));
    };
    let saved: Value = serde_json::from_str(&saved).map_err(MatrixError::internal)?;
    let (typed, loose) = ganglion_core::push_rules::split_loose(&saved["global"]);
    Ok((ganglion_core::push_rules::effective(Some(&typed), user), loose))
}

/// The user's push rules as `GET /pushrules/` answers them.
pub(crate) async fn push_rules_content(data: &UserData, user: &UserId) -> Result<Value, MatrixError> {
    let (rules, loose) = user_push_rules(data, user).await?;
    let mut global = serde_json::to_value(rules).map_err(MatrixError::internal)?;
    ganglion_core::push_rules::merge_loose(&mut global, &loose);
    Ok(json!({ "global": global }))
}

/// `GET /_matrix/client/v3/pushrules/`.
pub(crate) async fn get_push_rules(State(data): State<UserData>, user: AuthUser) -> Result<Json<Value>, MatrixError> {
    Ok(Json(push_rules_content(&data, &user.user_id).await?))
}

/// `GET /_matrix/client/v3/pushrules/global/`.
pub(crate) async fn get_global_push_rules(
    State(data): State<UserData>,
    user: AuthUser,
) -> Result<Json<Value>, MatrixError> {
    Ok(Json(push_rules_content(&data, &user.user_id).await?["global"].clone()))
}
