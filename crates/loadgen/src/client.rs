//! The Client-Server API calls the scenarios need, on `reqwest` with a timeout on every request.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

/// Timeout of every request other than `/sync`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Slack added to a `/sync`'s own `timeout` before the request is given up.
const SYNC_SLACK: Duration = Duration::from_secs(60);

/// An HTTP client for one homeserver, shared by every session (it pools connections).
pub fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?)
}

/// Percent-encodes `s` as one path segment (RFC 3986: all but unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A logged-in user.
#[derive(Clone)]
pub struct Session {
    http: reqwest::Client,
    base: String,
    /// The full user ID.
    pub user_id: String,
    token: String,
}

/// A `/sync` response: its JSON and the size of its body.
pub struct SyncResponse {
    /// The parsed body.
    pub body: Value,
    /// Body size in bytes, as received.
    pub bytes: usize,
}

async fn json_of(resp: reqwest::Response, what: &str) -> Result<Value> {
    let status = resp.status();
    let bytes = resp.bytes().await.with_context(|| format!("{what}: reading the body"))?;
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        if body["errcode"] == "M_LIMIT_EXCEEDED" {
            bail!("{what}: rate limited ({status}); disable the server's rate limits for load tests");
        }
        bail!("{what}: {status} {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]));
    }
    Ok(body)
}

impl Session {
    /// Registers `username` through open registration, completing the `m.login.dummy` stage of
    /// user-interactive auth when the server asks for it.
    ///
    /// # Errors
    /// When registration is closed or needs another stage, or the server fails.
    pub async fn register(http: &reqwest::Client, base: &str, username: &str, password: &str) -> Result<Self> {
        let url = format!("{base}/_matrix/client/v3/register");
        let mut body = json!({
            "username": username,
            "password": password,
            "initial_device_display_name": "ganglion-loadgen",
        });
        let resp = http.post(&url).json(&body).timeout(REQUEST_TIMEOUT).send().await.context("register")?;
        let resp = if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            let uia: Value = resp.json().await.context("register: UIA body")?;
            let session = uia["session"].as_str().unwrap_or_default().to_owned();
            body["auth"] = json!({ "type": "m.login.dummy", "session": session });
            http.post(&url).json(&body).timeout(REQUEST_TIMEOUT).send().await.context("register (dummy auth)")?
        } else {
            resp
        };
        let v = json_of(resp, "register").await?;
        let (Some(user_id), Some(token)) = (v["user_id"].as_str(), v["access_token"].as_str()) else {
            bail!("register: no user_id/access_token in {v}");
        };
        Ok(Self { http: http.clone(), base: base.to_owned(), user_id: user_id.to_owned(), token: token.to_owned() })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>, what: &str) -> Result<Value> {
        let mut req =
            self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token).timeout(REQUEST_TIMEOUT);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| what.to_owned())?;
        json_of(resp, what).await
    }

    /// `POST /createRoom` with `body`; the new room's ID.
    ///
    /// # Errors
    /// When the server refuses or fails.
    pub async fn create_room(&self, body: &Value) -> Result<String> {
        let v = self.call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(body), "createRoom").await?;
        v["room_id"].as_str().map(str::to_owned).with_context(|| format!("createRoom: no room_id in {v}"))
    }

    /// `POST /join/{room_id}`.
    ///
    /// # Errors
    /// When the server refuses or fails.
    pub async fn join(&self, room_id: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/join/{}", encode_segment(room_id));
        self.call(reqwest::Method::POST, &path, Some(&json!({})), "join").await.map(drop)
    }

    /// `PUT /rooms/{room_id}/send/m.room.message/{txn_id}`; the event ID.
    ///
    /// # Errors
    /// When the server refuses or fails.
    pub async fn send_message(&self, room_id: &str, txn_id: &str, content: &Value) -> Result<String> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            encode_segment(room_id),
            encode_segment(txn_id)
        );
        let v = self.call(reqwest::Method::PUT, &path, Some(content), "send").await?;
        v["event_id"].as_str().map(str::to_owned).with_context(|| format!("send: no event_id in {v}"))
    }

    /// `GET /sync` with an inline `filter`, from `since` (initial sync when `None`), waiting up to
    /// `timeout_ms` on the server; the request itself is given up a minute later.
    ///
    /// # Errors
    /// When the server fails or the request times out.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future drops the request and nothing else.
    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64, filter: &str) -> Result<SyncResponse> {
        let mut query = vec![("timeout", timeout_ms.to_string()), ("filter", filter.to_owned())];
        if let Some(s) = since {
            query.push(("since", s.to_owned()));
        }
        let resp = self
            .http
            .get(format!("{}/_matrix/client/v3/sync", self.base))
            .query(&query)
            .bearer_auth(&self.token)
            .timeout(Duration::from_millis(timeout_ms) + SYNC_SLACK)
            .send()
            .await
            .context("sync")?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("sync: reading the body")?;
        if !status.is_success() {
            bail!("sync: {status} {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]));
        }
        let body: Value = serde_json::from_slice(&bytes).context("sync: body is not JSON")?;
        if body["next_batch"].as_str().is_none() {
            bail!("sync: no next_batch");
        }
        Ok(SyncResponse { body, bytes: bytes.len() })
    }
}

/// The server's name and version, as its federation version endpoint reports them (`None` when
/// the client listener does not serve it).
pub async fn server_version(http: &reqwest::Client, base: &str) -> Option<String> {
    let resp =
        http.get(format!("{base}/_matrix/federation/v1/version")).timeout(Duration::from_secs(5)).send().await.ok()?;
    let v: Value = resp.json().await.ok()?;
    let s = &v["server"];
    Some(format!("{} {}", s["name"].as_str()?, s["version"].as_str().unwrap_or("?")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("!abc:localhost"), "%21abc%3Alocalhost");
        assert_eq!(encode_segment("lg-1_a.b~"), "lg-1_a.b~");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
