//! Client-Server API handlers served by `main`, one module per area of the spec.

mod account;
mod account_admin;
mod account_data;
mod appservice;
mod dehydrated;
mod devices;
mod directory;
mod discovery;
mod keys;
mod membership;
mod moderation;
mod notifications;
mod pagination;
mod presence;
mod profile;
mod public_rooms;
mod push_rules;
mod pushers;
mod receipts;
mod relations;
mod remote_join;
mod remote_membership;
mod room_keys;
mod room_state;
mod rooms;
mod search;
mod spaces;
mod threepids;
mod upgrade;
mod user_directory;

use axum::Router;
use axum::routing::{get, post, put};

use ganglion_http::MatrixError;
use ruma::{OwnedRoomId, RoomId, UserId};

use crate::{MainState, Rooms};

/// A room ID from a path, or `M_INVALID_PARAM`.
pub(crate) fn parse_room_id(s: &str) -> Result<OwnedRoomId, MatrixError> {
    OwnedRoomId::try_from(s).map_err(|e| MatrixError::invalid_param(format!("Invalid room ID {s}: {e}")))
}

/// A room ID, or the room a local alias (`#…`) points at (404 `M_NOT_FOUND` when it points
/// nowhere).
pub(crate) async fn resolve_room_id_or_alias(rooms: &Rooms, target: &str) -> Result<OwnedRoomId, MatrixError> {
    if !target.starts_with('#') {
        return parse_room_id(target);
    }
    let alias = ruma::OwnedRoomAliasId::try_from(target)
        .map_err(|e| MatrixError::invalid_param(format!("Invalid alias: {e}")))?;
    lookup_alias(rooms, &alias).await?.ok_or_else(|| MatrixError::not_found("Room alias not found"))
}

/// The room a local alias points at; when none does, each application service whose alias
/// namespace holds it is asked (`GET /_matrix/app/v1/rooms/{alias}`) and may create it (and its
/// room) meanwhile. The alias is looked up again whatever the service answered: some
/// frameworks (mautrix-python for an empty answer) say 404 after creating it.
pub(crate) async fn lookup_alias(rooms: &Rooms, alias: &ruma::RoomAliasId) -> Result<Option<OwnedRoomId>, MatrixError> {
    if let Some(room) = rooms.events.alias_room(alias.as_str()).await? {
        return Ok(Some(room));
    }
    for reg in rooms.appservices.interested_in_alias(alias.as_str()) {
        if let Err(e) = rooms.appservice_client.query_alias(reg, alias.as_str()).await {
            tracing::warn!(appservice = %reg.id, %alias, error = %e, "alias query to the application service failed");
        }
        if let Some(room) = rooms.events.alias_room(alias.as_str()).await? {
            return Ok(Some(room));
        }
    }
    Ok(None)
}

/// How far into a room's history a user may see: members everything up to now, former members up
/// to their departure (unless they forgot the room). Others get `M_FORBIDDEN`.
pub(crate) async fn visible_upto(rooms: &Rooms, user: &UserId, room_id: &RoomId) -> Result<i64, MatrixError> {
    let memberships = rooms.events.rooms_for_user(user).await?;
    let forbidden = || MatrixError::forbidden(format!("User {user} not in room {room_id}"));
    match memberships.iter().find(|m| m.room_id == room_id) {
        Some(m) if m.membership == "join" => Ok(i64::MAX),
        Some(m) if m.membership == "leave" || m.membership == "ban" => {
            if rooms.events.forgotten_rooms(user).await?.iter().any(|r| r == room_id.as_str()) {
                return Err(forbidden());
            }
            Ok(m.stream_ordering)
        }
        _ => Err(forbidden()),
    }
}

