//! Dehydrated devices (MSC3814, `/_matrix/client/unstable/org.matrix.msc3814.v1/`): a device the
//! server keeps for a user while none of their devices is online. Others encrypt to it like any
//! device; a new login downloads its encrypted pickle and the to-device messages it received.
//!
//! The device is an ordinary device without access tokens, so to-device delivery, key claims and
//! device lists need nothing special. Its messages are kept until the device is replaced or
//! deleted: a client that fails halfway through rehydrating can start again.

use axum::Json;
use axum::extract::{Path, State};
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use ruma::UserId;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::keys::{UploadBody, store_uploaded_keys};
use crate::Keys;

/// At most this many to-device messages per `/events` page.
const EVENTS_PAGE: i64 = 100;

#[derive(Debug, Deserialize)]
pub(crate) struct PutBody {
    device_id: String,
    device_data: Map<String, Value>,
    initial_device_display_name: Option<String>,
    #[serde(flatten)]
    keys: UploadBody,
}

async fn delete_device(keys: &Keys, user_id: &UserId, device_id: &str) -> Result<(), MatrixError> {
    keys.users.delete_device(user_id, device_id).await?;
    keys.e2ee.delete_device(user_id, device_id).await?;
    keys.pushers.remove_for_device(user_id, device_id).await?;
    Ok(())
}

/// `PUT /dehydrated_device`: stores a new dehydrated device with its keys, replacing (and
/// deleting) the previous one.
pub(crate) async fn put(
    State(keys): State<Keys>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<PutBody>,
) -> Result<Json<Value>, MatrixError> {
    let device_id = body.device_id.as_str();
    if device_id.is_empty() || device_id.len() > 255 {
        return Err(MatrixError::invalid_param("device_id must be 1 to 255 bytes"));
    }
    if body.keys.device_keys.is_none() {
        return Err(MatrixError::missing_param("device_keys is required"));
    }
    let current = keys.e2ee.dehydrated_device(&user.user_id).await?.map(|(d, _)| d);
    if current.as_deref() != Some(device_id) && keys.users.device(&user.user_id, device_id).await?.is_some() {
        return Err(MatrixError::invalid_param(format!("Device {device_id} already exists")));
    }
    // Keys first: a body with bad keys must not leave a half-made device behind.
    super::keys::check_uploaded_keys(&body.keys, &user.user_id, device_id)?;
    let data = Value::Object(body.device_data).to_string();
    if let Some(previous) = keys.e2ee.set_dehydrated_device(&user.user_id, device_id, &data).await? {
        delete_device(&keys, &user.user_id, &previous).await?;
    }
    keys.users.upsert_device(&user.user_id, device_id, body.initial_device_display_name.as_deref()).await?;
    store_uploaded_keys(&keys, &user.user_id, device_id, &body.keys).await?;
    keys.writer.device_list_changed(&user.user_id).await?;
    Ok(Json(json!({ "device_id": device_id })))
}

fn none_available() -> MatrixError {
    MatrixError::not_found("No dehydrated device available")
}

/// `GET /dehydrated_device`: the device's ID and its encrypted pickle.
pub(crate) async fn get(State(keys): State<Keys>, user: AuthUser) -> Result<Json<Value>, MatrixError> {
    let (device_id, data) = keys.e2ee.dehydrated_device(&user.user_id).await?.ok_or_else(none_available)?;
    let data: Value = serde_json::from_str(&data).unwrap_or_else(|_| json!({}));
    Ok(Json(json!({ "device_id": device_id, "device_data": data })))
}

/// `DELETE /dehydrated_device`: deletes the device with its keys and messages.
pub(crate) async fn delete(State(keys): State<Keys>, user: AuthUser) -> Result<Json<Value>, MatrixError> {
    let device_id = keys.e2ee.remove_dehydrated_device(&user.user_id).await?.ok_or_else(none_available)?;
    delete_device(&keys, &user.user_id, &device_id).await?;
    keys.writer.device_list_changed(&user.user_id).await?;
    Ok(Json(json!({ "device_id": device_id })))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct EventsBody {
    next_batch: Option<String>,
}

/// `POST /dehydrated_device/{deviceId}/events`: the device's to-device messages, a page at a
/// time. `next_batch` is the stream position of the last message returned.
pub(crate) async fn events(
    State(keys): State<Keys>,
    user: AuthUser,
    Path(device_id): Path<String>,
    MatrixJson(body): MatrixJson<EventsBody>,
) -> Result<Json<Value>, MatrixError> {
    let current = keys.e2ee.dehydrated_device(&user.user_id).await?.map(|(d, _)| d);
    if current.as_deref() != Some(device_id.as_str()) {
        return Err(MatrixError::forbidden("You may only fetch messages for your dehydrated device"));
    }
    let after = match body.next_batch.as_deref() {
        None => 0,
        Some(t) => {
            t.parse::<i64>().ok().filter(|p| *p >= 0).ok_or_else(|| MatrixError::invalid_param("Invalid next_batch"))?
        }
    };
    let messages = keys.e2ee.to_device_after_for(&user.user_id, &device_id, after, EVENTS_PAGE).await?;
    let next = messages.last().map_or(after, |m| m.position);
    let events: Vec<Value> = messages
        .iter()
        .map(|m| {
            let content: Value = serde_json::from_str(&m.content).unwrap_or_else(|_| json!({}));
            json!({ "type": m.event_type, "sender": m.sender, "content": content })
        })
        .collect();
    Ok(Json(json!({ "events": events, "next_batch": next.to_string() })))
}
