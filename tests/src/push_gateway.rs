//! A recording push gateway: speaks the Push Gateway API (`POST /_matrix/push/v1/notify`) on a
//! loopback port, keeps every notification it is sent, and can be told to fail (HTTP 500) or to
//! reject pushkeys, as a real gateway (Sygnal) does when a device token is dead.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use tokio::io::BufReader;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::stub_http::{read_request, write_json};

#[derive(Default)]
struct State {
    received: Vec<Value>,
    reject: HashSet<String>,
    failing: bool,
    refused_while_failing: usize,
}

/// A running gateway; stops when dropped.
pub struct RecordingGateway {
    /// The notify URL to give pushers: `http://127.0.0.1:PORT/_matrix/push/v1/notify`.
    pub url: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for RecordingGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingGateway {
    /// Starts listening on a free loopback port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::default()));
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let state = state.clone();
                    tokio::spawn(async move {
                        let _ = serve(stream, state).await;
                    });
                }
            })
        };
        Ok(Self { url: format!("http://127.0.0.1:{port}/_matrix/push/v1/notify"), state, task })
    }

    /// Every notification received (the `notification` objects), in arrival order.
    pub fn received(&self) -> Vec<Value> {
        self.state.lock().unwrap().received.clone()
    }

    /// Answers 500 to everything while `failing`; what arrives meanwhile is not recorded.
    pub fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }

    /// How many requests were refused while failing.
    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused_while_failing
    }

    /// Names `pushkey` in `rejected` from now on.
    pub fn reject(&self, pushkey: &str) {
        self.state.lock().unwrap().reject.insert(pushkey.to_owned());
    }

    /// Waits until `done` holds for the received notifications, up to `limit`.
    ///
    /// # Errors
    /// When it does not within `limit`; the error lists what arrived.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.received();
            if done(&got) {
                return Ok(got);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "the gateway did not get what was expected; it got {}",
                    serde_json::to_string_pretty(&got)?
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One HTTP/1.1 connection (keep-alive).
async fn serve(stream: tokio::net::TcpStream, state: Arc<Mutex<State>>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    while let Some(req) = read_request(&mut reader).await? {
        let (status, answer) = {
            let mut s = state.lock().unwrap();
            if req.method != "POST" || req.target != "/_matrix/push/v1/notify" {
                ("404 Not Found", json!({ "errcode": "M_UNRECOGNIZED" }))
            } else if s.failing {
                s.refused_while_failing += 1;
                ("500 Internal Server Error", json!({}))
            } else {
                let v: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                let n = v["notification"].clone();
                let rejected: Vec<Value> = n["devices"]
                    .as_array()
                    .map(|d| {
                        d.iter()
                            .filter_map(|d| d["pushkey"].as_str())
                            .filter(|k| s.reject.contains(*k))
                            .map(|k| json!(k))
                            .collect()
                    })
                    .unwrap_or_default();
                s.received.push(n);
                ("200 OK", json!({ "rejected": rejected }))
            }
        };
        write_json(&mut write, status, &answer).await?;
    }
    Ok(())
}
