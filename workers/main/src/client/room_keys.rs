//! Server-side key backup: `/room_keys/version` and `/room_keys/keys`. Keys are only accepted for
//! the current (latest) version; a client holding an older one gets `M_WRONG_ROOM_KEYS_VERSION`.
//! When a session is uploaded twice the better key is kept: verified over unverified, then the
//! lower first message index, then the lower forwarded count.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use ganglion_storage::{BackedUpKey, BackupVersion};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::Keys;

#[derive(Debug, Deserialize)]
pub(crate) struct VersionBody {
    algorithm: String,
    auth_data: Map<String, Value>,
    version: Option<String>,
}

fn parse_version(v: &str) -> Result<i64, MatrixError> {
    v.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| MatrixError::not_found(format!("Unknown backup version {v}")))
}

fn version_json(v: &BackupVersion) -> Value {
    json!({
        "algorithm": v.algorithm,
        "auth_data": serde_json::from_str::<Value>(&v.auth_data).unwrap_or_default(),
        "count": v.count,
        "etag": v.etag.to_string(),
        "version": v.version.to_string(),
    })
}

/// `POST /_matrix/client/v3/room_keys/version`.
pub(crate) async fn create_version(
    State(keys): State<Keys>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<VersionBody>,
) -> Result<Json<Value>, MatrixError> {
    let v =
        keys.backups.create_version(&user.user_id, &body.algorithm, &Value::Object(body.auth_data).to_string()).await?;
    Ok(Json(json!({ "version": v.to_string() })))
}

