//! `GET /pushers` and `POST /pushers/set`: where the user's devices want pushes sent. The pusher
//! role does the pushing; this only records pushers (through the writer, which announces each
//! change on the `pushers` stream).

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use ganglion_storage::Pusher;
use serde_json::{Map, Value, json};

use crate::{Threepids, UserData};

/// The path every push gateway serves (Push Gateway API).
const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// The spec's limits on `app_id` (characters) and `pushkey` (bytes).
const MAX_APP_ID: usize = 64;
const MAX_PUSHKEY: usize = 512;

fn pusher_json(p: &Pusher) -> Value {
    let mut out = json!({
        "pushkey": p.pushkey,
        "kind": p.kind,
        "app_id": p.app_id,
        "app_display_name": p.app_display_name,
        "device_display_name": p.device_display_name,
        "lang": p.lang,
        "data": serde_json::from_str::<Value>(&p.data).unwrap_or_else(|_| json!({})),
    });
    if let Some(tag) = &p.profile_tag {
        out["profile_tag"] = json!(tag);
    }
    out
}

/// `GET /_matrix/client/v3/pushers`.
pub(crate) async fn list(State(data): State<UserData>, user: AuthUser) -> Result<Json<Value>, MatrixError> {
    let pushers = data.pushers.list(&user.user_id).await?;
    Ok(Json(json!({ "pushers": pushers.iter().map(pusher_json).collect::<Vec<_>>() })))
}

fn string_field<'a>(body: &'a Map<String, Value>, name: &str) -> Result<&'a str, MatrixError> {
    match body.get(name) {
        None | Some(Value::Null) => Err(MatrixError::missing_param(format!("Missing {name}"))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(MatrixError::invalid_param(format!("{name} must be a string"))),
    }
}

/// Whether plain `http` is acceptable for a gateway on `host`: only on loopback or a private
/// network, where a gateway sits beside the server (a test gateway, a gateway in the same
/// cluster). Names are resolved, and every address must qualify.
async fn private_host(host: &str, port: u16) -> bool {
    fn private(ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
            IpAddr::V6(v6) => {
                v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80
            }
        }
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return private(ip);
    }
    match tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::lookup_host((bare, port))).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| private(a.ip()))
        }
        _ => false,
    }
}

/// Checks `data.url` of an `http` pusher: an absolute URL whose path is the notify endpoint, on
/// `https` (plain `http` only for a gateway on a private network).
async fn check_gateway_url(url: &str) -> Result<(), MatrixError> {
    let bad = |why: &str| MatrixError::invalid_param(format!("data.url {why}"));
    let uri: axum::http::Uri = url.parse().map_err(|_| bad("is not a valid URL"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(bad("must be an absolute URL"));
    };
    if uri.path() != NOTIFY_PATH {
        return Err(bad(&format!("must have the path {NOTIFY_PATH}")));
    }
    match scheme {
        "https" => Ok(()),
        "http" if private_host(authority.host(), authority.port_u16().unwrap_or(80)).await => Ok(()),
        "http" => Err(bad("must be an https URL (plain http is accepted only for a gateway on a private network)")),
        _ => Err(bad("must be an https URL")),
    }
}

/// `POST /_matrix/client/v3/pushers/set`: creates, updates (same `app_id` and `pushkey`) or, with
/// `kind: null`, deletes a pusher of the user.
pub(crate) async fn set(
    State(data): State<UserData>,
    State(threepids): State<Threepids>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    let app_id = string_field(&body, "app_id")?;
    let pushkey = string_field(&body, "pushkey")?;
    if !body.contains_key("kind") {
        return Err(MatrixError::missing_param("Missing kind"));
    }
    if body["kind"].is_null() {
        data.pushers.remove(&user.user_id, app_id, pushkey).await?;
        return Ok(Json(json!({})));
    }
    let kind = string_field(&body, "kind")?;
    if app_id.chars().count() > MAX_APP_ID {
        return Err(MatrixError::invalid_param(format!("app_id is longer than {MAX_APP_ID} characters")));
    }
    if pushkey.len() > MAX_PUSHKEY {
        return Err(MatrixError::invalid_param(format!("pushkey is longer than {MAX_PUSHKEY} bytes")));
    }
    let app_display_name = string_field(&body, "app_display_name")?;
    let device_display_name = string_field(&body, "device_display_name")?;
    let lang = string_field(&body, "lang")?;
    let pusher_data = match body.get("data") {
        None | Some(Value::Null) => return Err(MatrixError::missing_param("Missing data")),
        Some(Value::Object(d)) => d,
        Some(_) => return Err(MatrixError::invalid_param("data must be an object")),
    };
    let profile_tag = match body.get("profile_tag") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.len() <= 32 => Some(t.clone()),
        Some(_) => return Err(MatrixError::invalid_param("profile_tag must be a string of at most 32 characters")),
    };
    let append = match body.get("append") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(MatrixError::invalid_param("append must be a boolean")),
    };
    match kind {
        "http" => {
            let url = match pusher_data.get("url") {
                None | Some(Value::Null) => {
                    return Err(MatrixError::missing_param("'url' required in data for HTTP pushers"));
                }
                Some(Value::String(u)) => u,
                Some(_) => return Err(MatrixError::invalid_param("data.url must be a string")),
            };
            check_gateway_url(url).await?;
        }
        "email" => {
            if threepids.mailer.is_none() {
                return Err(MatrixError::invalid_param("This server has no email configured"));
            }
            // Only an address validated on this account: the server must not mail strangers.
            let address = super::threepids::canonical_email(pushkey);
            let owned = match &address {
                Some(a) => threepids.store.owner("email", a).await?.as_deref() == Some(user.user_id.as_str()),
                None => false,
            };
            if !owned {
                return Err(MatrixError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "M_THREEPID_NOT_FOUND",
                    "The pushkey of an email pusher must be an email address on this account",
                ));
            }
        }
        other => return Err(MatrixError::invalid_param(format!("Unknown pusher kind {other}"))),
    }
    let pusher = Pusher {
        user_id: user.user_id.to_string(),
        app_id: app_id.to_owned(),
        pushkey: if kind == "email" {
            super::threepids::canonical_email(pushkey).unwrap_or_else(|| pushkey.to_owned())
        } else {
            pushkey.to_owned()
        },
        device_id: user.device_str().to_owned(),
        kind: kind.to_owned(),
        app_display_name: app_display_name.to_owned(),
        device_display_name: device_display_name.to_owned(),
        profile_tag,
        lang: lang.to_owned(),
        data: Value::Object(pusher_data.clone()).to_string(),
        pushkey_ts: crate::presence_writer::now_ms(),
        last_stream_ordering: 0,
        last_badge: None,
        failing_since: None,
    };
    data.pushers.set(pusher, append).await?;
    Ok(Json(json!({})))
}
