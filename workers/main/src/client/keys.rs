//! End-to-end encryption keys and to-device messages: `/keys/upload`, `/keys/query`,
//! `/keys/claim`, `/keys/changes`, cross-signing uploads and `/sendToDevice`. Remote users are
//! answered under `failures` until federation plugs in here.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use ganglion_replication::SyncToken;
use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::devices::{PasswordAuth, password_uia};
use crate::Keys;
use crate::e2ee_writer::OutgoingToDevice;

/// A user ID from a request body, or `M_INVALID_PARAM`.
fn parse_user(uid: &str) -> Result<OwnedUserId, MatrixError> {
    OwnedUserId::try_from(uid).map_err(|_| MatrixError::invalid_param(format!("Invalid user ID {uid}")))
}

/// Whether `target` is ours. Remote users go under `failures` for their server: this is the one
/// place federation will plug in to ask the remote server instead.
fn is_local(keys: &Keys, target: &OwnedUserId, failures: &mut Map<String, Value>) -> bool {
    if target.server_name() == keys.server_name {
        return true;
    }
    failures
        .insert(target.server_name().to_string(), json!({ "status": 503, "message": "Federation is not available" }));
    false
}

#[derive(Debug, Deserialize)]
pub(crate) struct UploadBody {
    device_keys: Option<Map<String, Value>>,
    #[serde(default)]
    one_time_keys: Map<String, Value>,
    #[serde(default)]
    fallback_keys: Map<String, Value>,
}

/// Checks a device's self-signature: the keys must be signed by the device's own ed25519 key.
fn verify_self_signed(keys: &Map<String, Value>, user: &UserId, device_id: &str) -> Result<(), MatrixError> {
    let key_id = format!("ed25519:{device_id}");
    let ed25519 = keys
        .get("keys")
        .and_then(|k| k.get(&key_id))
        .and_then(Value::as_str)
        .ok_or_else(|| MatrixError::bad_json(format!("device_keys.keys has no {key_id}")))?;
    let public = ruma::serde::Base64::<ruma::serde::base64::Standard>::parse(ed25519)
        .map_err(|_| MatrixError::bad_json("the ed25519 key is not base64"))?;
    let mut entity = BTreeMap::new();
    entity.insert(key_id, public);
    let mut map = ruma::signatures::PublicKeyMap::new();
    map.insert(user.to_string(), entity);
    let object: ruma::CanonicalJsonObject = serde_json::from_value(Value::Object(keys.clone()))
        .map_err(|e| MatrixError::bad_json(format!("device_keys is not canonical JSON: {e}")))?;
    ruma::signatures::verify_json(&map, &object)
        .map_err(|e| MatrixError::bad_json(format!("device_keys signature: {e}")))
}

