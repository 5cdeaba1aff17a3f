//! The `federation-reader` role: inbound federation (`/_matrix/federation/*`, `/_matrix/key/*`).
//!
//! It serves the server's keys at `/_matrix/key/v2/server`, signed; the key notary
//! (`/_matrix/key/v2/query`), which vouches for other servers' keys; `/_matrix/federation/v1/version`;
//! the queries `/query/profile` and `/query/directory`; inbound transactions (`/send`, module
//! `transactions`); and the room endpoints (`/event`, `/state`, `/state_ids`, `/event_auth`,
//! `/backfill`, `/get_missing_events`, module `rooms`); and membership (`make_join`,
//! `send_join`, `make_leave`, `send_leave`, `make_knock`, `send_knock`, `invite`, module
//! `membership`). Everything but the keys needs an `X-Matrix` signature by a current key of the
//! asking server. PDUs are checked here and persisted by `main` (gRPC `ReceivePdus`). Paths the routing table sends here that are
//! not built yet (EDU-backed queries and the like) answer `M_UNRECOGNIZED`.
//!
//! Handlers take ruma's request types and answer ruma's response types.
//!
//! Depends on the shared crates; never on another worker crate.

mod membership;
mod rooms;
mod transactions;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, Request, State};
use axum::routing::{get, post, put};
use ganglion_config::Config;
use ganglion_core::ServerSigningKey;
use ganglion_federation::{FederationClient, InboundAuth, KeyFetcher};
use ganglion_http::{MatrixError, Ruma, RumaResponse};
use ganglion_replication::{Bus, Follower, StreamPosition};
use ganglion_rpc::MainClient;
use ganglion_storage::{Db, EventStore, FederationStore, KeyStore, RemoteKeyStore, UserStore, follow_events};
use ruma::api::IncomingRequest;
use ruma::api::federation::discovery::{get_remote_server_keys, get_remote_server_keys_batch, get_server_version};
use ruma::api::federation::query::{get_profile_information, get_room_information};
use ruma::serde::Raw;
use ruma::{OwnedServerName, ServerName};
use serde_json::Value;
use tokio::sync::watch;