/// `GET /_matrix/client/v3/room_keys/version`: the latest version.
pub(crate) async fn latest_version(State(keys): State<Keys>, user: AuthUser) -> Result<Json<Value>, MatrixError> {
    let v = keys
        .backups
        .version(&user.user_id, None)
        .await?
        .ok_or_else(|| MatrixError::not_found("No current backup version"))?;
    Ok(Json(version_json(&v)))
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`.
pub(crate) async fn get_version(
    State(keys): State<Keys>,
    user: AuthUser,
    Path(version): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    let n = parse_version(&version)?;
    let v = keys
        .backups
        .version(&user.user_id, Some(n))
        .await?
        .ok_or_else(|| MatrixError::not_found(format!("Unknown backup version {version}")))?;
    Ok(Json(version_json(&v)))
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`: new auth data; the algorithm cannot change.
pub(crate) async fn update_version(
    State(keys): State<Keys>,
    user: AuthUser,
    Path(version): Path<String>,
    MatrixJson(body): MatrixJson<VersionBody>,
) -> Result<Json<Value>, MatrixError> {
    let n = parse_version(&version)?;
    if body.version.as_deref().is_some_and(|v| v != version) {
        return Err(MatrixError::invalid_param("The version in the body does not match the path"));
    }
    let current = keys
        .backups
        .version(&user.user_id, Some(n))
        .await?
        .ok_or_else(|| MatrixError::not_found(format!("Unknown backup version {version}")))?;
    if current.algorithm != body.algorithm {
        return Err(MatrixError::invalid_param("The algorithm of a backup version cannot change"));
    }
    keys.backups.update_version(&user.user_id, n, &Value::Object(body.auth_data).to_string()).await?;
    Ok(Json(json!({})))
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`.
pub(crate) async fn delete_version(
    State(keys): State<Keys>,
    user: AuthUser,
    Path(version): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    let n = parse_version(&version)?;
    if !keys.backups.delete_version(&user.user_id, n).await? {
        return Err(MatrixError::not_found(format!("Unknown backup version {version}")));
    }
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
pub(crate) struct VersionQuery {
    version: Option<String>,
}

/// The version named by the query; for writes it must be the latest.
async fn resolve(keys: &Keys, user: &AuthUser, q: &VersionQuery, write: bool) -> Result<BackupVersion, MatrixError> {
    let v = q.version.as_deref().ok_or_else(|| MatrixError::missing_param("Missing version"))?;
    let n = parse_version(v)?;
    if write {
        let latest = keys.backups.version(&user.user_id, None).await?;
        match latest {
            Some(l) if l.version == n => return Ok(l),
            Some(l) => {
                return Err(MatrixError::new(
                    StatusCode::FORBIDDEN,
                    "M_WRONG_ROOM_KEYS_VERSION",
                    "Wrong backup version",
                )
                .with("current_version", json!(l.version.to_string())));
            }
            None => return Err(MatrixError::not_found(format!("Unknown backup version {v}"))),
        }
    }
    keys.backups
        .version(&user.user_id, Some(n))
        .await?
        .ok_or_else(|| MatrixError::not_found(format!("Unknown backup version {v}")))
}

/// Orders keys: is the new key better than the one stored?
fn better(new: &Value, old: &Value) -> bool {
    let verified = |v: &Value| v["is_verified"].as_bool().unwrap_or(false);
    let index = |v: &Value| v["first_message_index"].as_u64().unwrap_or(u64::MAX);
    let forwarded = |v: &Value| v["forwarded_count"].as_u64().unwrap_or(u64::MAX);
    (!verified(new), index(new), forwarded(new)) < (!verified(old), index(old), forwarded(old))
}

async fn store(
    keys: &Keys,
    user: &AuthUser,
    version: &BackupVersion,
    incoming: Vec<(String, String, Value)>,
) -> Result<Json<Value>, MatrixError> {
    let mut accepted = Vec::new();
    for (room_id, session_id, data) in incoming {
        if !data.is_object() || data.get("session_data").is_none() {
            return Err(MatrixError::bad_json("Each key needs session_data"));
        }
        let existing = keys.backups.keys(&user.user_id, version.version, Some(&room_id), Some(&session_id)).await?;
        let keep_old = existing
            .first()
            .is_some_and(|old| !better(&data, &serde_json::from_str(&old.key_json).unwrap_or_default()));
        if !keep_old {
            accepted.push(BackedUpKey { room_id, session_id, key_json: data.to_string() });
        }
    }
    keys.backups.put_keys(&user.user_id, version.version, &accepted).await?;
    let after = keys
        .backups
        .version(&user.user_id, Some(version.version))
        .await?
        .ok_or_else(|| MatrixError::not_found("Backup deleted"))?;
    Ok(Json(json!({ "count": after.count, "etag": after.etag.to_string() })))
}

fn sessions_of(room_id: &str, sessions: &Value) -> Result<Vec<(String, String, Value)>, MatrixError> {
    let map =
        sessions.get("sessions").and_then(Value::as_object).ok_or_else(|| MatrixError::bad_json("Missing sessions"))?;
    Ok(map.iter().map(|(s, d)| (room_id.to_owned(), s.clone(), d.clone())).collect())
}

/// `PUT /_matrix/client/v3/room_keys/keys`.
pub(crate) async fn put_all(
    State(keys): State<Keys>,
    user: AuthUser,
    Query(q): Query<VersionQuery>,
    MatrixJson(body): MatrixJson<Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    let version = resolve(&keys, &user, &q, true).await?;
    let rooms = body.get("rooms").and_then(Value::as_object).ok_or_else(|| MatrixError::bad_json("Missing rooms"))?;
    let mut incoming = Vec::new();
    for (room_id, sessions) in rooms {
        incoming.extend(sessions_of(room_id, sessions)?);
    }
    store(&keys, &user, &version, incoming).await
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}`.
pub(crate) async fn put_room(
    State(keys): State<Keys>,
    user: AuthUser,
    Path(room_id): Path<String>,
    Query(q): Query<VersionQuery>,
    MatrixJson(body): MatrixJson<Value>,
) -> Result<Json<Value>, MatrixError> {
    let version = resolve(&keys, &user, &q, true).await?;
    let incoming = sessions_of(&room_id, &body)?;
    store(&keys, &user, &version, incoming).await
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`.
pub(crate) async fn put_session(
    State(keys): State<Keys>,
    user: AuthUser,
    Path((room_id, session_id)): Path<(String, String)>,
    Query(q): Query<VersionQuery>,
    MatrixJson(body): MatrixJson<Value>,
) -> Result<Json<Value>, MatrixError> {
    let version = resolve(&keys, &user, &q, true).await?;
    store(&keys, &user, &version, vec![(room_id, session_id, body)]).await
}

fn group(found: Vec<BackedUpKey>) -> Value {
    let mut rooms = Map::new();
    for k in found {
        let room = rooms.entry(k.room_id).or_insert_with(|| json!({ "sessions": {} }));
        room["sessions"][k.session_id.as_str()] = serde_json::from_str(&k.key_json).unwrap_or_default();
    }
    Value::Object(rooms)
}

/// `GET /_matrix/client/v3/room_keys/keys`.
pub(crate) async fn get_all(
    State(keys): State<Keys>,
    user: AuthUser,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Value>, MatrixError> {
    let version = resolve(&keys, &user, &q, false).await?;
    Ok(Json(json!({ "rooms": group(keys.backups.keys(&user.user_id, version.version, None, None).await?) })))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}`.
pub(crate) async fn get_room(
    State(keys): State<Keys>,
    user: AuthUser,
    Path(room_id): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Value>, MatrixError> {
    let version = resolve(&keys, &user, &q, false).await?;
    let rooms = group(keys.backups.keys(&user.user_id, version.version, Some(&room_id), None).await?);
    Ok(Json(rooms.get(&room_id).cloned().unwrap_or_else(|| json!({ "sessions": {} }))))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`.
pub(crate) async fn get_session(
    State(keys): State<Keys>,
    user: AuthUser,
    Path((room_id, session_id)): Path<(String, String)>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Value>, MatrixError> {
    let version = resolve(&keys, &user, &q, false).await?;
    let found = keys.backups.keys(&user.user_id, version.version, Some(&room_id), Some(&session_id)).await?;
    let key = found.first().ok_or_else(|| MatrixError::not_found("No such key"))?;
    Ok(Json(serde_json::from_str(&key.key_json).map_err(MatrixError::internal)?))
}

async fn delete(
    keys: &Keys,
    user: &AuthUser,
    q: &VersionQuery,
    room: Option<&str>,
    session: Option<&str>,
) -> Result<Json<Value>, MatrixError> {
    let version = resolve(keys, user, q, false).await?;
    keys.backups.delete_keys(&user.user_id, version.version, room, session).await?;
    let after = keys
        .backups
        .version(&user.user_id, Some(version.version))
        .await?
        .ok_or_else(|| MatrixError::not_found("Backup deleted"))?;
    Ok(Json(json!({ "count": after.count, "etag": after.etag.to_string() })))
}

/// `DELETE /_matrix/client/v3/room_keys/keys`.
pub(crate) async fn delete_all(
    State(keys): State<Keys>,
    user: AuthUser,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Value>, MatrixError> {
    delete(&keys, &user, &q, None, None).await
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}`.
pub(crate) async fn delete_room(
    State(keys): State<Keys>,
    user: AuthUser,
    Path(room_id): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Value>, MatrixError> {
    delete(&keys, &user, &q, Some(&room_id), None).await
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`.
pub(crate) async fn delete_session(
    State(keys): State<Keys>,
    user: AuthUser,
    Path((room_id, session_id)): Path<(String, String)>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Value>, MatrixError> {
    delete(&keys, &user, &q, Some(&room_id), Some(&session_id)).await
}
