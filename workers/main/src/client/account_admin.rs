//! Account management: password change and deactivation (both behind User-Interactive Auth with
//! the current password), and the third-party identifier endpoints, which answer with the spec's
//! errors because this server has no email or phone verification configured.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ganglion_core::EventTemplate;
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use serde::Deserialize;
use serde_json::json;

use super::devices::{PasswordAuth, password_uia};
use crate::writer::WriteOrigin;
use crate::{Keys, Rooms, UserData};

#[derive(Debug, Deserialize)]
pub(crate) struct PasswordBody {
    new_password: Option<String>,
    logout_devices: Option<bool>,
    auth: Option<PasswordAuth>,
}

/// `POST /_matrix/client/v3/account/password`: other devices are logged out unless
/// `logout_devices` is false.
pub(crate) async fn change_password(
    State(keys): State<Keys>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<PasswordBody>,
) -> Result<Response, MatrixError> {
    if let Some(challenge) = password_uia(&keys, &user, body.auth.as_ref()).await? {
        return Ok(challenge);
    }
    let new = body
        .new_password
        .filter(|p| !p.is_empty())
        .ok_or_else(|| MatrixError::missing_param("Missing new_password"))?;
    if new.len() > 512 {
        return Err(MatrixError::new(StatusCode::BAD_REQUEST, "M_WEAK_PASSWORD", "Password too long"));
    }
    let hash = keys.hasher.hash(new).await.map_err(MatrixError::internal)?;
    keys.users.set_password_hash(&user.user_id, &hash).await?;
    if body.logout_devices.unwrap_or(true) {
        let removed = keys.users.delete_other_devices(&user.user_id, user.device_str()).await?;
        for d in &removed {
            keys.e2ee.delete_device(&user.user_id, d).await?;
            keys.pushers.remove_for_device(&user.user_id, d).await?;
        }
        if !removed.is_empty() {
            keys.writer.device_list_changed(&user.user_id).await?;
        }
    }
    Ok(Json(json!({})).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeactivateBody {
    auth: Option<PasswordAuth>,
    #[serde(default)]
    erase: bool,
}

/// `POST /_matrix/client/v3/account/deactivate`: the account leaves every room, loses its devices
/// and keys, and can no longer log in; with `erase` its profile goes too.
pub(crate) async fn deactivate(
    State(keys): State<Keys>,
    State(rooms): State<Rooms>,
    State(data): State<UserData>,
    State(threepids): State<crate::Threepids>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<DeactivateBody>,
) -> Result<Response, MatrixError> {
    if let Some(challenge) = password_uia(&keys, &user, body.auth.as_ref()).await? {
        return Ok(challenge);
    }
    if body.erase {
        data.users.set_profile_field(&user.user_id, "displayname", None).await?;
        data.users.set_profile_field(&user.user_id, "avatar_url", None).await?;
    }
    let origin = WriteOrigin::default();
    for m in rooms.events.rooms_for_user(&user.user_id).await? {
        if matches!(m.membership.as_str(), "join" | "invite" | "knock") {
            let template = EventTemplate {
                event_type: "m.room.member".into(),
                state_key: Some(user.user_id.to_string()),
                content: json!({ "membership": "leave" }),
            };
            if let Err(e) = rooms.writer.send(&m.room_id, &user.user_id, template, &origin).await {
                tracing::warn!(room_id = %m.room_id, error = %e, "could not leave a room while deactivating");
            }
        }
    }
    for d in keys.users.devices(&user.user_id).await? {
        keys.e2ee.delete_device(&user.user_id, d.device_id.as_str()).await?;
    }
    keys.users.deactivate(&user.user_id).await?;
    keys.pushers.remove_for_user(&user.user_id).await?;
    threepids.store.remove_all(&user.user_id).await?;
    keys.writer.device_list_changed(&user.user_id).await?;
    tracing::info!(user_id = %user.user_id, erase = body.erase, "deactivated account");
    Ok(Json(json!({ "id_server_unbind_result": "no-support" })).into_response())
}

/// Binding an address at an identity server: not offered (addresses are validated here).
pub(crate) async fn threepid_unsupported(_user: AuthUser) -> MatrixError {
    MatrixError::new(
        StatusCode::BAD_REQUEST,
        "M_THREEPID_MEDIUM_NOT_SUPPORTED",
        "This server has no email or phone verification configured",
    )
}

/// `.../msisdn/requestToken`: phones are not offered here.
pub(crate) async fn request_token() -> MatrixError {
    MatrixError::new(
        StatusCode::BAD_REQUEST,
        "M_THREEPID_MEDIUM_NOT_SUPPORTED",
        "This server has no email or phone verification configured",
    )
}