/// Why the role could not start.
#[derive(Debug)]
pub enum StartError {
    /// Bad configuration, or no signing key yet.
    Config(String),
    /// The database failed.
    Storage(ganglion_storage::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(m) => write!(f, "{m}"),
            Self::Storage(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

#[derive(Debug, Clone)]
struct KeyState {
    server_name: OwnedServerName,
    key: Arc<ServerSigningKey>,
    /// Keys no longer signing, with when they expired.
    old: Arc<Vec<(ServerSigningKey, i64)>>,
}

/// What the handlers share.
#[derive(Debug, Clone)]
struct ReaderState {
    keys: KeyState,
    /// Other servers' keys, for the notary and for checking signed requests.
    fetcher: KeyFetcher,
    inbound: InboundAuth,
    users: UserStore,
    events: EventStore,
    federation: FederationStore,
    /// Requests to other servers (fetching missing events).
    client: FederationClient,
    /// `main`'s write API, which persists received PDUs.
    main: MainClient,
    transactions: Arc<transactions::Transactions>,
}

/// A running `federation-reader` role.
#[derive(Debug)]
pub struct FederationReader {
    _follower: Follower,
    position: watch::Receiver<StreamPosition>,
    state: ReaderState,
}

impl FederationReader {
    /// Loads the server key and starts following the `events` stream from the database's current
    /// position.
    ///
    /// # Errors
    /// When the server name or the federation settings are invalid, no signing key exists yet,
    /// or the database cannot be read.
    pub async fn start(cfg: &Config, db: Db, bus: Arc<dyn Bus>, main: MainClient) -> Result<Self, StartError> {
        let server_name = OwnedServerName::try_from(cfg.server_name.as_str())
            .map_err(|e| StartError::Config(format!("server_name: {e}")))?;
        let store = KeyStore::new(db.clone());
        let key = Arc::new(ganglion_federation::load_signing_key(&store).await.map_err(StartError::Config)?);
        let old = ganglion_federation::load_expired_keys(&store).await.map_err(StartError::Config)?;
        let client = FederationClient::new(&cfg.federation, server_name.clone(), key.clone())
            .map_err(|e| StartError::Config(format!("federation: {e}")))?;
        let fetcher = KeyFetcher::new(
            client.clone(),
            RemoteKeyStore::new(db.clone()),
            cfg.federation.trusted_key_servers.clone(),
        );
        let inbound = InboundAuth::new(server_name.clone(), fetcher.clone());
        let events = EventStore::new(db.clone());
        let (follower, position) = follow_events(&events, bus).await.map_err(StartError::Storage)?;
        let keys = KeyState { server_name, key, old: Arc::new(old) };
        let state = ReaderState {
            keys,
            fetcher,
            inbound,
            users: UserStore::new(db.clone()),
            events,
            federation: FederationStore::new(db),
            client,
            main,
            transactions: Arc::default(),
        };
        Ok(Self { _follower: follower, position, state })
    }

    /// The position reached on the `events` stream.
    pub fn position(&self) -> watch::Receiver<StreamPosition> {
        self.position.clone()
    }

    /// The role's HTTP routes.
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }
}

fn router(state: ReaderState) -> Router {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys))
        // The deprecated `/{keyId}` form answers the same.
        .route("/_matrix/key/v2/server/{key_id}", get(server_keys))
        .route("/_matrix/key/v2/query", axum::routing::post(notary_batch))
        .route("/_matrix/key/v2/query/{server_name}", get(notary_one))
        .route("/_matrix/federation/v1/version", get(version))
        .route("/_matrix/federation/v1/query/profile", get(query_profile))
        .route("/_matrix/federation/v1/query/directory", get(query_directory))
        .route("/_matrix/federation/v1/send/{txn_id}", put(transactions::send_transaction))
        .route("/_matrix/federation/v1/event/{event_id}", get(rooms::event))
        .route("/_matrix/federation/v1/state/{room_id}", get(rooms::state))
        .route("/_matrix/federation/v1/state_ids/{room_id}", get(rooms::state_ids))
        .route("/_matrix/federation/v1/event_auth/{room_id}/{event_id}", get(rooms::event_auth))
        .route("/_matrix/federation/v1/backfill/{room_id}", get(rooms::backfill))
        .route("/_matrix/federation/v1/get_missing_events/{room_id}", post(rooms::missing_events))
        .route("/_matrix/federation/v1/make_join/{room_id}/{user_id}", get(membership::make_join))
        .route("/_matrix/federation/v2/send_join/{room_id}/{event_id}", put(membership::send_join_v2))
        .route("/_matrix/federation/v1/make_leave/{room_id}/{user_id}", get(membership::make_leave))
        .route("/_matrix/federation/v2/send_leave/{room_id}/{event_id}", put(membership::send_leave_v2))
        .route("/_matrix/federation/v2/invite/{room_id}/{event_id}", put(membership::invite_v2))
        .route("/_matrix/federation/v1/make_knock/{room_id}/{user_id}", get(membership::make_knock))
        .route("/_matrix/federation/v1/send_knock/{room_id}/{event_id}", put(membership::send_knock))
        .with_state(state)
}

/// A request of type `T` signed by another server with `X-Matrix`: `origin` is who signed it.
struct Signed<T> {
    origin: OwnedServerName,
    request: T,
}

impl<T: IncomingRequest> FromRequest<ReaderState> for Signed<T> {
    type Rejection = MatrixError;

    async fn from_request(req: Request, state: &ReaderState) -> Result<Self, Self::Rejection> {
        let (parts, body, args) = ganglion_http::read_request(req, state).await?;
        let origin = state.inbound.authenticate(&parts, &body).await?;
        let request = ganglion_http::parse_request(&parts, &body, &args)?;
        Ok(Self { origin, request })
    }
}

async fn server_keys(State(s): State<ReaderState>) -> axum::Json<Value> {
    axum::Json(ganglion_federation::server_keys_document(&s.keys.server_name, &s.keys.key, &s.keys.old))
}

async fn version(Ruma(_): Ruma<get_server_version::v1::Request>) -> RumaResponse<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Ganglion".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut resp = get_server_version::v1::Response::new();
    resp.server = Some(server);
    RumaResponse(resp)
}

/// The key documents of `server` this notary vouches for, each signed by us as well.
async fn vouch(
    s: &ReaderState,
    server: &ServerName,
    minimum_valid_until_ts: i64,
) -> Vec<Raw<ruma::api::federation::discovery::ServerSigningKeys>> {
    let docs = if server == s.keys.server_name {
        vec![ganglion_federation::server_keys_document(&s.keys.server_name, &s.keys.key, &s.keys.old)]
    } else {
        match s.fetcher.documents_for(server, minimum_valid_until_ts).await {
            Ok(docs) => docs
                .into_iter()
                .filter_map(|d| ganglion_federation::notarise(d, &s.keys.server_name, &s.keys.key))
                .collect(),
            Err(e) => {
                tracing::warn!(server = %server, error = %e, "notary query failed");
                Vec::new()
            }
        }
    };
    docs.into_iter().filter_map(|d| serde_json::value::to_raw_value(&d).ok().map(Raw::from_json)).collect()
}

