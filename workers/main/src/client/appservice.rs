//! What application services ask of the Client-Server API beyond acting as their users:
//! `POST /_matrix/client/v1/appservice/{appserviceId}/ping` (MSC2659), and the third-party
//! lookups (`/thirdparty/*`) that go to the services declaring each protocol.

use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use ganglion_appservice::CallError;
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Rooms;

#[derive(Debug, Deserialize)]
pub(crate) struct PingBody {
    transaction_id: Option<String>,
}

/// `POST /_matrix/client/v1/appservice/{appserviceId}/ping`: the service checks that we reach it
/// with its `hs_token`. Only the service itself may ask.
pub(crate) async fn ping(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(id): Path<String>,
    MatrixJson(body): MatrixJson<PingBody>,
) -> Result<Json<Value>, MatrixError> {
    let reg = match &user.appservice {
        Some(reg) if reg.id == id => reg.clone(),
        _ => return Err(MatrixError::forbidden("Only the application service itself may ping it")),
    };
    if reg.url.is_none() {
        return Err(MatrixError::url_not_set("The application service has no URL"));
    }
    let started = Instant::now();
    match rooms.appservice_client.ping(&reg, body.transaction_id.as_deref()).await {
        Ok(()) => Ok(Json(json!({ "duration_ms": started.elapsed().as_millis() as u64 }))),
        Err(CallError::Status { status, body }) => {
            Err(MatrixError::bad_status(format!("The application service answered {status}"))
                .with("status", json!(status))
                .with("body", json!(body)))
        }
        Err(CallError::Unreachable(e)) if e.contains("timed out") => {
            Err(MatrixError::connection_timeout("The application service did not answer in time"))
        }
        Err(e) => Err(MatrixError::connection_failed(format!("Could not reach the application service: {e}"))),
    }
}

/// The lookup's fields, passed on to the service (never our own token).
fn lookup_fields(uri: &axum::http::Uri) -> Vec<(String, String)> {
    ganglion_http::query_pairs(uri).into_iter().filter(|(k, _)| k != "access_token").collect()
}

/// `GET /_matrix/client/v3/thirdparty/protocols`: each protocol an application service
/// declares, as the first service declaring it describes it.
pub(crate) async fn protocols(State(rooms): State<Rooms>, _user: AuthUser) -> Json<Value> {
    let mut out = serde_json::Map::new();
    for reg in rooms.appservices.all() {
        for p in &reg.protocols {
            if out.contains_key(p) || reg.url.is_none() {
                continue;
            }
            match rooms.appservice_client.thirdparty(reg, &["protocol", p], &[]).await {
                Ok(v @ Value::Object(_)) => {
                    out.insert(p.clone(), v);
                }
                Ok(_) => tracing::warn!(appservice = %reg.id, protocol = %p, "protocol description is not an object"),
                Err(e) => tracing::warn!(appservice = %reg.id, protocol = %p, error = %e, "protocol query failed"),
            }
        }
    }
    Json(Value::Object(out))
}

/// `GET /_matrix/client/v3/thirdparty/protocol/{protocol}`.
pub(crate) async fn protocol(
    State(rooms): State<Rooms>,
    _user: AuthUser,
    Path(protocol): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    for reg in rooms.appservices.for_protocol(&protocol) {
        match rooms.appservice_client.thirdparty(reg, &["protocol", &protocol], &[]).await {
            Ok(v @ Value::Object(_)) => return Ok(Json(v)),
            Ok(_) => {}
            Err(e) => tracing::warn!(appservice = %reg.id, %protocol, error = %e, "protocol query failed"),
        }
    }
    Err(MatrixError::not_found(format!("No application service provides protocol {protocol}")))
}

/// Asks every service in `regs` and concatenates the lists they answer.
async fn gather<'a>(
    rooms: &Rooms,
    regs: impl Iterator<Item = &'a std::sync::Arc<ganglion_appservice::Registration>>,
    segments: &[&str],
    query: &[(String, String)],
) -> Vec<Value> {
    let mut out = Vec::new();
    for reg in regs {
        match rooms.appservice_client.thirdparty(reg, segments, query).await {
            Ok(Value::Array(list)) => out.extend(list),
            Ok(_) => tracing::warn!(appservice = %reg.id, "third-party lookup answered something other than a list"),
            Err(e) => tracing::warn!(appservice = %reg.id, error = %e, "third-party lookup failed"),
        }
    }
    out
}

/// `GET /thirdparty/location/{protocol}` and `/thirdparty/user/{protocol}`: the fields in the
/// query go to every service declaring the protocol.
pub(crate) async fn lookup_by_protocol(
    State(rooms): State<Rooms>,
    _user: AuthUser,
    Path((kind, protocol)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Result<Json<Value>, MatrixError> {
    if kind != "location" && kind != "user" {
        return Err(MatrixError::unrecognized("Unrecognized request"));
    }
    let query = lookup_fields(&uri);
    if rooms.appservices.for_protocol(&protocol).next().is_none() {
        return Err(MatrixError::not_found(format!("No application service provides protocol {protocol}")));
    }
    Ok(Json(Value::Array(gather(&rooms, rooms.appservices.for_protocol(&protocol), &[&kind, &protocol], &query).await)))
}

/// `GET /thirdparty/location?alias=` and `/thirdparty/user?userid=`: reverse lookups, asked of
/// every service with a URL.
pub(crate) async fn reverse_lookup(
    State(rooms): State<Rooms>,
    _user: AuthUser,
    Path(kind): Path<String>,
    uri: axum::http::Uri,
) -> Result<Json<Value>, MatrixError> {
    if kind != "location" && kind != "user" {
        return Err(MatrixError::unrecognized("Unrecognized request"));
    }
    let query = lookup_fields(&uri);
    let needed = if kind == "location" { "alias" } else { "userid" };
    if !query.iter().any(|(k, _)| k == needed) {
        return Err(MatrixError::missing_param(format!("Missing {needed}")));
    }
    let regs = rooms.appservices.all().iter().filter(|r| r.url.is_some());
    Ok(Json(Value::Array(gather(&rooms, regs, &[&kind], &query).await)))
}
