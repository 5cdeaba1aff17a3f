//! End-to-end encryption keys and to-device messages: `/keys/upload`, `/keys/query`,
//! `/keys/claim`, `/keys/changes`, cross-signing uploads and `/sendToDevice`. Remote users are
//! answered under `failures` until federation plugs in here.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
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
    pub(crate) device_keys: Option<Map<String, Value>>,
    #[serde(default)]
    one_time_keys: Map<String, Value>,
    #[serde(default)]
    fallback_keys: Map<String, Value>,
}

/// Checks the shape of uploaded device keys, what this server relies on when it serves them:
/// `algorithms` a list of strings, `keys` an object of strings with `algorithm:id` names,
/// `signatures` (when present) an object. Signatures are not verified: as in Synapse, trusting a
/// device is the clients' decision (they verify the self-signature and cross-signing themselves),
/// and a server refusing keys it cannot check would only hide a device from its owner's peers.
fn check_device_keys_shape(keys: &Map<String, Value>) -> Result<(), MatrixError> {
    let strings = |v: Option<&Value>| v.and_then(Value::as_array).is_some_and(|a| a.iter().all(Value::is_string));
    if !strings(keys.get("algorithms")) {
        return Err(MatrixError::bad_json("device_keys.algorithms must be a list of strings"));
    }
    let Some(k) = keys.get("keys").and_then(Value::as_object) else {
        return Err(MatrixError::bad_json("device_keys.keys must be an object"));
    };
    if k.iter().any(|(id, v)| !id.contains(':') || !v.is_string()) {
        return Err(MatrixError::bad_json("device_keys.keys maps algorithm:id to a string"));
    }
    if keys.get("signatures").is_some_and(|s| !s.is_object()) {
        return Err(MatrixError::bad_json("device_keys.signatures must be an object"));
    }
    Ok(())
}

/// Checks that `object` carries a valid signature by `signer`'s key `key_id` (`ed25519:…`),
/// whose public half is `public_key` (unpadded base64).
fn verify_signed_by(object: &Map<String, Value>, signer: &str, key_id: &str, public_key: &str) -> Result<(), String> {
    let public = ruma::serde::Base64::<ruma::serde::base64::Standard>::parse(public_key)
        .map_err(|_| format!("the key {key_id} is not base64"))?;
    let mut object = object.clone();
    // Only the one signature in question counts: others may be by keys we cannot check here.
    let own = object
        .get("signatures")
        .and_then(|s| s.get(signer))
        .and_then(|s| s.get(key_id))
        .cloned()
        .ok_or_else(|| format!("no signature by {signer} with {key_id}"))?;
    object.insert("signatures".into(), json!({ signer: { key_id: own } }));
    let mut entity = BTreeMap::new();
    entity.insert(key_id.to_owned(), public);
    let mut map = ruma::signatures::PublicKeyMap::new();
    map.insert(signer.to_owned(), entity);
    let canonical: ruma::CanonicalJsonObject =
        serde_json::from_value(Value::Object(object)).map_err(|e| format!("not canonical JSON: {e}"))?;
    ruma::signatures::verify_json(&map, &canonical).map_err(|e| e.to_string())
}

/// Checks uploaded keys before anything is stored: device keys are for `user`'s `device` and
/// well formed, key IDs are `algorithm:id`.
pub(crate) fn check_uploaded_keys(body: &UploadBody, user: &UserId, device: &str) -> Result<(), MatrixError> {
    if let Some(dk) = &body.device_keys {
        if dk.get("user_id").and_then(Value::as_str) != Some(user.as_str())
            || dk.get("device_id").and_then(Value::as_str) != Some(device)
        {
            return Err(MatrixError::bad_json("device_keys must be for the requesting user and device"));
        }
        check_device_keys_shape(dk)?;
    }
    if body.one_time_keys.keys().any(|id| !id.contains(':')) {
        return Err(MatrixError::bad_json("one-time key IDs are algorithm:id"));
    }
    if body.fallback_keys.keys().any(|id| !id.contains(':')) {
        return Err(MatrixError::bad_json("fallback key IDs are algorithm:id"));
    }
    Ok(())
}

