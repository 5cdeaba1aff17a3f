//! Email addresses on accounts: `requestToken` mails a link, following it validates the session,
//! `/account/3pid/add` (behind the password) puts the address on the account. Email pushers may
//! only mail such an address. Without an `email` section none of this is offered.
//!
//! Addresses are only ever validated by this server (no identity server): `bind`/`unbind` are
//! not offered.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use ganglion_http::{AuthUser, ClientIp, MatrixError, MatrixJson, hash_token};
use ganglion_storage::ThreepidSession;
use serde::Deserialize;
use serde_json::{Value, json};

use super::devices::{PasswordAuth, password_uia};
use crate::{Accounts, Keys, Threepids, UserData};

/// The path of the link mailed by `requestToken`.
pub(crate) const SUBMIT_TOKEN_PATH: &str = "/_matrix/client/unstable/add_threepid/email/submit_token";

fn unsupported() -> MatrixError {
    MatrixError::new(
        StatusCode::BAD_REQUEST,
        "M_THREEPID_MEDIUM_NOT_SUPPORTED",
        "This server has no email configured, so addresses cannot be added",
    )
}

/// The canonical form of an address (Synapse's too): trimmed and lower-cased. `None` when it is
/// not plausibly an address.
pub(crate) fn canonical_email(raw: &str) -> Option<String> {
    let e = raw.trim().to_lowercase();
    let (local, domain) = e.split_once('@')?;
    let plausible = !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'));
    plausible.then_some(e)
}

fn valid_client_secret(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '=' | '_' | '-'))
}

#[derive(Debug, Deserialize)]
pub(crate) struct RequestTokenBody {
    client_secret: Option<String>,
    email: Option<String>,
    send_attempt: Option<i64>,
}

