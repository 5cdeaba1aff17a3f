//! Client-Server API handlers served by `main`, one module per area of the spec.

mod account;
mod discovery;
mod rooms;

use axum::Router;
use axum::routing::{get, post, put};

use crate::MainState;

/// Every route `main` serves. The binary adds the Matrix 404/405 fallbacks once per listener, after
/// merging the routers of the roles that listener serves.
pub(crate) fn routes() -> Router<MainState> {
    let mut r = Router::new()
        .route("/_matrix/client/versions", get(discovery::versions))
        .route("/.well-known/matrix/client", get(discovery::well_known_client))
        .route("/.well-known/matrix/server", get(discovery::well_known_server));
    for v in ["r0", "v3"] {
        r = r
            .route(&format!("/_matrix/client/{v}/capabilities"), get(discovery::capabilities))
            .route(&format!("/_matrix/client/{v}/register"), post(account::register))
            .route(&format!("/_matrix/client/{v}/register/available"), get(account::register_available))
            .route(&format!("/_matrix/client/{v}/login"), get(account::login_flows).post(account::login))
            .route(&format!("/_matrix/client/{v}/logout"), post(account::logout))
            .route(&format!("/_matrix/client/{v}/logout/all"), post(account::logout_all))
            .route(&format!("/_matrix/client/{v}/account/whoami"), get(account::whoami))
            .route(&format!("/_matrix/client/{v}/createRoom"), post(rooms::create_room))
            .route(&format!("/_matrix/client/{v}/join/{{room_id_or_alias}}"), post(rooms::join_by_id_or_alias))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/join"), post(rooms::join_room))
            .route(
                &format!("/_matrix/client/{v}/rooms/{{room_id}}/send/{{event_type}}/{{txn_id}}"),
                put(rooms::send_message),
            )
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/messages"), get(rooms::messages))
            .route(&format!("/_matrix/client/{v}/joined_rooms"), get(rooms::joined_rooms));
    }
    r
}
