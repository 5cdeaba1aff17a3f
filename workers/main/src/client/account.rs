//! Registration (User-Interactive Auth with `m.login.dummy`, guests when enabled), login (password,
//! login token), refresh, `login/get_token`, logout and whoami.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use ganglion_appservice::Registration;
use ganglion_http::{AccessToken, AuthUser, ClientIp, MatrixError, MatrixJson, hash_token, new_access_token, now_ms};
use ganglion_storage::NewRefresh;
use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Accounts;
use crate::writer::random_localpart;

const DUMMY: &str = "m.login.dummy";
const TOKEN: &str = "m.login.registration_token";

#[derive(Debug, Deserialize)]
pub(crate) struct RegisterQuery {
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AuthData {
    #[serde(rename = "type")]
    kind: Option<String>,
    session: Option<String>,
    /// For `m.login.registration_token`.
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RegisterBody {
    username: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    auth: Option<AuthData>,
    /// The client supports refresh tokens (spec v1.3).
    #[serde(default)]
    refresh_token: bool,
    /// A guest upgrading their account (Guest Access module): their access token.
    guest_access_token: Option<String>,
    /// `m.login.application_service`: an application service registering a user of its
    /// namespace, authenticated by its `as_token` instead of User-Interactive Auth.
    #[serde(rename = "type")]
    kind: Option<String>,
}

const APPSERVICE_LOGIN: &str = "m.login.application_service";

/// The application service whose `as_token` authenticates the request, if one does.
/// `Err(M_UNKNOWN_TOKEN)` for a token that is not an application service's.
fn appservice_of(accounts: &Accounts, token: Option<&AccessToken>) -> Result<Option<Arc<Registration>>, MatrixError> {
    let Some(AccessToken(token)) = token else { return Ok(None) };
    match accounts.appservices.by_as_token(token) {
        Some(reg) => Ok(Some(reg.clone())),
        None => Err(MatrixError::unknown_token("Unknown application service token")),
    }
}

/// `register` with `type: m.login.application_service`: no UIA, no rate limit, open even when
/// registration is closed; only users of the service's namespace.
async fn register_for_appservice(
    accounts: &Accounts,
    reg: &Registration,
    body: RegisterBody,
) -> Result<Response, MatrixError> {
    let name = body.username.as_deref().ok_or_else(|| MatrixError::missing_param("Missing username"))?;
    let user_id = if name.starts_with('@') {
        OwnedUserId::try_from(name).map_err(|e| MatrixError::invalid_username(format!("Invalid user ID: {e}")))?
    } else {
        user_id_for(name, accounts)?
    };
    if user_id.server_name() != accounts.server_name {
        return Err(MatrixError::invalid_username("User ID must be on this server"));
    }
    if !reg.is_interested_in_user(user_id.as_str()) {
        return Err(MatrixError::exclusive("User ID is not in the application service's namespace"));
    }
    match accounts.users.create_user(&user_id, None, false).await {
        Ok(()) => {}
        Err(ganglion_storage::Error::Conflict(_)) => return Err(MatrixError::user_in_use("User ID already taken.")),
        Err(e) => return Err(e.into()),
    }
    accounts.users.set_profile_field(&user_id, "displayname", Some(user_id.localpart())).await?;
    tracing::info!(user_id = %user_id, appservice = %reg.id, "application service registered user");
    registered(accounts, &user_id, body).await
}

/// Checks a requested localpart and builds the user ID (`M_INVALID_USERNAME` otherwise).
fn user_id_for(localpart: &str, accounts: &Accounts) -> Result<OwnedUserId, MatrixError> {
    let valid = !localpart.is_empty()
        && localpart.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'));
    if !valid {
        return Err(MatrixError::invalid_username(
            "User ID may only contain lowercase letters, digits and . _ = - / +",
        ));
    }
    let id = format!("@{localpart}:{}", accounts.server_name);
    if id.len() > 255 {
        return Err(MatrixError::invalid_username("User ID is longer than 255 characters"));
    }
    OwnedUserId::try_from(id).map_err(|e| MatrixError::invalid_username(e.to_string()))
}

fn uia_challenge(stage: &str, session: &str, completed: &[String], error: Option<MatrixError>) -> Response {
    let mut body = json!({
        "flows": [{ "stages": [stage] }],
        "params": {},
        "session": session,
        "completed": completed,
    });
    if let Some(e) = error {
        body["errcode"] = Value::String(e.errcode.to_owned());
        body["error"] = Value::String(e.message);
    }
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

/// A new session's tokens, as `/register`, `/login` and `/refresh` answer them.
struct Session {
    access_token: String,
    device_id: String,
    /// With the access token's lifetime in ms, when the client asked for a refresh token.
    refresh: Option<(String, i64)>,
}

impl Session {
    /// Adds `access_token`, `device_id` and, with a refresh token, `refresh_token` and `expires_in_ms`.
    fn fill(&self, body: &mut Value) {
        body["access_token"] = json!(self.access_token);
        body["device_id"] = json!(self.device_id);
        if let Some((token, ms)) = &self.refresh {
            body["refresh_token"] = json!(token);
            body["expires_in_ms"] = json!(ms);
        }
    }
}

async fn issue_token(
    accounts: &Accounts,
    user_id: &UserId,
    device_id: Option<String>,
    display_name: Option<&str>,
    with_refresh: bool,
) -> Result<Session, MatrixError> {
    let device_id = device_id.filter(|d| !d.is_empty()).unwrap_or_else(|| random_localpart(10).to_uppercase());
    accounts.users.upsert_device(user_id, &device_id, display_name).await?;
    let token = new_access_token();
    let refresh = with_refresh.then(|| (new_refresh_token(), accounts.access_token_lifetime_ms));
    let refresh_hash = refresh.as_ref().map(|(t, _)| hash_token(t));
    let new_refresh = refresh_hash.as_deref().map(|h| NewRefresh {
        refresh_hash: h,
        expires_ts: now_ms().saturating_add(accounts.access_token_lifetime_ms),
    });
    // Reusing a device ID logs that device's older session out, as the spec asks.
    accounts.users.start_session(&hash_token(&token), user_id, &device_id, new_refresh).await?;
    Ok(Session { access_token: token, device_id, refresh })
}

/// A fresh refresh token: like an access token, with its own prefix so logs and users can tell them apart.
fn new_refresh_token() -> String {
    format!("ganr_{}", new_access_token().trim_start_matches("gan_"))
}

/// `POST /_matrix/client/v3/register`: register with User-Interactive Auth (`m.login.dummy`).
pub(crate) async fn register(
    State(accounts): State<Accounts>,
    ClientIp(ip): ClientIp,
    Query(q): Query<RegisterQuery>,
    token: Option<AccessToken>,
    MatrixJson(mut body): MatrixJson<RegisterBody>,
) -> Result<Response, MatrixError> {
    let as_type = body.kind.as_deref() == Some(APPSERVICE_LOGIN)
        || body.auth.as_ref().and_then(|a| a.kind.as_deref()) == Some(APPSERVICE_LOGIN);
    match appservice_of(&accounts, token.as_ref())? {
        Some(reg) => {
            if !as_type && body.kind.is_some() {
                return Err(MatrixError::bad_request(
                    "An application service registers with type m.login.application_service",
                ));
            }
            return register_for_appservice(&accounts, &reg, body).await;
        }
        None if as_type => return Err(MatrixError::missing_token("m.login.application_service needs the as_token")),
        None => {}
    }
    accounts.limits.registration.check(&ip)?;
    match q.kind.as_deref() {
        None | Some("user") => {}
        Some("guest") if accounts.guest_access => return register_guest(&accounts, body).await,
        Some("guest") => return Err(MatrixError::guest_access_forbidden("Guest access is disabled")),
        Some(other) => return Err(MatrixError::invalid_param(format!("Unknown kind {other}"))),
    }
    if !accounts.registration_open {
        return Err(MatrixError::forbidden("Registration has been disabled"));
    }
    // Validate what can be validated before asking the client to authenticate, as Synapse does.
    // A guest upgrading keeps their user ID, given as `username`.
    let upgrading = match body.guest_access_token.as_deref() {
        Some(t) => {
            let who = accounts.users.whoami(&hash_token(t)).await?.filter(|w| w.is_guest);
            let who = who.ok_or_else(|| MatrixError::forbidden("guest_access_token is not a guest's access token"))?;
            if body.username.as_deref() != Some(who.user_id.localpart()) {
                return Err(MatrixError::forbidden("username must be the guest's localpart"));
            }
            true
        }
        None => false,
    };
    let user_id = match body.username.as_deref() {
        Some(name) => {
            let id = user_id_for(&name.to_lowercase(), &accounts)?;
            if name.chars().any(|c| c.is_uppercase()) {
                return Err(MatrixError::invalid_username("User ID must be lowercase"));
            }
            if !upgrading && accounts.users.user_exists(&id).await? {
                return Err(MatrixError::user_in_use("User ID already taken."));
            }
            if accounts.appservices.exclusive_user_owner(id.as_str()).is_some() {
                return Err(MatrixError::exclusive("This user ID is reserved by an application service"));
            }
            Some(id)
        }
        None => None,
    };
    if let Some(p) = &body.password
        && p.len() > 512
    {
        return Err(MatrixError::invalid_param("Password too long"));
    }

    let stage = if accounts.require_token { TOKEN } else { DUMMY };
    let completed = match &body.auth {
        None => {
            let session = random_localpart(24);
            accounts.users.create_uia_session(&session).await?;
            return Ok(uia_challenge(stage, &session, &[], None));
        }
        Some(auth) => {
            let session = match &auth.session {
                Some(s) => {
                    if accounts.users.uia_session(s).await?.is_none() {
                        return Err(MatrixError::bad_request("Unknown UIA session"));
                    }
                    s.clone()
                }
                None => {
                    let s = random_localpart(24);
                    accounts.users.create_uia_session(&s).await?;
                    s
                }
            };
            match auth.kind.as_deref() {
                Some(kind) if kind == stage && stage == DUMMY => {
                    accounts.users.set_uia_stages(&session, &[DUMMY.to_owned()]).await?;
                    session
                }
                Some(kind) if kind == stage => {
                    // The token is spent as the stage completes, so two registrations cannot
                    // both pass with the last use of a token.
                    let token = auth.token.as_deref().unwrap_or_default();
                    if token.is_empty() || !accounts.users.use_registration_token(token).await? {
                        let stages = accounts.users.uia_session(&session).await?.unwrap_or_default();
                        return Ok(uia_challenge(
                            stage,
                            &session,
                            &stages,
                            Some(MatrixError::forbidden("Invalid registration token")),
                        ));
                    }
                    accounts.users.set_uia_stages(&session, &[TOKEN.to_owned()]).await?;
                    session
                }
                Some(other) => {
                    let stages = accounts.users.uia_session(&session).await?.unwrap_or_default();
                    return Ok(uia_challenge(
                        stage,
                        &session,
                        &stages,
                        Some(MatrixError::bad_request(format!("Unsupported login type {other}"))),
                    ));
                }
                None => {
                    let stages = accounts.users.uia_session(&session).await?.unwrap_or_default();
                    if !stages.iter().any(|s| s == stage) {
                        return Ok(uia_challenge(stage, &session, &stages, None));
                    }
                    session
                }
            }
        }
    };

    let user_id = match user_id {
        Some(id) => id,
        None => loop {
            let candidate = user_id_for(&format!("u{}", rand::random::<u32>()), &accounts)?;
            if !accounts.users.user_exists(&candidate).await? {
                break candidate;
            }
        },
    };
    let hash = match body.password.take() {
        Some(p) => Some(accounts.hasher.hash(p).await.map_err(MatrixError::internal)?),
        None => None,
    };
    let created = if upgrading {
        // Only a guest account is upgraded: a second upgrade finds a full account and is refused.
        if accounts.users.upgrade_guest(&user_id, hash.as_deref()).await? {
            Ok(())
        } else {
            Err(ganglion_storage::Error::Conflict(format!("{user_id} is not a guest")))
        }
    } else {
        accounts.users.create_user(&user_id, hash.as_deref(), false).await
    };
    match created {
        Ok(()) => {}
        Err(ganglion_storage::Error::Conflict(_)) => return Err(MatrixError::user_in_use("User ID already taken.")),
        Err(e) => return Err(e.into()),
    }
    if !upgrading {
        // A new account shows its localpart until the user picks a name, as Synapse does.
        accounts.users.set_profile_field(&user_id, "displayname", Some(user_id.localpart())).await?;
    }
    accounts.users.delete_uia_session(&completed).await?;
    tracing::info!(user_id = %user_id, "registered user");
    registered(&accounts, &user_id, body).await
}

/// The answer to a registration: the user ID alone with `inhibit_login`, else a new session.
async fn registered(accounts: &Accounts, user_id: &UserId, body: RegisterBody) -> Result<Response, MatrixError> {
    if body.inhibit_login {
        return Ok(Json(json!({ "user_id": user_id })).into_response());
    }
    let session =
        issue_token(accounts, user_id, body.device_id, body.initial_device_display_name.as_deref(), body.refresh_token)
            .await?;
    let mut out = json!({ "user_id": user_id, "home_server": accounts.server_name });
    session.fill(&mut out);
    Ok(Json(out).into_response())
}

/// `register?kind=guest`: a guest account with a numeric localpart and no password, signed in at once.
async fn register_guest(accounts: &Accounts, body: RegisterBody) -> Result<Response, MatrixError> {
    let user_id = loop {
        let candidate = user_id_for(&rand::random::<u32>().to_string(), accounts)?;
        match accounts.users.create_guest(&candidate).await {
            Ok(()) => break candidate,
            Err(ganglion_storage::Error::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    tracing::info!(user_id = %user_id, "registered guest");
    let session =
        issue_token(accounts, &user_id, None, body.initial_device_display_name.as_deref(), body.refresh_token).await?;
    let mut out = json!({ "user_id": user_id, "home_server": accounts.server_name });
    session.fill(&mut out);
    Ok(Json(out).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct AvailableQuery {
    username: Option<String>,
}

/// `GET /_matrix/client/v3/register/available`: whether a username can be registered.
pub(crate) async fn register_available(
    State(accounts): State<Accounts>,
    Query(q): Query<AvailableQuery>,
) -> Result<Json<Value>, MatrixError> {
    let name = q.username.ok_or_else(|| MatrixError::missing_param("Missing username"))?;
    let id = user_id_for(&name, &accounts)?;
    if accounts.users.user_exists(&id).await? {
        return Err(MatrixError::user_in_use("User ID already taken."));
    }
    if accounts.appservices.exclusive_user_owner(id.as_str()).is_some() {
        return Err(MatrixError::exclusive("This user ID is reserved by an application service"));
    }
    Ok(Json(json!({ "available": true })))
}

/// `GET /_matrix/client/v3/login`: the login types supported. `m.login.token` is only usable with
/// tokens from `/login/get_token` (there is no SSO), hence `get_login_token: true`.
pub(crate) async fn login_flows() -> Json<Value> {
    Json(json!({ "flows": [
        { "type": "m.login.password" },
        { "type": "m.login.token", "get_login_token": true },
        { "type": APPSERVICE_LOGIN },
    ] }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct Identifier {
    #[serde(rename = "type")]
    kind: String,
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginBody {
    #[serde(rename = "type")]
    kind: String,
    identifier: Option<Identifier>,
    /// Deprecated form of `identifier`.
    user: Option<String>,
    password: Option<String>,
    /// For `m.login.token`.
    token: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    refresh_token: bool,
}

/// `POST /_matrix/client/v3/login`: password login, or `m.login.token` with a token from
/// `/login/get_token`.
pub(crate) async fn login(
    State(accounts): State<Accounts>,
    ClientIp(ip): ClientIp,
    token: Option<AccessToken>,
    MatrixJson(body): MatrixJson<LoginBody>,
) -> Result<Json<Value>, MatrixError> {
    let appservice = if body.kind == APPSERVICE_LOGIN { appservice_of(&accounts, token.as_ref())? } else { None };
    if appservice.as_ref().is_none_or(|a| a.rate_limited) {
        accounts.limits.login.check(&ip)?;
    }
    let user_id = match body.kind.as_str() {
        APPSERVICE_LOGIN => {
            let reg = appservice
                .ok_or_else(|| MatrixError::missing_token("m.login.application_service needs the as_token"))?;
            let user = match (&body.identifier, &body.user) {
                (Some(Identifier { kind, user: Some(u) }), _) if kind == "m.id.user" => u.clone(),
                (_, Some(u)) => u.clone(),
                _ => return Err(MatrixError::missing_param("Missing user identifier")),
            };
            let user_id = if user.starts_with('@') {
                OwnedUserId::try_from(user.as_str())
                    .map_err(|e| MatrixError::invalid_param(format!("Invalid user ID: {e}")))?
            } else {
                user_id_for(&user, &accounts)?
            };
            if !reg.is_interested_in_user(user_id.as_str()) {
                return Err(MatrixError::forbidden("User is not in the application service's namespace"));
            }
            if !accounts.users.user_exists(&user_id).await? {
                return Err(MatrixError::forbidden("Application service has not registered this user"));
            }
            user_id
        }
        "m.login.password" => password_login(&accounts, &body).await?,
        "m.login.token" => {
            let token = body.token.as_deref().ok_or_else(|| MatrixError::missing_param("Missing token"))?;
            accounts
                .users
                .take_login_token(&hash_token(token))
                .await?
                .ok_or_else(|| MatrixError::forbidden("Invalid or expired login token"))?
        }
        other => {
            return Err(MatrixError::new(StatusCode::BAD_REQUEST, "M_UNKNOWN", format!("Unknown login type {other}")));
        }
    };
    let session = issue_token(
        &accounts,
        &user_id,
        body.device_id,
        body.initial_device_display_name.as_deref(),
        body.refresh_token,
    )
    .await?;
    let mut out = json!({ "user_id": user_id, "home_server": accounts.server_name });
    session.fill(&mut out);
    Ok(Json(out))
}

/// Checks an `m.login.password` body; the user it signs in.
async fn password_login(accounts: &Accounts, body: &LoginBody) -> Result<OwnedUserId, MatrixError> {
    let user = match (&body.identifier, &body.user) {
        (Some(Identifier { kind, user: Some(u) }), _) if kind == "m.id.user" => u.clone(),
        (Some(Identifier { kind, .. }), _) if kind != "m.id.user" => {
            return Err(MatrixError::new(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                format!("Unsupported identifier type {kind}"),
            ));
        }
        (_, Some(u)) => u.clone(),
        _ => return Err(MatrixError::missing_param("Missing user identifier")),
    };
    let password = body.password.clone().ok_or_else(|| MatrixError::missing_param("Missing password"))?;
    let user_id = if user.starts_with('@') {
        OwnedUserId::try_from(user.as_str()).map_err(|_| MatrixError::forbidden("Invalid username or password"))?
    } else {
        user_id_for(&user.to_lowercase(), accounts)
            .map_err(|_| MatrixError::forbidden("Invalid username or password"))?
    };
    if user_id.server_name() != accounts.server_name {
        return Err(MatrixError::forbidden("Invalid username or password"));
    }
    let Some(stored) = accounts.users.password_hash(&user_id).await? else {
        // Hash anyway so an unknown user takes as long as a wrong password.
        let _ = accounts.hasher.hash(password).await;
        return Err(MatrixError::forbidden("Invalid username or password"));
    };
    if !accounts.hasher.verify(password, stored).await {
        return Err(MatrixError::forbidden("Invalid username or password"));
    }
    Ok(user_id)
}

#[derive(Debug, Deserialize)]
pub(crate) struct RefreshBody {
    refresh_token: String,
}

/// `POST /_matrix/client/v3/refresh`: a new access token and refresh token for a refresh token.
/// The old refresh token keeps working until the new access or refresh token is first used.
pub(crate) async fn refresh(
    State(accounts): State<Accounts>,
    ClientIp(ip): ClientIp,
    MatrixJson(body): MatrixJson<RefreshBody>,
) -> Result<Json<Value>, MatrixError> {
    accounts.limits.login.check(&ip)?;
    let access = new_access_token();
    let refresh = new_refresh_token();
    let refresh_hash = hash_token(&refresh);
    let new = NewRefresh {
        refresh_hash: &refresh_hash,
        expires_ts: now_ms().saturating_add(accounts.access_token_lifetime_ms),
    };
    if accounts.users.refresh_session(&hash_token(&body.refresh_token), &hash_token(&access), new).await?.is_none() {
        return Err(MatrixError::unknown_token("Unknown refresh token"));
    }
    Ok(Json(json!({
        "access_token": access,
        "refresh_token": refresh,
        "expires_in_ms": accounts.access_token_lifetime_ms,
    })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct GetTokenBody {
    auth: Option<super::devices::PasswordAuth>,
}

/// `POST /_matrix/client/v1/login/get_token` (spec v1.7): after password User-Interactive Auth, a
/// short-lived single-use token another device can log in with (`m.login.token`).
pub(crate) async fn get_login_token(
    State(accounts): State<Accounts>,
    State(keys): State<crate::Keys>,
    ClientIp(ip): ClientIp,
    user: AuthUser,
    MatrixJson(body): MatrixJson<GetTokenBody>,
) -> Result<Response, MatrixError> {
    accounts.limits.login.check(&ip)?;
    if let Some(challenge) = super::devices::password_uia(&keys, &user, body.auth.as_ref()).await? {
        return Ok(challenge);
    }
    if let Some(session) = body.auth.as_ref().and_then(|a| a.session.as_deref()) {
        accounts.users.delete_uia_session(session).await?;
    }
    let token = new_access_token().replacen("gan_", "ganl_", 1);
    let expires_ts = now_ms().saturating_add(accounts.login_token_lifetime_ms);
    accounts.users.create_login_token(&hash_token(&token), &user.user_id, expires_ts).await?;
    Ok(Json(json!({ "login_token": token, "expires_in_ms": accounts.login_token_lifetime_ms })).into_response())
}

/// `POST /_matrix/client/v3/logout`: invalidates the token used.
pub(crate) async fn logout(State(accounts): State<Accounts>, user: AuthUser) -> Result<Json<Value>, MatrixError> {
    accounts.users.delete_access_token(&user.token_hash).await?;
    accounts.pushers.remove_for_device(&user.user_id, user.device_str()).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/logout/all`: invalidates every token of the user.
pub(crate) async fn logout_all(State(accounts): State<Accounts>, user: AuthUser) -> Result<Json<Value>, MatrixError> {
    accounts.users.delete_all_access_tokens(&user.user_id).await?;
    accounts.pushers.remove_for_user(&user.user_id).await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/account/whoami`: who the token belongs to.
pub(crate) async fn whoami(user: AuthUser) -> Json<Value> {
    let mut body = json!({ "user_id": user.user_id, "is_guest": user.is_guest });
    // An application service acting without a device has none to name.
    if let Some(d) = &user.device_id {
        body["device_id"] = json!(d);
    }
    Json(body)
}

#[derive(Debug, Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity`.
pub(crate) async fn registration_token_validity(
    State(accounts): State<Accounts>,
    ClientIp(ip): ClientIp,
    Query(q): Query<TokenQuery>,
) -> Result<Json<Value>, MatrixError> {
    accounts.limits.registration.check(&ip)?;
    if !accounts.registration_open {
        return Err(MatrixError::forbidden("Registration has been disabled"));
    }
    let token = q.token.ok_or_else(|| MatrixError::missing_param("Missing token"))?;
    Ok(Json(json!({ "valid": accounts.users.registration_token_valid(&token).await? })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct NewTokenBody {
    token: Option<String>,
    uses_allowed: Option<i64>,
    expiry_time: Option<i64>,
    length: Option<usize>,
}

fn require_admin(user: &AuthUser) -> Result<(), MatrixError> {
    if !user.is_admin {
        return Err(MatrixError::forbidden("You are not a server admin"));
    }
    Ok(())
}

/// `POST /_synapse/admin/v1/registration_tokens/new` (the admin API Synapse offers, so existing
/// tools work): creates a token, random when none is given.
pub(crate) async fn create_registration_token(
    State(accounts): State<Accounts>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<NewTokenBody>,
) -> Result<Json<Value>, MatrixError> {
    require_admin(&user)?;
    if body.uses_allowed.is_some_and(|u| u < 0) || body.expiry_time.is_some_and(|t| t < 0) {
        return Err(MatrixError::invalid_param("uses_allowed and expiry_time must not be negative"));
    }
    let token = match body.token {
        Some(t) => {
            if t.is_empty() || t.len() > 64 || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b)) {
                return Err(MatrixError::invalid_param("token must be 1-64 characters of A-Z a-z 0-9 . _ ~ -"));
            }
            t
        }
        None => random_localpart(body.length.unwrap_or(16).clamp(1, 64)),
    };
    if !accounts.users.create_registration_token(&token, body.uses_allowed, body.expiry_time).await? {
        return Err(MatrixError::invalid_param(format!("Token {token} already exists")));
    }
    Ok(Json(json!({
        "token": token,
        "uses_allowed": body.uses_allowed,
        "pending": 0,
        "completed": 0,
        "expiry_time": body.expiry_time,
    })))
}

/// `GET /_synapse/admin/v1/registration_tokens`.
pub(crate) async fn list_registration_tokens(
    State(accounts): State<Accounts>,
    user: AuthUser,
) -> Result<Json<Value>, MatrixError> {
    require_admin(&user)?;
    let tokens: Vec<Value> = accounts
        .users
        .registration_tokens()
        .await?
        .into_iter()
        .map(|(token, uses_allowed, completed, expiry_time)| {
            json!({ "token": token, "uses_allowed": uses_allowed, "pending": 0, "completed": completed, "expiry_time": expiry_time })
        })
        .collect();
    Ok(Json(json!({ "registration_tokens": tokens })))
}

/// `DELETE /_synapse/admin/v1/registration_tokens/{token}`.
pub(crate) async fn delete_registration_token(
    State(accounts): State<Accounts>,
    user: AuthUser,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Result<Json<Value>, MatrixError> {
    require_admin(&user)?;
    if !accounts.users.delete_registration_token(&token).await? {
        return Err(MatrixError::not_found("No such registration token"));
    }
    Ok(Json(json!({})))
}