fn millis(ts: ruma::MilliSecondsSinceUnixEpoch) -> i64 {
    i64::try_from(u64::from(ts.get())).unwrap_or(i64::MAX)
}

/// `GET /_matrix/key/v2/query/{serverName}`.
async fn notary_one(
    State(s): State<ReaderState>,
    Ruma(req): Ruma<get_remote_server_keys::v2::Request>,
) -> RumaResponse<get_remote_server_keys::v2::Response> {
    let keys = vouch(&s, &req.server_name, millis(req.minimum_valid_until_ts)).await;
    RumaResponse(get_remote_server_keys::v2::Response::new(keys))
}

/// Most servers one notary query may ask about.
const MAX_NOTARY_SERVERS: usize = 100;

/// `POST /_matrix/key/v2/query`.
async fn notary_batch(
    State(s): State<ReaderState>,
    Ruma(req): Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<RumaResponse<get_remote_server_keys_batch::v2::Response>, MatrixError> {
    if req.server_keys.len() > MAX_NOTARY_SERVERS {
        return Err(MatrixError::bad_request(format!("At most {MAX_NOTARY_SERVERS} servers per query")));
    }
    let now = millis(ruma::MilliSecondsSinceUnixEpoch::now());
    let mut all = Vec::new();
    for (server, criteria) in &req.server_keys {
        // The strictest criterion asked for any of the server's keys; none asked means now.
        let minimum = criteria.values().filter_map(|c| c.minimum_valid_until_ts).map(millis).max().unwrap_or(now);
        all.extend(vouch(&s, server, minimum).await);
    }
    Ok(RumaResponse(get_remote_server_keys_batch::v2::Response::new(all)))
}

fn local_only(s: &ReaderState, server: &ServerName, what: &str) -> Result<(), MatrixError> {
    if server == s.keys.server_name {
        Ok(())
    } else {
        Err(MatrixError::invalid_param(format!("{what} is not on this server")))
    }
}

/// `GET /_matrix/federation/v1/query/profile`: a local user's profile, or one field of it.
async fn query_profile(
    State(s): State<ReaderState>,
    signed: Signed<get_profile_information::v1::Request>,
) -> Result<RumaResponse<get_profile_information::v1::Response>, MatrixError> {
    let req = signed.request;
    local_only(&s, req.user_id.server_name(), "The user")?;
    let Some((name, avatar)) = s.users.profile(&req.user_id).await.map_err(MatrixError::internal)? else {
        return Err(MatrixError::not_found("Profile not found"));
    };
    let mut fields: BTreeMap<String, Value> =
        s.users.profile_fields(&req.user_id).await.map_err(MatrixError::internal)?.into_iter().collect();
    if let Some(n) = name {
        fields.insert("displayname".into(), Value::String(n));
    }
    if let Some(a) = avatar {
        fields.insert("avatar_url".into(), Value::String(a));
    }
    if let Some(field) = &req.field {
        fields.retain(|k, _| k == field.as_str());
    }
    tracing::debug!(origin = %signed.origin, user = %req.user_id, "profile query");
    Ok(RumaResponse(fields.into_iter().collect()))
}

/// `GET /_matrix/federation/v1/query/directory`: the room a local alias names, and servers
/// in it to join through (ours first).
async fn query_directory(
    State(s): State<ReaderState>,
    signed: Signed<get_room_information::v1::Request>,
) -> Result<RumaResponse<get_room_information::v1::Response>, MatrixError> {
    let alias = signed.request.room_alias;
    local_only(&s, alias.server_name(), "The alias")?;
    let room_id = s
        .events
        .alias_room(alias.as_str())
        .await
        .map_err(MatrixError::internal)?
        .ok_or_else(|| MatrixError::not_found("Room alias not found"))?;
    let mut servers = vec![s.keys.server_name.clone()];
    for member in s.events.members_with(&room_id, "join").await.map_err(MatrixError::internal)? {
        if let Some((_, server)) = member.split_once(':')
            && let Ok(server) = OwnedServerName::try_from(server)
            && !servers.contains(&server)
        {
            servers.push(server);
        }
    }
    Ok(RumaResponse(get_room_information::v1::Response::new(room_id, servers)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ganglion_storage::test_util::TestDb;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    async fn state(db: &TestDb, key: Arc<ServerSigningKey>, old: Vec<(ServerSigningKey, i64)>) -> ReaderState {
        let name = OwnedServerName::try_from("example.org").unwrap();
        let client = FederationClient::new(&Default::default(), name.clone(), key.clone()).unwrap();
        let fetcher = KeyFetcher::new(client.clone(), RemoteKeyStore::new(db.db.clone()), Vec::new());
        ReaderState {
            keys: KeyState { server_name: name.clone(), key, old: Arc::new(old) },
            inbound: InboundAuth::new(name, fetcher.clone()),
            fetcher,
            users: UserStore::new(db.db.clone()),
            events: EventStore::new(db.db.clone()),
            federation: FederationStore::new(db.db.clone()),
            client,
            // Nothing listens there: these tests never reach main.
            main: MainClient::new("http://127.0.0.1:9").unwrap(),
            transactions: Arc::default(),
        }
    }

    async fn call(state: &ReaderState, req: http::Request<axum::body::Body>) -> (http::StatusCode, Value) {
        let resp = router(state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    fn verify(body: &Value, server: &str, key: &ServerSigningKey) {
        let public = ruma::serde::Base64::parse(key.public_key_base64()).unwrap();
        let mut map = ruma::signatures::PublicKeyMap::new();
        map.insert(server.into(), [(format!("ed25519:{}", key.version()), public)].into());
        let mut object: ruma::CanonicalJsonObject = serde_json::from_value(body.clone()).unwrap();
        if let Some(ruma::CanonicalJsonValue::Object(sigs)) = object.get_mut("signatures") {
            sigs.retain(|k, _| k == server);
        }
        ruma::signatures::verify_json(&map, &object).expect("signed");
    }

    #[tokio::test]
    async fn server_keys_are_self_signed_and_current() {
        let db = TestDb::new(ganglion_storage::Backend::Sqlite).await;
        let key = Arc::new(ServerSigningKey::generate());
        let retired = ServerSigningKey::generate();
        let retired_public = retired.public_key_base64().to_owned();
        let retired_id = format!("ed25519:{}", retired.version());
        let state = state(&db, key.clone(), vec![(retired, 1_700_000_000_000)]).await;
        let (status, body) =
            call(&state, http::Request::get("/_matrix/key/v2/server").body(axum::body::Body::empty()).unwrap()).await;
        assert_eq!(status, http::StatusCode::OK);
        assert_eq!(body["server_name"], "example.org");
        let key_id = format!("ed25519:{}", key.version());
        assert_eq!(body["verify_keys"][&key_id]["key"], key.public_key_base64());
        assert_eq!(
            body["old_verify_keys"][&retired_id],
            serde_json::json!({"key": retired_public, "expired_ts": 1_700_000_000_000_i64})
        );
        verify(&body, "example.org", &key);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(body["valid_until_ts"].as_u64().unwrap() > now);
        db.cleanup().await;
    }

    #[tokio::test]
    async fn the_notary_vouches_for_its_own_keys_and_requests_are_checked() {
        let db = TestDb::new(ganglion_storage::Backend::Sqlite).await;
        let key = Arc::new(ServerSigningKey::generate());
        let state = state(&db, key.clone(), Vec::new()).await;
        let post = |body: &str| {
            http::Request::post("/_matrix/key/v2/query")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_owned()))
                .unwrap()
        };
        let (status, body) = call(&state, post(r#"{"server_keys": {"example.org": {}}}"#)).await;
        assert_eq!(status, http::StatusCode::OK, "{body}");
        let docs = body["server_keys"].as_array().unwrap();
        assert_eq!(docs.len(), 1, "{body}");
        verify(&docs[0], "example.org", &key);

        let (status, body) = call(
            &state,
            http::Request::get("/_matrix/key/v2/query/example.org").body(axum::body::Body::empty()).unwrap(),
        )
        .await;
        assert_eq!((status, body["server_keys"].as_array().map(Vec::len)), (http::StatusCode::OK, Some(1)));

        let (status, body) = call(&state, post("[1, 2]")).await;
        assert_eq!((status, body["errcode"].as_str()), (http::StatusCode::BAD_REQUEST, Some("M_BAD_JSON")));
        let (status, body) = call(&state, post("{nope")).await;
        assert_eq!((status, body["errcode"].as_str()), (http::StatusCode::BAD_REQUEST, Some("M_NOT_JSON")));

        let (status, body) =
            call(&state, http::Request::get("/_matrix/federation/v1/version").body(axum::body::Body::empty()).unwrap())
                .await;
        assert_eq!((status, body["server"]["name"].as_str()), (http::StatusCode::OK, Some("Ganglion")));

        // Queries need a signature.
        let (status, body) = call(
            &state,
            http::Request::get("/_matrix/federation/v1/query/profile?user_id=%40a%3Aexample.org")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!((status, body["errcode"].as_str()), (http::StatusCode::UNAUTHORIZED, Some("M_UNAUTHORIZED")));
        db.cleanup().await;
    }

    /// A request from `other.org`, signed with `key`, whose public half `db` already holds.
    async fn signed(db: &TestDb, key: &ServerSigningKey, uri: &str) -> http::Request<axum::body::Body> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let public = ganglion_storage::RemoteKey {
            key_id: format!("ed25519:{}", key.version()),
            public_key: key.public_key_base64().to_owned(),
            valid_until_ts: now + 3_600_000,
            expired_ts: None,
        };
        RemoteKeyStore::new(db.db.clone()).store("other.org", now + 3_600_000, "{}", &[public]).await.unwrap();
        let request = http::Request::get(uri).body(Vec::<u8>::new()).unwrap();
        let input = ruma::api::federation::authentication::ServerSignaturesInput::new(
            OwnedServerName::try_from("other.org").unwrap(),
            OwnedServerName::try_from("example.org").unwrap(),
            key.pair(),
        );
        let header = ruma::api::federation::authentication::XMatrix::try_from_http_request(&request, input).unwrap();
        http::Request::get(uri)
            .header(http::header::AUTHORIZATION, http::HeaderValue::from(&header))
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn signed_queries_answer_profiles_and_aliases_of_this_server_only() {
        let db = TestDb::new(ganglion_storage::Backend::Sqlite).await;
        let state = state(&db, Arc::new(ServerSigningKey::generate()), Vec::new()).await;
        let theirs = ServerSigningKey::generate();
        let alice = ruma::owned_user_id!("@alice:example.org");
        state.users.create_user(&alice, None, false).await.unwrap();
        state.users.set_profile_field(&alice, "displayname", Some("Alice")).await.unwrap();
        let room = ruma::owned_room_id!("!room:example.org");
        state.events.create_alias("#lobby:example.org", &room, &alice).await.unwrap();

        let profile = "/_matrix/federation/v1/query/profile?user_id=%40alice%3Aexample.org";
        let (status, body) = call(&state, signed(&db, &theirs, profile).await).await;
        assert_eq!((status, body["displayname"].as_str()), (http::StatusCode::OK, Some("Alice")), "{body}");
        let one = format!("{profile}&field=avatar_url");
        let (status, body) = call(&state, signed(&db, &theirs, &one).await).await;
        assert_eq!((status, body), (http::StatusCode::OK, serde_json::json!({})), "only the field asked");
        let nobody = "/_matrix/federation/v1/query/profile?user_id=%40nobody%3Aexample.org";
        let (status, body) = call(&state, signed(&db, &theirs, nobody).await).await;
        assert_eq!((status, body["errcode"].as_str()), (http::StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));
        let remote = "/_matrix/federation/v1/query/profile?user_id=%40bob%3Aother.org";
        let (status, _) = call(&state, signed(&db, &theirs, remote).await).await;
        assert_eq!(status, http::StatusCode::BAD_REQUEST, "not ours to answer");

        let dir = "/_matrix/federation/v1/query/directory?room_alias=%23lobby%3Aexample.org";
        let (status, body) = call(&state, signed(&db, &theirs, dir).await).await;
        assert_eq!(status, http::StatusCode::OK, "{body}");
        assert_eq!(body["room_id"], "!room:example.org");
        assert_eq!(body["servers"][0], "example.org");
        let missing = "/_matrix/federation/v1/query/directory?room_alias=%23nope%3Aexample.org";
        let (status, body) = call(&state, signed(&db, &theirs, missing).await).await;
        assert_eq!((status, body["errcode"].as_str()), (http::StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));

        // A signature that does not verify: refused.
        let mut forged = signed(&db, &theirs, dir).await;
        let header = format!(
            "X-Matrix origin=\"other.org\",destination=\"example.org\",key=\"ed25519:{}\",sig=\"{}\"",
            theirs.version(),
            "A".repeat(86)
        );
        forged.headers_mut().insert(http::header::AUTHORIZATION, http::HeaderValue::from_str(&header).unwrap());
        let (status, body) = call(&state, forged).await;
        assert_eq!((status, body["errcode"].as_str()), (http::StatusCode::UNAUTHORIZED, Some("M_UNAUTHORIZED")));
        db.cleanup().await;
    }
}
