//! Fills one room: N members join a public room, then M text messages are sent by a few of them.
//! Used to measure a server's bytes on disk for a large room (docs/state-storage.md); it reports
//! how long each phase took, so it doubles as a coarse write-throughput figure.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::client::Session;
use crate::{bounded, run_tag};

/// What to build.
#[derive(Debug, Clone)]
pub struct Params {
    /// Members, the creator included.
    pub members: usize,
    /// Messages in all.
    pub messages: usize,
    /// Members that send the messages.
    pub senders: usize,
    /// Requests at once.
    pub concurrency: usize,
}

/// What was built and how long it took.
#[derive(Debug, Clone)]
pub struct Report {
    /// The room.
    pub room_id: String,
    /// Members joined.
    pub members: usize,
    /// Messages sent.
    pub messages: usize,
    /// Registering and joining the members.
    pub join_phase: Duration,
    /// Sending the messages.
    pub send_phase: Duration,
}

impl Report {
    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "room_id": self.room_id,
            "members": self.members,
            "messages": self.messages,
            "join_secs": self.join_phase.as_secs_f64(),
            "send_secs": self.send_phase.as_secs_f64(),
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "big room {}", self.room_id)?;
        writeln!(
            f,
            "  {} members registered and joined in {:.1}s; {} messages sent in {:.1}s ({:.0}/s)",
            self.members,
            self.join_phase.as_secs_f64(),
            self.messages,
            self.send_phase.as_secs_f64(),
            self.messages as f64 / self.send_phase.as_secs_f64().max(1e-9)
        )
    }
}

/// Builds the room.
///
/// # Errors
/// When any request fails.
pub async fn run(http: &reqwest::Client, base: &str, p: &Params) -> Result<Report> {
    let tag = run_tag();
    let started = Instant::now();
    let creator = Session::register(http, base, &format!("big{tag}c"), "loadgen-pw").await.context("creator")?;
    let room_id = creator.create_room(&json!({ "preset": "public_chat", "name": format!("big {tag}") })).await?;
    let members = p.members.max(1);
    let joined: Vec<Session> = bounded(members - 1, p.concurrency, |i| {
        let http = http.clone();
        let base = base.to_owned();
        let room_id = room_id.clone();
        let tag = tag.clone();
        async move {
            let s = Session::register(&http, &base, &format!("big{tag}m{i}"), "loadgen-pw").await?;
            s.join(&room_id).await?;
            Ok(s)
        }
    })
    .await
    .context("joining members")?;
    let join_phase = started.elapsed();

    let mut senders = vec![creator];
    senders.extend(joined.into_iter().take(p.senders.max(1) - 1));
    let sent = Instant::now();
    bounded(p.messages, p.concurrency, |i| {
        let s = senders[i % senders.len()].clone();
        let room_id = room_id.clone();
        let txn = format!("big{tag}-{i}");
        async move {
            let body = format!("message {i} of a big room, long enough to look like something a person would write");
            s.send_message(&room_id, &txn, &json!({ "msgtype": "m.text", "body": body })).await.map(drop)
        }
    })
    .await
    .context("sending messages")?;
    Ok(Report { room_id, members, messages: p.messages, join_phase, send_phase: sent.elapsed() })
}
