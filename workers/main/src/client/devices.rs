//! Devices: list, get, rename, and delete behind User-Interactive Auth (password). Deleting a
//! device logs it out and removes its keys and to-device inbox. An application service with
//! `io.element.msc4190` manages its users' devices itself (MSC4190): `PUT` creates a missing
//! device, and deleting needs no UIA.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Keys;

fn device_json(d: &ganglion_storage::DeviceInfo, user: &str) -> Value {
    json!({ "device_id": d.device_id, "display_name": d.display_name, "user_id": user })
}

/// `GET /_matrix/client/v3/devices`.
pub(crate) async fn list(State(keys): State<Keys>, user: AuthUser) -> Result<Json<Value>, MatrixError> {
    let devices = keys.users.devices(&user.user_id).await?;
    let list: Vec<Value> = devices
        .iter()
        .map(|d| {
            let mut v = device_json(d, user.user_id.as_str());
            v.as_object_mut().map(|o| o.remove("user_id"));
            v
        })
        .collect();
    Ok(Json(json!({ "devices": list })))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`.
pub(crate) async fn get(
    State(keys): State<Keys>,
    user: AuthUser,
    Path(device_id): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    let d = keys
        .users
        .device(&user.user_id, &device_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("Device not found"))?;
    let mut v = device_json(&d, user.user_id.as_str());
    v.as_object_mut().map(|o| o.remove("user_id"));
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
pub(crate) struct RenameBody {
    display_name: Option<String>,
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`.
pub(crate) async fn rename(
    State(keys): State<Keys>,
    user: AuthUser,
    Path(device_id): Path<String>,
    MatrixJson(body): MatrixJson<RenameBody>,
) -> Result<Response, MatrixError> {
    if body.display_name.as_deref().is_some_and(|n| n.len() > 100) {
        return Err(MatrixError::invalid_param("display_name is too long"));
    }
    if !keys.users.rename_device(&user.user_id, &device_id, body.display_name.as_deref()).await? {
        if !manages_devices(&user) {
            return Err(MatrixError::not_found("Device not found"));
        }
        if device_id.is_empty() || device_id.len() > 255 {
            return Err(MatrixError::invalid_param("Invalid device ID"));
        }
        keys.users.upsert_device(&user.user_id, &device_id, body.display_name.as_deref()).await?;
        keys.writer.device_list_changed(&user.user_id).await?;
        return Ok((StatusCode::CREATED, Json(json!({}))).into_response());
    }
    keys.writer.device_list_changed(&user.user_id).await?;
    Ok(Json(json!({})).into_response())
}

/// Whether the request is an application service managing its users' devices (MSC4190).
fn manages_devices(user: &AuthUser) -> bool {
    user.appservice.as_ref().is_some_and(|a| a.msc4190)
}

#[derive(Debug, Deserialize)]
pub(crate) struct Identifier {
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PasswordAuth {
    #[serde(rename = "type")]
    kind: Option<String>,
    identifier: Option<Identifier>,
    user: Option<String>,
    password: Option<String>,
    pub(crate) session: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeleteBody {
    auth: Option<PasswordAuth>,
    #[serde(default)]
    devices: Vec<String>,
}

/// Checks User-Interactive Auth with `m.login.password` for the requesting user. `Ok(None)` means
/// authenticated; `Ok(Some(response))` is the 401 challenge to return.
pub(crate) async fn password_uia(
    keys: &Keys,
    user: &AuthUser,
    auth: Option<&PasswordAuth>,
) -> Result<Option<Response>, MatrixError> {
    let challenge = |session: String, error: Option<(&str, &str)>| {
        let mut body = json!({ "flows": [{ "stages": ["m.login.password"] }], "params": {}, "session": session });
        if let Some((code, msg)) = error {
            body["errcode"] = json!(code);
            body["error"] = json!(msg);
            body["completed"] = json!([]);
        }
        (StatusCode::UNAUTHORIZED, Json(body)).into_response()
    };
    let Some(auth) = auth else {
        let session = crate::writer::random_localpart(24);
        keys.users.create_uia_session(&session).await?;
        return Ok(Some(challenge(session, None)));
    };
    let session = auth.session.clone().unwrap_or_default();
    if auth.kind.as_deref() != Some("m.login.password") {
        return Ok(Some(challenge(session, Some(("M_UNKNOWN", "Unsupported authentication type")))));
    }
    let claimed =
        auth.identifier.as_ref().and_then(|i| i.user.clone()).or_else(|| auth.user.clone()).unwrap_or_default();
    let matches_user = claimed == user.user_id.as_str() || claimed == user.user_id.localpart();
    let Some(stored) = keys.users.password_hash(&user.user_id).await? else {
        return Ok(Some(challenge(session, Some(("M_FORBIDDEN", "Invalid password")))));
    };
    if !matches_user || !keys.hasher.verify(auth.password.clone().unwrap_or_default(), stored).await {
        return Ok(Some(challenge(session, Some(("M_FORBIDDEN", "Invalid password")))));
    }
    Ok(None)
}

async fn delete_all(keys: &Keys, user: &AuthUser, devices: &[String]) -> Result<(), MatrixError> {
    for d in devices {
        keys.users.delete_device(&user.user_id, d).await?;
        keys.e2ee.delete_device(&user.user_id, d).await?;
        keys.pushers.remove_for_device(&user.user_id, d).await?;
    }
    if !devices.is_empty() {
        keys.writer.device_list_changed(&user.user_id).await?;
    }
    Ok(())
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`.
pub(crate) async fn delete(
    State(keys): State<Keys>,
    user: AuthUser,
    Path(device_id): Path<String>,
    MatrixJson(body): MatrixJson<DeleteBody>,
) -> Result<Response, MatrixError> {
    if keys.users.device(&user.user_id, &device_id).await?.is_none() {
        return Err(MatrixError::not_found("Device not found"));
    }
    if !manages_devices(&user)
        && let Some(challenge) = password_uia(&keys, &user, body.auth.as_ref()).await?
    {
        return Ok(challenge);
    }
    delete_all(&keys, &user, &[device_id]).await?;
    Ok(Json(json!({})).into_response())
}

/// `POST /_matrix/client/v3/delete_devices`.
pub(crate) async fn delete_many(
    State(keys): State<Keys>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<DeleteBody>,
) -> Result<Response, MatrixError> {
    if !manages_devices(&user)
        && let Some(challenge) = password_uia(&keys, &user, body.auth.as_ref()).await?
    {
        return Ok(challenge);
    }
    delete_all(&keys, &user, &body.devices).await?;
    Ok(Json(json!({})).into_response())
}
