//! Access tokens: 256-bit random values, stored only as SHA-256 hashes, presented as
//! `Authorization: Bearer …` (or the deprecated `access_token` query parameter).

use axum::extract::{FromRef, FromRequestParts};
use base64::Engine as _;
use http::request::Parts;
use std::sync::Arc;

use ruma::{OwnedDeviceId, OwnedUserId};
use sha2::{Digest, Sha256};

use ganglion_appservice::{Appservices, Registration};
use ganglion_storage::UserStore;

use crate::MatrixError;

/// Resolves access tokens (users' and application services'); the substate handlers' extractors
/// need.
#[derive(Debug, Clone)]
pub struct Authenticator {
    users: UserStore,
    appservices: Appservices,
}

impl Authenticator {
    /// Looks user tokens up in `users`, application service tokens in `appservices`.
    pub fn new(users: UserStore, appservices: Appservices) -> Self {
        Self { users, appservices }
    }

    /// The registered application services.
    pub fn appservices(&self) -> &Appservices {
        &self.appservices
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// A fresh access token: 32 random bytes, URL-safe base64, with a recognisable prefix.
pub fn new_access_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("gan_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a token. Look-ups are by this hash, so comparing secrets never happens in
/// code whose timing depends on them.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The raw access token of a request, not yet checked.
#[derive(Debug, Clone)]
pub struct AccessToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for AccessToken {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(h) = parts.headers.get(http::header::AUTHORIZATION) {
            let h = h.to_str().map_err(|_| MatrixError::unknown_token("Invalid Authorization header"))?;
            return match h.strip_prefix("Bearer ") {
                Some(t) if !t.trim().is_empty() => Ok(Self(t.trim().to_owned())),
                _ => Err(MatrixError::missing_token("Missing access token")),
            };
        }
        match query_param(&parts.uri, "access_token") {
            Some(t) if !t.is_empty() => Ok(Self(t)),
            _ => Err(MatrixError::missing_token("Missing access token")),
        }
    }
}

/// `Option<AccessToken>`: `None` when the request carries no token at all (an endpoint open to
/// anyone that also accepts one); a malformed `Authorization` header is still an error.
impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for AccessToken {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Option<Self>, Self::Rejection> {
        match <Self as FromRequestParts<S>>::from_request_parts(parts, state).await {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.errcode == "M_MISSING_TOKEN" => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Every query parameter of the request, percent-decoded, in order.
pub fn query_pairs(uri: &http::Uri) -> Vec<(String, String)> {
    let query = uri.query().unwrap_or_default();
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// A query parameter of the request, percent-decoded.
pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    query_pairs(uri).into_iter().find_map(|(k, v)| (k == name).then_some(v))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The authenticated user of a request. Missing token → `M_MISSING_TOKEN`; unknown or revoked →
/// `M_UNKNOWN_TOKEN`; expired (a token that came with a refresh token) → `M_UNKNOWN_TOKEN` with
/// `soft_logout: true`; a guest on an endpoint guests may not use → `M_GUEST_ACCESS_FORBIDDEN`.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device the token belongs to; `None` for an application service acting without
    /// device masquerading.
    pub device_id: Option<OwnedDeviceId>,
    /// Whether the user is a server admin.
    pub is_admin: bool,
    /// Whether this is a guest account, limited to [`guest_may_use`] endpoints.
    pub is_guest: bool,
    /// The hash of the token used, for logout.
    pub token_hash: String,
    /// The application service whose `as_token` this was.
    pub appservice: Option<Arc<Registration>>,
    /// The `?ts=` an application service gave: the `origin_server_ts` of the event it sends
    /// (bridged messages keep their original time).
    pub ts: Option<u64>,
}

impl AuthUser {
    /// The device, or `M_MISSING_PARAM` for an application service acting without one, on
    /// endpoints that need a device (keys, to-device).
    pub fn device(&self) -> Result<&ruma::DeviceId, MatrixError> {
        self.device_id.as_deref().ok_or_else(|| {
            MatrixError::missing_param(
                "This endpoint needs a device: pass device_id when acting as an application service",
            )
        })
    }

    /// The device ID, or `""` for an application service acting without one (transaction-ID
    /// scopes, stored pushers).
    pub fn device_str(&self) -> &str {
        self.device_id.as_ref().map_or("", |d| d.as_str())
    }

    /// Whether rate limits apply: not to an application service registered with
    /// `rate_limited: false`.
    pub fn rate_limited(&self) -> bool {
        self.appservice.as_ref().is_none_or(|a| a.rate_limited)
    }
}

/// Endpoints the spec's Guest Access module lets guests use (method, path after
/// `/_matrix/client/{version}/`, `*` standing for one segment), plus the everyday ones a guest
/// client needs to show a room it joined: typing, receipts, read markers, its own account data,
/// profiles, the public room list, key changes and logout.
const GUEST_ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "rooms/*/state"),
    ("GET", "rooms/*/context/*"),
    ("GET", "rooms/*/event/*"),
    ("GET", "rooms/*/state/*"),
    ("GET", "rooms/*/state/*/*"),
    ("GET", "rooms/*/messages"),
    ("GET", "rooms/*/members"),
    ("GET", "rooms/*/initialSync"),
    ("GET", "sync"),
    ("GET", "events"),
    ("GET", "media/download/*/*"),
    ("GET", "media/download/*/*/*"),
    ("GET", "media/thumbnail/*/*"),
    ("POST", "rooms/*/join"),
    ("POST", "join/*"),
    ("POST", "rooms/*/leave"),
    ("PUT", "rooms/*/send/*/*"),
    ("PUT", "rooms/*/state/*"),
    ("PUT", "rooms/*/state/*/*"),
    ("PUT", "sendToDevice/*/*"),
    ("PUT", "profile/*/displayname"),
    ("GET", "profile/*"),
    ("GET", "profile/*/*"),
    ("GET", "devices"),
    ("GET", "devices/*"),
    ("PUT", "devices/*"),
    ("GET", "account/whoami"),
    ("POST", "keys/upload"),
    ("POST", "keys/query"),
    ("POST", "keys/claim"),
    ("GET", "keys/changes"),
    ("PUT", "rooms/*/typing/*"),
    ("POST", "rooms/*/receipt/*/*"),
    ("POST", "rooms/*/read_markers"),
    ("GET", "user/*/account_data/*"),
    ("PUT", "user/*/account_data/*"),
    ("GET", "user/*/rooms/*/account_data/*"),
    ("PUT", "user/*/rooms/*/account_data/*"),
    ("GET", "publicRooms"),
    ("POST", "publicRooms"),
    ("GET", "capabilities"),
    ("GET", "pushrules/"),
    ("POST", "logout"),
];

/// Whether a guest may call `method path` (a full request path, e.g. `/_matrix/client/v3/sync`).
pub fn guest_may_use(method: &http::Method, path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/_matrix/client/") else { return false };
    // Drop the version segment (`r0`, `v3`, `v1`, `unstable`).
    let Some((_, rest)) = rest.split_once('/') else { return false };
    let segments: Vec<&str> = rest.split('/').collect();
    GUEST_ENDPOINTS.iter().any(|(m, pattern)| {
        let pattern: Vec<&str> = pattern.split('/').collect();
        *m == method.as_str()
            && pattern.len() == segments.len()
            && pattern.iter().zip(&segments).all(|(p, s)| *p == "*" || p == s)
    })
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let AccessToken(token) = AccessToken::from_request_parts(parts, state).await?;
        let auth = Authenticator::from_ref(state);
        let token_hash = hash_token(&token);
        if let Some(reg) = auth.appservices.by_as_token(&token) {
            return appservice_user(&auth, parts, reg.clone(), token_hash).await;
        }
        let who = auth.users.whoami(&token_hash).await?;
        let who = who.ok_or_else(|| MatrixError::unknown_token("Unknown access token"))?;
        if who.expires_ts.is_some_and(|t| t <= now_ms()) {
            return Err(MatrixError::unknown_token("Access token has expired").with("soft_logout", true.into()));
        }
        if who.is_guest && !guest_may_use(&parts.method, parts.uri.path()) {
            return Err(MatrixError::guest_access_forbidden("Guest access is not allowed on this endpoint"));
        }
        tracing::Span::current().record("user_id", who.user_id.as_str());
        Ok(Self {
            user_id: who.user_id,
            device_id: Some(who.device_id),
            is_admin: who.is_admin,
            is_guest: who.is_guest,
            token_hash,
            appservice: None,
            ts: None,
        })
    }
}

/// An application service's request: as its sender, or as `?user_id=` inside its user
/// namespace, optionally on one of that user's devices (`org.matrix.msc3202.device_id`, or
/// MSC4326's `device_id`).
async fn appservice_user(
    auth: &Authenticator,
    parts: &Parts,
    reg: Arc<Registration>,
    token_hash: String,
) -> Result<AuthUser, MatrixError> {
    let user_id = match query_param(&parts.uri, "user_id").filter(|u| !u.is_empty()) {
        None => reg.sender.clone(),
        Some(u) => {
            let user_id = OwnedUserId::try_from(u.as_str())
                .map_err(|e| MatrixError::invalid_param(format!("Invalid user_id {u}: {e}")))?;
            if !reg.is_interested_in_user(user_id.as_str()) {
                return Err(MatrixError::forbidden(
                    "Application service cannot masquerade as this user (not in its namespace)",
                ));
            }
            user_id
        }
    };
    // The service may act as its users only once they exist; registering them is how they
    // come to. The sender exists from start-up.
    let exists = auth.users.user_exists(&user_id).await?;
    let registering = parts.uri.path().ends_with("/register");
    if !exists && !registering {
        return Err(MatrixError::forbidden("Application service has not registered this user"));
    }
    let device = query_param(&parts.uri, "org.matrix.msc3202.device_id")
        .or_else(|| query_param(&parts.uri, "device_id"))
        .filter(|d| !d.is_empty());
    let device_id = match device {
        Some(d) => {
            if auth.users.device(&user_id, &d).await?.is_none() {
                return Err(MatrixError::forbidden("Application service has not registered this device"));
            }
            Some(OwnedDeviceId::from(d))
        }
        None => None,
    };
    tracing::Span::current().record("user_id", user_id.as_str());
    let ts = match query_param(&parts.uri, "ts") {
        Some(t) => {
            Some(t.parse::<u64>().map_err(|_| MatrixError::invalid_param("ts must be a timestamp in milliseconds"))?)
        }
        None => None,
    };
    Ok(AuthUser { user_id, device_id, is_admin: false, is_guest: false, token_hash, appservice: Some(reg), ts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hash_stably() {
        let a = new_access_token();
        let b = new_access_token();
        assert_ne!(a, b);
        assert!(a.len() >= 4 + 43);
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn guests_reach_only_their_endpoints() {
        let get = http::Method::GET;
        let post = http::Method::POST;
        assert!(guest_may_use(&get, "/_matrix/client/v3/sync"));
        assert!(guest_may_use(&get, "/_matrix/client/r0/rooms/!a:x/messages"));
        assert!(guest_may_use(&post, "/_matrix/client/v3/rooms/!a:x/join"));
        assert!(!guest_may_use(&post, "/_matrix/client/v3/createRoom"));
        assert!(!guest_may_use(&post, "/_matrix/client/v3/rooms/!a:x/messages"));
        assert!(!guest_may_use(&get, "/_matrix/client/v3/rooms/!a:x/messages/extra"));
        assert!(!guest_may_use(&get, "/_synapse/admin/v1/registration_tokens"));
    }

    #[test]
    fn query_tokens_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Bb"), "a+b");
        assert_eq!(percent_decode("plain"), "plain");
    }
}