/// Stores keys that passed [`check_uploaded_keys`]; a change of device keys is a device-list change.
pub(crate) async fn store_uploaded_keys(
    keys: &Keys,
    user: &UserId,
    device: &str,
    body: &UploadBody,
) -> Result<(), MatrixError> {
    let mut changed = false;
    if let Some(dk) = &body.device_keys {
        let json = Value::Object(dk.clone()).to_string();
        changed = keys.e2ee.set_device_keys(user, device, &json).await?;
    }
    let otks: Vec<(String, String)> = body.one_time_keys.iter().map(|(id, k)| (id.clone(), k.to_string())).collect();
    keys.e2ee.add_one_time_keys(user, device, &otks).await?;
    for (id, k) in &body.fallback_keys {
        keys.e2ee.set_fallback_key(user, device, id, &k.to_string()).await?;
    }
    // Announced once everything is stored: whoever reacts to the change (a peer's key query,
    // an application service's key counts) sees the whole upload.
    if changed {
        keys.writer.device_list_changed(user).await?;
    }
    Ok(())
}

/// `POST /_matrix/client/v3/keys/upload`.
pub(crate) async fn upload(
    State(keys): State<Keys>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<UploadBody>,
) -> Result<Json<Value>, MatrixError> {
    let device = user.device()?.as_str();
    check_uploaded_keys(&body, &user.user_id, device)?;
    store_uploaded_keys(&keys, &user.user_id, device, &body).await?;
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
            let mut v: Value = serde_json::from_str(&json).unwrap_or_default();
            match kind.as_str() {
                "master" => {
                    if target != user.user_id {
                        for (key_id, sig) in keys.e2ee.cross_user_signatures(&user.user_id, &target).await? {
                            let sig: Value = serde_json::from_str(&sig).unwrap_or_default();
                            v = with_signature(v, user.user_id.as_str(), &key_id, &sig);
                        }
                    }
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
    let window = ganglion_storage::DeviceListWindow {
        device_lists_after: from.device_lists as i64,
        device_lists_upto: to.device_lists as i64,
        events_after: from.events as i64,
        events_upto: to.events as i64,
    };
    let (changed, left) =
        ganglion_storage::device_list_changes(&keys.events, &keys.e2ee, &user.user_id, window).await?;
    Ok(Json(json!({ "changed": changed, "left": left })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeviceSigningBody {
    master_key: Option<Value>,
    self_signing_key: Option<Value>,
    user_signing_key: Option<Value>,
    auth: Option<PasswordAuth>,
}

fn invalid_signature(message: impl Into<String>) -> MatrixError {
    MatrixError::new(StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE", message)
}

/// The one `(key_id, public_key)` of a cross-signing key.
fn single_key(key: &Value) -> Option<(String, String)> {
    let keys = key.get("keys")?.as_object()?;
    let (id, public) = keys.iter().next()?;
    Some((id.clone(), public.as_str()?.to_owned()))
}

/// Checks a cross-signing key's shape: for `user`, exactly one key, `usage` naming `kind`.
fn check_cross_signing_key(key: &Value, user: &UserId, kind: &str) -> Result<(), MatrixError> {
    if key.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
        return Err(MatrixError::invalid_param(format!("{kind} key is not for the requesting user")));
    }
    if key.get("keys").and_then(Value::as_object).is_none_or(|k| k.len() != 1) || single_key(key).is_none() {
        return Err(MatrixError::invalid_param(format!("{kind} key must hold exactly one key")));
    }
    let usage = key.get("usage").and_then(Value::as_array);
    if !usage.is_some_and(|u| u.iter().any(|x| x.as_str() == Some(kind))) {
        return Err(MatrixError::invalid_param(format!("{kind} key must list \"{kind}\" in usage")));
    }
    Ok(())
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`. A user without a master key uploads
/// without UIA; changing existing keys needs the password. Self-signing and user-signing keys
/// must be signed by the master key (the new one, or the stored one).
pub(crate) async fn device_signing_upload(
    State(keys): State<Keys>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<DeviceSigningBody>,
) -> Result<Response, MatrixError> {
    let existing: BTreeMap<String, Value> = keys
        .e2ee
        .cross_signing_keys(&user.user_id)
        .await?
        .into_iter()
        .filter_map(|(kind, json)| Some((kind, serde_json::from_str(&json).ok()?)))
        .collect();
    let uploads = [
        ("master", &body.master_key),
        ("self_signing", &body.self_signing_key),
        ("user_signing", &body.user_signing_key),
    ];
    if uploads.iter().all(|(_, k)| k.is_none()) {
        return Err(MatrixError::missing_param("No cross-signing keys given"));
    }
    for (kind, key) in &uploads {
        if let Some(key) = key {
            check_cross_signing_key(key, &user.user_id, kind)?;
        }
    }
    let master = body.master_key.as_ref().or_else(|| existing.get("master"));
    for (kind, key) in &uploads[1..] {
        let Some(key) = key else { continue };
        let Some((master_id, master_public)) = master.and_then(single_key) else {
            return Err(MatrixError::missing_param(format!("A master key is needed to check the {kind} key")));
        };
        let object = key.as_object().expect("checked to be an object");
        verify_signed_by(object, user.user_id.as_str(), &master_id, &master_public)
            .map_err(|e| invalid_signature(format!("{kind} key is not signed by the master key: {e}")))?;
    }
    let changes: Vec<(&str, &Value)> = uploads
        .iter()
        .filter_map(|(kind, key)| key.as_ref().map(|k| (*kind, k)))
        .filter(|(kind, key)| existing.get(*kind) != Some(*key))
        .collect();
    if existing.contains_key("master")
        && !changes.is_empty()
        && let Some(challenge) = password_uia(&keys, &user, body.auth.as_ref()).await?
    {
        return Ok(challenge);
    }
    for (kind, key) in &changes {
        keys.e2ee.set_cross_signing_key(&user.user_id, kind, &key.to_string()).await?;
        match *kind {
            // Others' signatures were on the old master key; ours were made with the old key.
            "master" => keys.e2ee.drop_cross_user_signatures(&user.user_id, true).await?,
            "user_signing" => keys.e2ee.drop_cross_user_signatures(&user.user_id, false).await?,
            _ => {}
        }
    }
    if !changes.is_empty() {
        keys.writer.device_list_changed(&user.user_id).await?;
    }
    Ok(Json(json!({})).into_response())
}

fn failure(errcode: &str, error: &str) -> Value {
    json!({ "errcode": errcode, "error": error })
}

/// Adds `signature` by `signer`'s `key_id` to `object`'s signatures.
fn with_signature(mut object: Value, signer: &str, key_id: &str, signature: &Value) -> Value {
    if !object.get("signatures").is_some_and(Value::is_object) {
        object["signatures"] = json!({});
    }
    let sigs = &mut object["signatures"];
    if !sigs.get(signer).is_some_and(Value::is_object) {
        sigs[signer] = json!({});
    }
    sigs[signer][key_id] = signature.clone();
    object
}

/// One entry of a signatures upload: `uploader` signs `target`'s key `key_id` (a device ID or a
/// cross-signing public key). The signature is checked against the key we store, never against
/// the uploaded copy. `Ok(Err(failure))` is a per-key failure for the response.
async fn apply_signature(
    keys: &Keys,
    uploader: &UserId,
    target: &UserId,
    key_id: &str,
    uploaded: &Value,
) -> Result<Result<(), Value>, MatrixError> {
    let Some(new_sigs) = uploaded.get("signatures").and_then(|s| s.get(uploader.as_str())).and_then(Value::as_object)
    else {
        return Ok(Err(failure("M_INVALID_SIGNATURE", "No signature by the uploading user")));
    };
    let own_cross: BTreeMap<String, Value> = keys
        .e2ee
        .cross_signing_keys(uploader)
        .await?
        .into_iter()
        .filter_map(|(kind, json)| Some((kind, serde_json::from_str(&json).ok()?)))
        .collect();
    let device = keys.e2ee.device_keys(target).await?.into_iter().find(|(d, _)| d == key_id);
    let target_master: Option<Value> = keys
        .e2ee
        .cross_signing_keys(target)
        .await?
        .into_iter()
        .find(|(kind, _)| kind == "master")
        .and_then(|(_, json)| serde_json::from_str(&json).ok())
        .filter(|m: &Value| single_key(m).is_some_and(|(id, _)| id == format!("ed25519:{key_id}")));
    // Verifies `stored` with one of the candidate signing keys; returns the signature that held.
    let verify = |stored: &Value, candidates: &[(String, String)]| -> Option<(String, Value)> {
        candidates.iter().find_map(|(signing_id, public)| {
            let sig = new_sigs.get(signing_id)?;
            let signed = with_signature(stored.clone(), uploader.as_str(), signing_id, sig);
            verify_signed_by(signed.as_object()?, uploader.as_str(), signing_id, public)
                .ok()
                .map(|()| (signing_id.clone(), sig.clone()))
        })
    };
    if target == uploader {
        if let Some((device_id, json)) = device {
            // Our own device, signed with our self-signing key.
            let Some(ssk) = own_cross.get("self_signing").and_then(single_key) else {
                return Ok(Err(failure("M_INVALID_SIGNATURE", "No self-signing key to sign devices with")));
            };
            let stored: Value = serde_json::from_str(&json).unwrap_or_default();
            let Some((signing_id, sig)) = verify(&stored, &[ssk]) else {
                return Ok(Err(failure("M_INVALID_SIGNATURE", "Invalid signature by the self-signing key")));
            };
            let signed = with_signature(stored, uploader.as_str(), &signing_id, &sig);
            keys.e2ee.set_device_keys(target, &device_id, &signed.to_string()).await?;
        } else if let Some(master) = target_master {
            // Our own master key, signed by one of our devices.
            let candidates: Vec<(String, String)> = keys
                .e2ee
                .device_keys(uploader)
                .await?
                .into_iter()
                .filter_map(|(d, json)| {
                    let v: Value = serde_json::from_str(&json).ok()?;
                    let id = format!("ed25519:{d}");
                    let public = v.get("keys")?.get(&id)?.as_str()?.to_owned();
                    Some((id, public))
                })
                .collect();
            let Some((signing_id, sig)) = verify(&master, &candidates) else {
                return Ok(Err(failure("M_INVALID_SIGNATURE", "Invalid signature by a device")));
            };
            let signed = with_signature(master, uploader.as_str(), &signing_id, &sig);
            keys.e2ee.set_cross_signing_key(target, "master", &signed.to_string()).await?;
        } else {
            return Ok(Err(failure("M_NOT_FOUND", "No such key")));
        }
    } else {
        // Another user's master key, signed with our user-signing key. Their devices are theirs.
        let Some(master) = target_master else {
            return Ok(Err(if device.is_some() {
                failure("M_FORBIDDEN", "Cannot sign another user's devices")
            } else {
                failure("M_NOT_FOUND", "No such key")
            }));
        };
        let Some(usk) = own_cross.get("user_signing").and_then(single_key) else {
            return Ok(Err(failure("M_INVALID_SIGNATURE", "No user-signing key to sign users with")));
        };
        let Some((signing_id, sig)) = verify(&master, &[usk]) else {
            return Ok(Err(failure("M_INVALID_SIGNATURE", "Invalid signature by the user-signing key")));
        };
        keys.e2ee.put_cross_user_signature(uploader, &signing_id, target, &sig.to_string()).await?;
    }
    keys.writer.device_list_changed(target).await?;
    Ok(Ok(()))
}

/// `POST /_matrix/client/v3/keys/signatures/upload`: each signature is verified against the key
/// it signs; invalid ones are reported per key under `failures` and not stored.
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
            if let Err(f) = apply_signature(&keys, &user.user_id, &target, key_id, object).await? {
                user_failures.insert(key_id.clone(), f);
            }
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
    if keys.e2ee.record_to_device_txn(&user.user_id, user.device_str(), &txn_id).await? {
        keys.writer.send_to_device(out).await?;
    }
    Ok(Json(json!({})))
}
