//! A recording application service: speaks the Application Service API on a loopback port
//! (`PUT /_matrix/app/v1/transactions/{txnId}`, user and alias queries, ping), checks the
//! homeserver's `hs_token`, keeps every transaction, and answers an alias query for
//! `#irc_…` (but `#irc_missing…`) by creating the room through the Client-Server API first, as
//! bridges do.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use tokio::io::BufReader;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::stub_http::{read_request, write_json};

/// The tokens and namespaces of the test registration.
pub const AS_TOKEN: &str = "as-token-for-tests";
/// What the homeserver presents.
pub const HS_TOKEN: &str = "hs-token-for-tests";

#[derive(Default)]
struct State {
    /// `(txn_id, body)` in arrival order, repeats included.
    transactions: Vec<(String, Value)>,
    failing: bool,
    refused: usize,
    bad_auth: usize,
    pings: Vec<Value>,
}

/// A running application service; stops when dropped.
pub struct RecordingAppservice {
    /// Its base URL (the registration's `url`).
    pub url: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for RecordingAppservice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingAppservice {
    /// Starts listening on a free loopback port. Alias queries create rooms on `homeserver`.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(homeserver: Arc<Mutex<String>>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::default()));
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (state, homeserver) = (state.clone(), homeserver.clone());
                    tokio::spawn(async move {
                        let _ = serve(stream, state, homeserver).await;
                    });
                }
            })
        };
        Ok(Self { url: format!("http://127.0.0.1:{port}"), state, task })
    }

    /// Writes a registration file for this service into `dir`, with users `@irc_.*`, aliases
    /// `#irc_.*` (both exclusive) and protocol `irc`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_registration(&self, dir: &Path, server_name: &str) -> Result<PathBuf> {
        write_registration(dir, &self.url, server_name)
    }

    /// Every transaction received, repeats included.
    pub fn transactions(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().transactions.clone()
    }

    /// The events of every transaction, each transaction ID counted once.
    pub fn events(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (id, body) in self.transactions() {
            if seen.insert(id) {
                out.extend(body["events"].as_array().cloned().unwrap_or_default());
            }
        }
        out
    }

    /// The ephemeral events of every transaction, each transaction ID counted once.
    pub fn ephemeral(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (id, body) in self.transactions() {
            if seen.insert(id) {
                out.extend(body["ephemeral"].as_array().cloned().unwrap_or_default());
            }
        }
        out
    }

    /// Answers 500 to transactions while `failing`.
    pub fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }

    /// How many transactions were refused while failing.
    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused
    }

    /// Requests that came without our `hs_token`.
    pub fn bad_auth(&self) -> usize {
        self.state.lock().unwrap().bad_auth
    }

    /// The bodies of the pings received.
    pub fn pings(&self) -> Vec<Value> {
        self.state.lock().unwrap().pings.clone()
    }

    /// Waits until `done` holds for the events received (each transaction once), up to `limit`.
    ///
    /// # Errors
    /// When it does not within `limit`; the error lists what arrived.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.events();
            if done(&got) {
                return Ok(got);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "the appservice did not get what was expected; it got {}",
                    serde_json::to_string_pretty(&got)?
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Writes the test registration (`id: irc`, users `@irc_.*`, aliases `#irc_.*`, both exclusive,
/// protocol `irc`, ephemeral events, MSC3202 transaction extensions, MSC4190 device management,
/// not rate limited) for a service at `url` into `dir`.
///
/// # Errors
/// When the file cannot be written.
pub fn write_registration(dir: &Path, url: &str, server_name: &str) -> Result<PathBuf> {
    let path = dir.join("irc-registration.yaml");
    let sn = server_name.replace('.', "\\\\.");
    std::fs::write(
        &path,
        format!(
            "id: irc\nurl: \"{url}\"\nas_token: {AS_TOKEN}\nhs_token: {HS_TOKEN}\nsender_localpart: ircbot\n\
             rate_limited: false\nreceive_ephemeral: true\norg.matrix.msc3202: true\nio.element.msc4190: true\nprotocols: [irc]\nnamespaces:\n  users:\n    \
             - exclusive: true\n      regex: \"@irc_.*:{sn}\"\n  aliases:\n    - exclusive: true\n      \
             regex: \"#irc_.*:{sn}\"\n  rooms: []\n"
        ),
    )?;
    Ok(path)
}

/// Registers the puppet `user` through `m.login.application_service`.
async fn register_puppet(homeserver: &str, user: &str) -> bool {
    let Some(local) = user.strip_prefix('@').and_then(|u| u.split(':').next()) else { return false };
    let resp = reqwest::Client::new()
        .post(format!("{homeserver}/_matrix/client/v3/register"))
        .bearer_auth(AS_TOKEN)
        .json(&json!({ "type": "m.login.application_service", "username": local, "inhibit_login": true }))
        .send()
        .await;
    resp.is_ok_and(|r| r.status().is_success())
}

/// Creates `#{localpart}` as the service's sender, then says it exists.
async fn create_room_for_alias(homeserver: &str, alias: &str) -> bool {
    let Some(local) = alias.strip_prefix('#').and_then(|a| a.split(':').next()) else { return false };
    let resp = reqwest::Client::new()
        .post(format!("{homeserver}/_matrix/client/v3/createRoom"))
        .bearer_auth(AS_TOKEN)
        .json(&json!({ "room_alias_name": local, "preset": "public_chat", "name": format!("Bridged {local}") }))
        .send()
        .await;
    resp.is_ok_and(|r| r.status().is_success())
}

/// One HTTP/1.1 connection (keep-alive).
async fn serve(stream: tokio::net::TcpStream, state: Arc<Mutex<State>>, homeserver: Arc<Mutex<String>>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    while let Some(req) = read_request(&mut reader).await? {
        let path = req.path();
        let method = req.method.as_str();
        let authorized = req.authorization.as_deref() == Some(&format!("Bearer {HS_TOKEN}"));
        let (status, answer) = if !authorized {
            state.lock().unwrap().bad_auth += 1;
            ("403 Forbidden", json!({ "errcode": "M_FORBIDDEN" }))
        } else if let Some(txn) = path.strip_prefix("/_matrix/app/v1/transactions/").filter(|_| method == "PUT") {
            let mut s = state.lock().unwrap();
            if s.failing {
                s.refused += 1;
                ("500 Internal Server Error", json!({}))
            } else {
                s.transactions.push((txn.to_owned(), serde_json::from_slice(&req.body).unwrap_or(Value::Null)));
                ("200 OK", json!({}))
            }
        } else if let Some(alias) = path.strip_prefix("/_matrix/app/v1/rooms/") {
            let hs = homeserver.lock().unwrap().clone();
            // Channels named `missing…` do not exist on the IRC side.
            if alias.starts_with("#irc_")
                && !alias.starts_with("#irc_missing")
                && create_room_for_alias(&hs, alias).await
            {
                ("200 OK", json!({}))
            } else {
                ("404 Not Found", json!({ "errcode": "M_NOT_FOUND" }))
            }
        } else if let Some(user) = path.strip_prefix("/_matrix/app/v1/users/") {
            // Users named `irc_known…` exist on the IRC side: the puppet is made on demand.
            let hs = homeserver.lock().unwrap().clone();
            if user.starts_with("@irc_known") && register_puppet(&hs, user).await {
                ("200 OK", json!({}))
            } else {
                ("404 Not Found", json!({ "errcode": "M_NOT_FOUND" }))
            }
        } else if path == "/_matrix/app/v1/thirdparty/protocol/irc" {
            (
                "200 OK",
                json!({ "user_fields": ["nick"], "location_fields": ["channel"], "icon": "mxc://x/irc",
                                "field_types": {}, "instances": [] }),
            )
        } else if path == "/_matrix/app/v1/thirdparty/user/irc" {
            ("200 OK", json!([{ "userid": "@irc_alice:localhost", "protocol": "irc", "fields": { "nick": "alice" } }]))
        } else if path == "/_matrix/app/v1/ping" && method == "POST" {
            state.lock().unwrap().pings.push(serde_json::from_slice(&req.body).unwrap_or(Value::Null));
            ("200 OK", json!({}))
        } else {
            ("404 Not Found", json!({ "errcode": "M_UNRECOGNIZED" }))
        };
        write_json(&mut write, status, &answer).await?;
    }
    Ok(())
}