/// `POST /_matrix/client/v3/keys/upload`.
pub(crate) async fn upload(
    State(keys): State<Keys>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<UploadBody>,
) -> Result<Json<Value>, MatrixError> {
    let device = user.device_id.as_str();
    if let Some(dk) = &body.device_keys {
        if dk.get("user_id").and_then(Value::as_str) != Some(user.user_id.as_str())
            || dk.get("device_id").and_then(Value::as_str) != Some(device)
        {
            return Err(MatrixError::bad_json("device_keys must be for the requesting user and device"));
        }
        verify_self_signed(dk, &user.user_id, device)?;
        let json = Value::Object(dk.clone()).to_string();
        if keys.e2ee.set_device_keys(&user.user_id, device, &json).await? {
            keys.writer.device_list_changed(&user.user_id).await?;
        }
    }
    let otks: Vec<(String, String)> = body.one_time_keys.iter().map(|(id, k)| (id.clone(), k.to_string())).collect();
    if otks.iter().any(|(id, _)| !id.contains(':')) {
        return Err(MatrixError::bad_json("one-time key IDs are algorithm:id"));
    }
    keys.e2ee.add_one_time_keys(&user.user_id, device, &otks).await?;
    for (id, k) in &body.fallback_keys {
        if !id.contains(':') {
            return Err(MatrixError::bad_json("fallback key IDs are algorithm:id"));
        }
        keys.e2ee.set_fallback_key(&user.user_id, device, id, &k.to_string()).await?;
    }
    let counts: Map<String, Value> =
        keys.e2ee.one_time_key_counts(&user.user_id, device).await?.into_iter().map(|(a, n)| (a, json!(n))).collect();
    Ok(Json(json!({ "one_time_key_counts": counts })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct QueryBody {
    device_keys: Map<String, Value>,
}

/// `POST /_matrix/client/v3/keys/query`.
pub(crate) async fn query(
    State(keys): State<Keys>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<QueryBody>,
) -> Result<Json<Value>, MatrixError> {
    let mut device_keys = Map::new();
    let mut master = Map::new();
    let mut self_signing = Map::new();
    let mut user_signing = Map::new();
    let mut failures = Map::new();
    for (uid, wanted) in &body.device_keys {
        let target = parse_user(uid)?;
        if !is_local(&keys, &target, &mut failures) {
            continue;
        }
        let wanted: Vec<&str> =
            wanted.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let names: BTreeMap<String, Option<String>> =
            keys.users.devices(&target).await?.into_iter().map(|d| (d.device_id.to_string(), d.display_name)).collect();
        let mut devices = Map::new();
        for (device_id, json) in keys.e2ee.device_keys(&target).await? {
            if !wanted.is_empty() && !wanted.contains(&device_id.as_str()) {
                continue;
            }
            let mut v: Value = serde_json::from_str(&json).unwrap_or_default();
            if let Some(Some(name)) = names.get(&device_id) {
                v["unsigned"] = json!({ "device_display_name": name });
            }
            devices.insert(device_id, v);
        }
        device_keys.insert(uid.clone(), Value::Object(devices));
        for (kind, json) in keys.e2ee.cross_signing_keys(&target).await? {
            let v: Value = serde_json::from_str(&json).unwrap_or_default();
            match kind.as_str() {
                "master" => {
                    master.insert(uid.clone(), v);
                }
                "self_signing" => {
                    self_signing.insert(uid.clone(), v);
                }
                // A user-signing key is only ever shown to its owner.
                "user_signing" if target == user.user_id => {
                    user_signing.insert(uid.clone(), v);
                }
                _ => {}
            }
        }
    }
    Ok(Json(json!({
        "device_keys": device_keys,
        "master_keys": master,
        "self_signing_keys": self_signing,
        "user_signing_keys": user_signing,
        "failures": failures,
    })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ClaimBody {
    one_time_keys: Map<String, Value>,
}

/// `POST /_matrix/client/v3/keys/claim`: one key per requested device, the fallback key when no
/// one-time key is left.
pub(crate) async fn claim(
    State(keys): State<Keys>,
    _user: AuthUser,
    MatrixJson(body): MatrixJson<ClaimBody>,
) -> Result<Json<Value>, MatrixError> {
    let mut claimed = Map::new();
    let mut failures = Map::new();
    for (uid, devices) in &body.one_time_keys {
        let target = parse_user(uid)?;
        if !is_local(&keys, &target, &mut failures) {
            continue;
        }
        let Some(devices) = devices.as_object() else {
            return Err(MatrixError::bad_json("one_time_keys values must be objects"));
        };
        let mut per_user = Map::new();
        for (device, algorithm) in devices {
            let Some(algorithm) = algorithm.as_str() else {
                return Err(MatrixError::bad_json("algorithms must be strings"));
            };
            if let Some((key_id, json)) = keys.e2ee.claim_key(&target, device, algorithm).await? {
                let mut one = Map::new();
                one.insert(key_id, serde_json::from_str(&json).unwrap_or_default());
                per_user.insert(device.clone(), Value::Object(one));
            }
        }
        if !per_user.is_empty() {
            claimed.insert(uid.clone(), Value::Object(per_user));
        }
    }
    Ok(Json(json!({ "one_time_keys": claimed, "failures": failures })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChangesQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `GET /_matrix/client/v3/keys/changes`: users sharing a room with the requester whose devices
/// changed between two sync tokens.
pub(crate) async fn changes(
    State(keys): State<Keys>,
    user: AuthUser,
    Query(q): Query<ChangesQuery>,
) -> Result<Json<Value>, MatrixError> {
    let parse = |t: Option<&str>, name: &str| -> Result<SyncToken, MatrixError> {
        t.ok_or_else(|| MatrixError::missing_param(format!("Missing {name}")))?
            .parse::<SyncToken>()
            .map_err(|_| MatrixError::invalid_param(format!("Invalid {name} token")))
    };
    let from = parse(q.from.as_deref(), "from")?;
    let to = parse(q.to.as_deref(), "to")?;
    let changed = keys.e2ee.users_with_device_changes(from.device_lists as i64, to.device_lists as i64).await?;
    let sharing = keys.events.users_sharing_rooms(&user.user_id).await?;
    let changed: Vec<String> =
        changed.into_iter().filter(|u| sharing.contains(u) || u == user.user_id.as_str()).collect();
    Ok(Json(json!({ "changed": changed, "left": [] })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeviceSigningBody {
    master_key: Option<Value>,
    self_signing_key: Option<Value>,
    user_signing_key: Option<Value>,
    auth: Option<PasswordAuth>,
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`: the first upload needs no UIA; replacing
/// existing keys does (password).
pub(crate) async fn device_signing_upload(
    State(keys): State<Keys>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<DeviceSigningBody>,
) -> Result<Response, MatrixError> {
    let existing = keys.e2ee.cross_signing_keys(&user.user_id).await?;
    let replacing = body.master_key.as_ref().is_some_and(|new| {
        existing.iter().any(|(k, json)| k == "master" && serde_json::from_str::<Value>(json).ok().as_ref() != Some(new))
    });
    if replacing && let Some(challenge) = password_uia(&keys, &user, body.auth.as_ref()).await? {
        return Ok(challenge);
    }
    let mut changed = false;
    for (kind, key) in [
        ("master", &body.master_key),
        ("self_signing", &body.self_signing_key),
        ("user_signing", &body.user_signing_key),
    ] {
        let Some(key) = key else { continue };
        if key.get("user_id").and_then(Value::as_str) != Some(user.user_id.as_str()) {
            return Err(MatrixError::invalid_param(format!("{kind} key is not for the requesting user")));
        }
        if key.get("keys").and_then(Value::as_object).is_none_or(|k| k.len() != 1) {
            return Err(MatrixError::invalid_param(format!("{kind} key must hold exactly one key")));
        }
        keys.e2ee.set_cross_signing_key(&user.user_id, kind, &key.to_string()).await?;
        changed = true;
    }
    if !changed && existing.is_empty() {
        return Err(MatrixError::missing_param("No cross-signing keys given"));
    }
    if changed {
        keys.writer.device_list_changed(&user.user_id).await?;
    }
    Ok(Json(json!({})).into_response())
}

/// `POST /_matrix/client/v3/keys/signatures/upload`: signatures are merged into the signed keys
/// (a device's keys, or the user's own cross-signing keys). Keys we do not have are reported
/// under `failures`.
pub(crate) async fn signatures_upload(
    State(keys): State<Keys>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    let mut failures = Map::new();
    for (uid, signed) in &body {
        let target = parse_user(uid)?;
        let Some(signed) = signed.as_object() else { return Err(MatrixError::bad_json("signed keys must be objects")) };
        let mut user_failures = Map::new();
        for (key_id, object) in signed {
            let new_sigs = object.get("signatures").and_then(Value::as_object).cloned().unwrap_or_default();
            let devices = keys.e2ee.device_keys(&target).await?;
            let cross = keys.e2ee.cross_signing_keys(&target).await?;
            let mut stored: Option<(bool, String, Value)> = devices
                .into_iter()
                .find(|(d, _)| d == key_id)
                .map(|(d, j)| (true, d, serde_json::from_str(&j).unwrap_or_default()));
            if stored.is_none() {
                stored = cross.into_iter().find_map(|(kind, j)| {
                    let v: Value = serde_json::from_str(&j).ok()?;
                    let has =
                        v["keys"].as_object().is_some_and(|k| k.keys().any(|k| k.ends_with(&format!(":{key_id}"))));
                    has.then_some((false, kind, v))
                });
            }
            let Some((is_device, id, mut value)) = stored else {
                user_failures.insert(key_id.clone(), json!({ "errcode": "M_NOT_FOUND", "error": "No such key" }));
                continue;
            };
            if target != user.user_id && is_device {
                user_failures.insert(
                    key_id.clone(),
                    json!({ "errcode": "M_FORBIDDEN", "error": "Cannot sign another user's devices" }),
                );
                continue;
            }
            let sigs = value["signatures"].as_object_mut();
            let sigs = match sigs {
                Some(s) => s,
                None => {
                    value["signatures"] = json!({});
                    value["signatures"].as_object_mut().expect("just set")
                }
            };
            for (signer, by_key) in new_sigs {
                let entry = sigs.entry(signer).or_insert_with(|| json!({}));
                if let (Some(e), Some(n)) = (entry.as_object_mut(), by_key.as_object()) {
                    for (k, v) in n {
                        e.insert(k.clone(), v.clone());
                    }
                }
            }
            if is_device {
                keys.e2ee.set_device_keys(&target, &id, &value.to_string()).await?;
            } else {
                keys.e2ee.set_cross_signing_key(&target, &id, &value.to_string()).await?;
            }
            keys.writer.device_list_changed(&target).await?;
        }
        if !user_failures.is_empty() {
            failures.insert(uid.clone(), Value::Object(user_failures));
        }
    }
    Ok(Json(json!({ "failures": failures })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct SendToDeviceBody {
    messages: Map<String, Value>,
}

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`: idempotent per device and txn id;
/// `*` addresses every device of a user.
pub(crate) async fn send_to_device(
    State(keys): State<Keys>,
    user: AuthUser,
    Path((event_type, txn_id)): Path<(String, String)>,
    MatrixJson(body): MatrixJson<SendToDeviceBody>,
) -> Result<Json<Value>, MatrixError> {
    let mut out = Vec::new();
    for (uid, devices) in &body.messages {
        let target = parse_user(uid)?;
        let Some(devices) = devices.as_object() else {
            return Err(MatrixError::bad_json("messages values must be objects"));
        };
        if target.server_name() != keys.server_name {
            tracing::warn!(user_id = %target, "dropping to-device message for a remote user: federation is not available");
            continue;
        }
        let known: Vec<String> =
            keys.users.devices(&target).await?.into_iter().map(|d| d.device_id.to_string()).collect();
        for (device, content) in devices {
            if !content.is_object() {
                return Err(MatrixError::bad_json("message contents must be objects"));
            }
            let recipients: Vec<&String> =
                if device == "*" { known.iter().collect() } else { known.iter().filter(|d| *d == device).collect() };
            for d in recipients {
                out.push(OutgoingToDevice {
                    user_id: target.to_string(),
                    device_id: d.clone(),
                    sender: user.user_id.to_string(),
                    event_type: event_type.clone(),
                    content: content.to_string(),
                });
            }
        }
    }
    if keys.e2ee.record_to_device_txn(&user.user_id, user.device_id.as_str(), &txn_id).await? {
        keys.writer.send_to_device(out).await?;
    }
    Ok(Json(json!({})))
}