/// Every route `main` serves. The binary adds the Matrix 404/405 fallbacks once per listener, after
/// merging the routers of the roles that listener serves.
pub(crate) fn routes() -> Router<MainState> {
    let mut r = Router::new()
        .route("/_matrix/client/versions", get(discovery::versions))
        .route(threepids::SUBMIT_TOKEN_PATH, get(threepids::submit_token_link).post(threepids::submit_token_json))
        .route("/.well-known/matrix/client", get(discovery::well_known_client))
        .route("/.well-known/matrix/server", get(discovery::well_known_server));
    r = r
        .route("/_matrix/client/v1/rooms/{room_id}/relations/{event_id}", get(relations::get_relations))
        .route("/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}", get(relations::get_relations))
        .route(
            "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}",
            get(relations::get_relations),
        )
        .route("/_matrix/client/v1/rooms/{room_id}/threads", get(relations::get_threads))
        .route("/_matrix/client/v1/appservice/{appservice_id}/ping", post(appservice::ping))
        .route("/_matrix/client/v1/rooms/{room_id}/timestamp_to_event", get(relations::timestamp_to_event));
    for v in ["r0", "v3"] {
        r = r
            .route(&format!("/_matrix/client/{v}/capabilities"), get(discovery::capabilities))
            .route(&format!("/_matrix/client/{v}/register"), post(account::register))
            .route(&format!("/_matrix/client/{v}/register/available"), get(account::register_available))
            .route(&format!("/_matrix/client/{v}/login"), get(account::login_flows).post(account::login))
            .route(&format!("/_matrix/client/{v}/refresh"), post(account::refresh))
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
            .route(&format!("/_matrix/client/{v}/joined_rooms"), get(rooms::joined_rooms))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/upgrade"), post(upgrade::upgrade_room))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/invite"), post(membership::invite))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/leave"), post(membership::leave))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/kick"), post(membership::kick))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/ban"), post(membership::ban))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/unban"), post(membership::unban))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/forget"), post(membership::forget))
            .route(&format!("/_matrix/client/{v}/knock/{{room_id_or_alias}}"), post(membership::knock))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/state"), get(room_state::get_state))
            .route(
                &format!("/_matrix/client/{v}/rooms/{{room_id}}/state/{{event_type}}"),
                get(room_state::get_state_event_empty_key).put(room_state::put_state_event_empty_key),
            )
            // An empty state key may come with a trailing slash.
            .route(
                &format!("/_matrix/client/{v}/rooms/{{room_id}}/state/{{event_type}}/"),
                get(room_state::get_state_event_empty_key).put(room_state::put_state_event_empty_key),
            )
            .route(
                &format!("/_matrix/client/{v}/rooms/{{room_id}}/state/{{event_type}}/{{state_key}}"),
                get(room_state::get_state_event).put(room_state::put_state_event),
            )
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/event/{{event_id}}"), get(room_state::get_event))
            .route(&format!("/_matrix/client/{v}/events/{{event_id}}"), get(room_state::get_event_legacy))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/members"), get(room_state::members))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/joined_members"), get(room_state::joined_members))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/context/{{event_id}}"), get(room_state::context))
            .route(
                &format!("/_matrix/client/{v}/rooms/{{room_id}}/redact/{{event_id}}/{{txn_id}}"),
                put(room_state::redact).post(room_state::redact),
            )
            .route(
                &format!("/_matrix/client/{v}/directory/room/{{room_alias}}"),
                get(directory::get_alias).put(directory::create_alias).delete(directory::delete_alias),
            )
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/aliases"), get(directory::room_aliases))
            .route(
                &format!("/_matrix/client/{v}/user/{{user_id}}/account_data/{{data_type}}"),
                get(account_data::get_global).put(account_data::put_global),
            )
            .route(
                &format!("/_matrix/client/{v}/user/{{user_id}}/rooms/{{room_id}}/account_data/{{data_type}}"),
                get(account_data::get_room).put(account_data::put_room),
            )
            .route(&format!("/_matrix/client/{v}/user/{{user_id}}/rooms/{{room_id}}/tags"), get(account_data::get_tags))
            .route(
                &format!("/_matrix/client/{v}/user/{{user_id}}/rooms/{{room_id}}/tags/{{tag}}"),
                put(account_data::put_tag).delete(account_data::delete_tag),
            )
            .route(&format!("/_matrix/client/{v}/user/{{user_id}}/filter"), post(account_data::create_filter))
            .route(&format!("/_matrix/client/{v}/user/{{user_id}}/filter/{{filter_id}}"), get(account_data::get_filter))
            .route(&format!("/_matrix/client/{v}/pushrules/"), get(account_data::get_push_rules))
            .route(&format!("/_matrix/client/{v}/pushrules"), get(account_data::get_push_rules))
            .route(&format!("/_matrix/client/{v}/pushrules/global/"), get(account_data::get_global_push_rules))
            .route(
                &format!("/_matrix/client/{v}/pushrules/{{scope}}/{{kind}}/{{rule_id}}"),
                get(push_rules::get_rule).put(push_rules::put_rule).delete(push_rules::delete_rule),
            )
            .route(
                &format!("/_matrix/client/{v}/pushrules/{{scope}}/{{kind}}/{{rule_id}}/{{attr}}"),
                get(push_rules::get_attr).put(push_rules::put_attr),
            )
            .route(
                &format!("/_matrix/client/{v}/rooms/{{room_id}}/receipt/{{receipt_type}}/{{event_id}}"),
                post(receipts::receipt),
            )
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/read_markers"), post(receipts::read_markers))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/typing/{{user_id}}"), put(receipts::typing))
            .route(
                &format!("/_matrix/client/{v}/room_keys/version"),
                get(room_keys::latest_version).post(room_keys::create_version),
            )
            .route(
                &format!("/_matrix/client/{v}/room_keys/version/{{version}}"),
                get(room_keys::get_version).put(room_keys::update_version).delete(room_keys::delete_version),
            )
            .route(
                &format!("/_matrix/client/{v}/room_keys/keys"),
                get(room_keys::get_all).put(room_keys::put_all).delete(room_keys::delete_all),
            )
            .route(
                &format!("/_matrix/client/{v}/room_keys/keys/{{room_id}}"),
                get(room_keys::get_room).put(room_keys::put_room).delete(room_keys::delete_room),
            )
            .route(
                &format!("/_matrix/client/{v}/room_keys/keys/{{room_id}}/{{session_id}}"),
                get(room_keys::get_session).put(room_keys::put_session).delete(room_keys::delete_session),
            )
            .route(&format!("/_matrix/client/{v}/account/password"), post(account_admin::change_password))
            .route(&format!("/_matrix/client/{v}/account/deactivate"), post(account_admin::deactivate))
            .route(&format!("/_matrix/client/{v}/account/3pid"), get(threepids::list))
            .route(&format!("/_matrix/client/{v}/account/3pid/add"), post(threepids::add))
            .route(&format!("/_matrix/client/{v}/account/3pid/bind"), post(account_admin::threepid_unsupported))
            .route(&format!("/_matrix/client/{v}/account/3pid/delete"), post(threepids::delete))
            .route(&format!("/_matrix/client/{v}/account/3pid/unbind"), post(threepids::delete))
            .route(&format!("/_matrix/client/{v}/account/3pid/email/requestToken"), post(threepids::request_token))
            .route(&format!("/_matrix/client/{v}/account/3pid/msisdn/requestToken"), post(account_admin::request_token))
            .route(
                &format!("/_matrix/client/{v}/account/password/email/requestToken"),
                post(account_admin::request_token),
            )
            .route(
                &format!("/_matrix/client/{v}/account/password/msisdn/requestToken"),
                post(account_admin::request_token),
            )
            .route(&format!("/_matrix/client/{v}/register/email/requestToken"), post(account_admin::request_token))
            .route(&format!("/_matrix/client/{v}/register/msisdn/requestToken"), post(account_admin::request_token))
            .route(
                &format!("/_matrix/client/{v}/directory/list/room/{{room_id}}"),
                get(public_rooms::get_visibility).put(public_rooms::set_visibility),
            )
            .route(
                &format!("/_matrix/client/{v}/directory/list/appservice/{{network_id}}/{{room_id}}"),
                put(public_rooms::set_appservice_visibility),
            )
            .route(
                &format!("/_matrix/client/{v}/publicRooms"),
                get(public_rooms::get_public_rooms).post(public_rooms::search_public_rooms),
            )
            .route(&format!("/_matrix/client/{v}/user_directory/search"), post(user_directory::search))
            .route(
                &format!("/_matrix/client/{v}/presence/{{user_id}}/status"),
                get(presence::get_status).put(presence::set_status),
            )
            .route(
                &format!("/_matrix/client/{v}/rooms/{{room_id}}/report/{{event_id}}"),
                post(moderation::report_event),
            )
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/report"), post(moderation::report_room))
            .route(&format!("/_matrix/client/{v}/users/{{user_id}}/report"), post(moderation::report_user))
            .route(
                &format!("/_matrix/client/{v}/user/{{user_id}}/openid/request_token"),
                post(moderation::openid_request_token),
            )
            .route(&format!("/_matrix/client/{v}/voip/turnServer"), get(moderation::turn_server))
            .route(&format!("/_matrix/client/{v}/search"), post(search::search))
            .route(&format!("/_matrix/client/{v}/notifications"), get(notifications::notifications))
            .route(&format!("/_matrix/client/{v}/pushers"), get(pushers::list))
            .route(&format!("/_matrix/client/{v}/pushers/set"), post(pushers::set))
            .route(&format!("/_matrix/client/{v}/thirdparty/protocols"), get(appservice::protocols))
            .route(&format!("/_matrix/client/{v}/thirdparty/protocol/{{protocol}}"), get(appservice::protocol))
            .route(
                &format!("/_matrix/client/{v}/thirdparty/{{kind}}/{{protocol}}"),
                get(appservice::lookup_by_protocol),
            )
            .route(&format!("/_matrix/client/{v}/thirdparty/{{kind}}"), get(appservice::reverse_lookup))
            .route(&format!("/_matrix/client/{v}/devices"), get(devices::list))
            .route(
                &format!("/_matrix/client/{v}/devices/{{device_id}}"),
                get(devices::get).put(devices::rename).delete(devices::delete),
            )
            .route(&format!("/_matrix/client/{v}/delete_devices"), post(devices::delete_many))
            .route(&format!("/_matrix/client/{v}/keys/upload"), post(keys::upload))
            .route(&format!("/_matrix/client/{v}/keys/query"), post(keys::query))
            .route(&format!("/_matrix/client/{v}/keys/claim"), post(keys::claim))
            .route(&format!("/_matrix/client/{v}/keys/changes"), get(keys::changes))
            .route(&format!("/_matrix/client/{v}/keys/device_signing/upload"), post(keys::device_signing_upload))
            .route(&format!("/_matrix/client/{v}/keys/signatures/upload"), post(keys::signatures_upload))
            .route(&format!("/_matrix/client/{v}/sendToDevice/{{event_type}}/{{txn_id}}"), put(keys::send_to_device))
            .route(&format!("/_matrix/client/{v}/profile/{{user_id}}"), get(profile::get_profile))
            .route(
                &format!("/_matrix/client/{v}/profile/{{user_id}}/{{field}}"),
                get(profile::get_field).put(profile::put_field).delete(profile::delete_field),
            );
    }
    r.route("/_matrix/client/v1/login/get_token", post(account::get_login_token))
        .route(
            "/_matrix/client/v1/register/m.login.registration_token/validity",
            get(account::registration_token_validity),
        )
        .route("/_synapse/admin/v1/registration_tokens/new", post(account::create_registration_token))
        .route("/_synapse/admin/v1/registration_tokens", get(account::list_registration_tokens))
        .route(
            "/_synapse/admin/v1/registration_tokens/{token}",
            axum::routing::delete(account::delete_registration_token),
        )
        .route("/_matrix/client/v1/rooms/{room_id}/hierarchy", get(spaces::hierarchy))
        .route("/_matrix/client/v1/room_summary/{room_id_or_alias}", get(spaces::room_summary))
        .route("/_matrix/client/unstable/im.nheko.summary/summary/{room_id_or_alias}", get(spaces::room_summary))
        .route(
            "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device",
            get(dehydrated::get).put(dehydrated::put).delete(dehydrated::delete),
        )
        .route(
            "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{device_id}/events",
            post(dehydrated::events),
        )
}