/// `POST /_matrix/client/v3/account/3pid/email/requestToken`.
pub(crate) async fn request_token(
    State(t): State<Threepids>,
    State(accounts): State<Accounts>,
    ClientIp(ip): ClientIp,
    MatrixJson(body): MatrixJson<RequestTokenBody>,
) -> Result<Json<Value>, MatrixError> {
    let Some(mailer) = &t.mailer else { return Err(unsupported()) };
    accounts.limits.registration.check(&ip)?;
    let secret = body.client_secret.ok_or_else(|| MatrixError::missing_param("Missing client_secret"))?;
    if !valid_client_secret(&secret) {
        return Err(MatrixError::invalid_param("Invalid client_secret"));
    }
    let raw = body.email.ok_or_else(|| MatrixError::missing_param("Missing email"))?;
    let email = canonical_email(&raw).ok_or_else(|| MatrixError::invalid_param("Unable to parse email address"))?;
    let attempt = body.send_attempt.ok_or_else(|| MatrixError::missing_param("Missing send_attempt"))?;
    if t.store.owner("email", &email).await?.is_some() {
        return Err(MatrixError::new(StatusCode::BAD_REQUEST, "M_THREEPID_IN_USE", "Email is already in use"));
    }
    let existing = t.store.session_for(&secret, &email).await?;
    if let Some(s) = &existing
        && attempt <= s.send_attempt
    {
        // A retry of a request already mailed: same session, no second email (as the spec says).
        return Ok(Json(json!({ "sid": s.sid })));
    }
    let token = crate::writer::random_localpart(32);
    let session = ThreepidSession {
        sid: existing.as_ref().map_or_else(|| crate::writer::random_localpart(24), |s| s.sid.clone()),
        client_secret: secret,
        medium: "email".into(),
        address: email.clone(),
        send_attempt: attempt,
        created_ts: crate::presence_writer::now_ms(),
        validated_ts: None,
    };
    let link = format!(
        "{}{}?token={token}&client_secret={}&sid={}",
        t.public_baseurl.trim_end_matches('/'),
        SUBMIT_TOKEN_PATH,
        session.client_secret,
        session.sid
    );
    t.store.put_session(&session, &hash_token(&token)).await?;
    let (subject, text, html) = mailer.validation(&link);
    if let Err(e) = mailer.send(&email, &subject, text, html).await {
        tracing::warn!(error = %e, "sending a validation email failed");
        return Err(MatrixError::new(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", "Could not send the email"));
    }
    Ok(Json(json!({ "sid": session.sid })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct SubmitToken {
    token: Option<String>,
    client_secret: Option<String>,
    sid: Option<String>,
}

async fn submit(t: &Threepids, q: SubmitToken) -> Result<bool, MatrixError> {
    let (Some(token), Some(secret), Some(sid)) = (q.token, q.client_secret, q.sid) else {
        return Err(MatrixError::missing_param("Missing token, client_secret or sid"));
    };
    let not_before = crate::presence_writer::now_ms() - t.token_lifetime_ms;
    Ok(t.store.validate(&sid, &secret, &hash_token(&token), not_before).await?)
}

/// `GET …/add_threepid/email/submit_token`: the link in the email, opened in a browser.
pub(crate) async fn submit_token_link(State(t): State<Threepids>, Query(q): Query<SubmitToken>) -> Response {
    let page = |status: StatusCode, msg: &str| {
        (
            status,
            Html(format!("<!DOCTYPE html><html><body style=\"font-family: sans-serif\"><p>{msg}</p></body></html>")),
        )
            .into_response()
    };
    match submit(&t, q).await {
        Ok(true) => page(StatusCode::OK, "Your email address has been validated. Return to your client to finish."),
        Ok(false) => page(StatusCode::BAD_REQUEST, "This link is invalid or has expired."),
        Err(_) => page(StatusCode::BAD_REQUEST, "This link is incomplete."),
    }
}

/// `POST …/add_threepid/email/submit_token`: the same, for a client that asks for the token.
pub(crate) async fn submit_token_json(
    State(t): State<Threepids>,
    MatrixJson(q): MatrixJson<SubmitToken>,
) -> Result<Json<Value>, MatrixError> {
    Ok(Json(json!({ "success": submit(&t, q).await? })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct AddBody {
    client_secret: Option<String>,
    sid: Option<String>,
    auth: Option<PasswordAuth>,
}

/// `POST /_matrix/client/v3/account/3pid/add`: behind the password, adds a validated address.
pub(crate) async fn add(
    State(t): State<Threepids>,
    State(keys): State<Keys>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<AddBody>,
) -> Result<Response, MatrixError> {
    if t.mailer.is_none() {
        return Err(unsupported());
    }
    let secret = body.client_secret.ok_or_else(|| MatrixError::missing_param("Missing client_secret"))?;
    let sid = body.sid.ok_or_else(|| MatrixError::missing_param("Missing sid"))?;
    if let Some(challenge) = password_uia(&keys, &user, body.auth.as_ref()).await? {
        return Ok(challenge);
    }
    let not_before = crate::presence_writer::now_ms() - t.token_lifetime_ms;
    let session =
        t.store.session(&sid, &secret).await?.filter(|s| s.validated_ts.is_some() && s.created_ts >= not_before);
    let Some(s) = session else {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            "M_THREEPID_AUTH_FAILED",
            "No validated 3pid session found",
        ));
    };
    if !t.store.add(&user.user_id, &s.medium, &s.address, s.validated_ts.unwrap_or_default()).await? {
        return Err(MatrixError::new(StatusCode::BAD_REQUEST, "M_THREEPID_IN_USE", "Email is already in use"));
    }
    Ok(Json(json!({})).into_response())
}

/// `GET /_matrix/client/v3/account/3pid`.
pub(crate) async fn list(State(t): State<Threepids>, user: AuthUser) -> Result<Json<Value>, MatrixError> {
    let list: Vec<Value> = t
        .store
        .for_user(&user.user_id)
        .await?
        .iter()
        .map(|p| json!({ "medium": p.medium, "address": p.address, "validated_at": p.validated_ts, "added_at": p.added_ts }))
        .collect();
    Ok(Json(json!({ "threepids": list })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeleteBody {
    medium: Option<String>,
    address: Option<String>,
}

/// `POST /_matrix/client/v3/account/3pid/delete` (and `unbind`): the address leaves the account,
/// and so do email pushers mailing it.
pub(crate) async fn delete(
    State(t): State<Threepids>,
    State(data): State<UserData>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<DeleteBody>,
) -> Result<Json<Value>, MatrixError> {
    let medium = body.medium.ok_or_else(|| MatrixError::missing_param("Missing medium"))?;
    let address = body.address.ok_or_else(|| MatrixError::missing_param("Missing address"))?;
    let address = if medium == "email" { canonical_email(&address).unwrap_or(address) } else { address };
    if t.store.remove(&user.user_id, &medium, &address).await? && medium == "email" {
        data.pushers.remove(&user.user_id, "m.email", &address).await?;
    }
    Ok(Json(json!({ "id_server_unbind_result": "no-support" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_canonical_or_refused() {
        assert_eq!(canonical_email(" Alice@Example.ORG ").as_deref(), Some("alice@example.org"));
        for bad in ["", "alice", "@example.org", "alice@", "a@b@c", "a b@c.d", "<a@b.c>", "a@b.c, d@e.f"] {
            assert_eq!(canonical_email(bad), None, "{bad}");
        }
        assert!(valid_client_secret("abc.DEF=_-1"));
        assert!(!valid_client_secret("has space") && !valid_client_secret(""));
    }
}
