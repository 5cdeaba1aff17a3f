//! `/versions`, `/capabilities` and `/.well-known/matrix/*`.

use axum::Json;
use axum::extract::State;
use ganglion_http::{AuthUser, MatrixError};
use serde_json::{Value, json};

use crate::Discovery;

/// Spec versions we serve. Each one's additions that clients act on: v1.3 refresh tokens, v1.7
/// `login/get_token` and async media upload, v1.8 room version 11, v1.10 recursive `/relations`,
/// v1.11 authenticated media, v1.12 guest media download, v1.13 room reports, v1.14 user reports,
/// v1.15 `room_summary` and `auth_metadata` (answered `M_UNRECOGNIZED`: no OAuth server), v1.16
/// extended profile fields and room version 12.
const VERSIONS: &[&str] = &[
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
    "v1.13", "v1.14", "v1.15", "v1.16",
];

/// `GET /_matrix/client/versions`: the spec versions supported. No auth.
pub(crate) async fn versions() -> Json<Value> {
    Json(
        json!({ "versions": VERSIONS, "unstable_features": { "org.matrix.simplified_msc3575": true, "org.matrix.msc3814": true } }),
    )
}

/// `GET /.well-known/matrix/client`: where clients find the client API.
pub(crate) async fn well_known_client(State(d): State<Discovery>) -> Json<Value> {
    Json(json!({ "m.homeserver": { "base_url": d.public_baseurl } }))
}

/// `GET /.well-known/matrix/server`: delegation for federation, 404 when not configured so other
/// servers fall back to SRV records and port 8448.
pub(crate) async fn well_known_server(State(d): State<Discovery>) -> Result<Json<Value>, MatrixError> {
    match d.well_known_server {
        Some(s) => Ok(Json(json!({ "m.server": s }))),
        None => Err(MatrixError::not_found(format!("No server delegation configured for {}", d.server_name))),
    }
}

/// `GET /_matrix/client/v3/capabilities`: room versions and account capabilities.
pub(crate) async fn capabilities(State(d): State<Discovery>, _user: AuthUser) -> Json<Value> {
    let available: serde_json::Map<String, Value> =
        (1..=12).map(|v| (v.to_string(), Value::String("stable".into()))).collect();
    Json(json!({
        "capabilities": {
            "m.room_versions": { "default": d.default_room_version, "available": available },
            "m.change_password": { "enabled": true },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": true },
            "m.profile_fields": { "enabled": true },
        }
    }))
}
