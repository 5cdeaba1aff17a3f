//! The cost of `/sync` to one client: incremental syncs with nothing new and with one new
//! event, and the initial sync of a user in many rooms with a lazy-loading filter.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::client::Session;
use crate::stats::{Summary, opt_json};

/// The filter of the initial-sync scenario, as the issue states it.
pub const LAZY_FILTER: &str = r#"{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":10}}}"#;

/// Long-poll `timeout` of the one-new-event sync, ms: it answers as soon as the event is there.
const ONE_EVENT_TIMEOUT_MS: u64 = 10_000;

/// Incremental syncs not counted at the start (connection set-up, caches).
const WARMUP: usize = 3;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The result of the incremental-sync scenario.
#[derive(Debug, Clone)]
pub struct IncrementalReport {
    /// Measured iterations (after warm-up).
    pub iterations: usize,
    /// `GET /sync?since=…&timeout=0` with nothing new.
    pub empty: Option<Summary>,
    /// `GET /sync?since=…&timeout=10000` right after a send returned: the wait for the event
    /// plus the work of answering.
    pub one_event: Option<Summary>,
    /// Empty syncs whose timeline was not empty.
    pub empty_not_empty: u64,
    /// One-event syncs without the event (another sync was then needed to get it).
    pub one_event_missing: u64,
}

impl IncrementalReport {
    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "iterations": self.iterations,
            "warmup_iterations": WARMUP,
            "nothing_new": opt_json(self.empty.as_ref()),
            "one_new_event": opt_json(self.one_event.as_ref()),
            "nothing_new_but_events": self.empty_not_empty,
            "one_new_event_missing": self.one_event_missing,
        })
    }
}

impl fmt::Display for IncrementalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "incremental sync: {} iterations (after {WARMUP} warm-up)", self.iterations)?;
        if let Some(s) = &self.empty {
            writeln!(f, "  nothing new:      {s}")?;
        }
        if let Some(s) = &self.one_event {
            writeln!(f, "  one new event:    {s}")?;
        }
        writeln!(
            f,
            "  anomalies: {} empty syncs with events, {} one-event syncs without it",
            self.empty_not_empty, self.one_event_missing
        )
    }
}

fn timeline_event_ids(body: &Value, room_id: &str) -> Vec<String> {
    body["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect()
}

/// Registers a user alone in a new room and times `iterations` pairs of incremental syncs: one
/// with nothing new (`timeout=0`), one after sending a message.
///
/// # Errors
/// When setting up or a request fails.
pub async fn incremental(http: &reqwest::Client, base: &str, iterations: usize) -> Result<IncrementalReport> {
    let tag = crate::run_tag();
    let me = Session::register(http, base, &format!("lg{tag}_inc"), &format!("pw-{tag}")).await?;
    let room_id = me.create_room(&json!({ "preset": "private_chat", "name": "loadgen incremental" })).await?;
    let mut since = me.sync(None, 0, LAZY_FILTER).await?.body["next_batch"].as_str().unwrap_or_default().to_owned();
    let (mut empty, mut one) = (Vec::new(), Vec::new());
    let (mut empty_not_empty, mut one_event_missing) = (0, 0);
    for i in 0..iterations + WARMUP {
        let t = Instant::now();
        let r = me.sync(Some(&since), 0, LAZY_FILTER).await.context("sync, nothing new")?;
        let took = micros(t.elapsed());
        let stray = !timeline_event_ids(&r.body, &room_id).is_empty();
        since = r.body["next_batch"].as_str().unwrap_or_default().to_owned();

        let event_id = me
            .send_message(
                &room_id,
                &format!("lg{tag}-inc{i}"),
                &json!({ "msgtype": "m.text", "body": format!("ping {i}") }),
            )
            .await?;
        let t = Instant::now();
        let mut r = me.sync(Some(&since), ONE_EVENT_TIMEOUT_MS, LAZY_FILTER).await.context("sync, one event")?;
        let took_one = micros(t.elapsed());
        let mut found = timeline_event_ids(&r.body, &room_id).contains(&event_id);
        let missing = !found;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !found {
            if Instant::now() > deadline {
                bail!("the event sent in iteration {i} never came down /sync");
            }
            since = r.body["next_batch"].as_str().unwrap_or_default().to_owned();
            r = me.sync(Some(&since), ONE_EVENT_TIMEOUT_MS, LAZY_FILTER).await?;
            found = timeline_event_ids(&r.body, &room_id).contains(&event_id);
        }
        since = r.body["next_batch"].as_str().unwrap_or_default().to_owned();
        if i >= WARMUP {
            empty.push(took);
            one.push(took_one);
            empty_not_empty += u64::from(stray);
            one_event_missing += u64::from(missing);
        }
    }
    Ok(IncrementalReport {
        iterations,
        empty: Summary::of(empty),
        one_event: Summary::of(one),
        empty_not_empty,
        one_event_missing,
    })
}

/// One timed initial sync.
#[derive(Debug, Clone, PartialEq)]
pub struct InitialSync {
    /// Wall time of the request, µs.
    pub took_us: u64,
    /// Response body size, bytes.
    pub bytes: usize,
    /// Joined rooms in the response.
    pub rooms: usize,
}

/// The result of the initial-sync scenario.
#[derive(Debug, Clone)]
pub struct InitialReport {
    /// Rooms the user created (and is joined to).
    pub rooms: usize,
    /// Seconds spent creating them.
    pub create_secs: f64,
    /// Each initial sync, in order; the first is the headline figure (nothing cached for it).
    pub syncs: Vec<InitialSync>,
}

impl InitialReport {
    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let syncs: Vec<Value> = self
            .syncs
            .iter()
            .map(|s| json!({ "ms": s.took_us as f64 / 1000.0, "bytes": s.bytes, "rooms": s.rooms }))
            .collect();
        json!({
            "rooms": self.rooms,
            "create_secs": self.create_secs,
            "filter": serde_json::from_str::<Value>(LAZY_FILTER).unwrap_or(Value::Null),
            "first_ms": self.syncs.first().map(|s| s.took_us as f64 / 1000.0),
            "first_bytes": self.syncs.first().map(|s| s.bytes),
            "syncs": syncs,
        })
    }
}

impl fmt::Display for InitialReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "initial sync: user in {} rooms (created in {:.1}s)", self.rooms, self.create_secs)?;
        for (i, s) in self.syncs.iter().enumerate() {
            writeln!(
                f,
                "  #{}: {:.1}ms, {} bytes, {} joined rooms",
                i + 1,
                s.took_us as f64 / 1000.0,
                s.bytes,
                s.rooms
            )?;
        }
        Ok(())
    }
}

/// The lazy-loading filter for the `n`-th repeat. Repeats differ only in an `account_data`
/// limit far above what the user has, so the answer is the same but a server cannot serve a
/// repeat from a cache of the identical request (Synapse caches sync responses for a while).
pub fn initial_filter(n: usize) -> String {
    if n == 0 {
        return LAZY_FILTER.to_owned();
    }
    let mut f: Value = serde_json::from_str(LAZY_FILTER).unwrap_or_else(|_| json!({}));
    f["account_data"] = json!({ "limit": 1000 + n });
    f.to_string()
}

/// Registers a user, creates `rooms` rooms (`concurrency` at once) and times `repeats` initial
/// syncs with the lazy-loading filter.
///
/// # Errors
/// When setting up or a request fails, or a sync lacks rooms.
pub async fn initial(
    http: &reqwest::Client,
    base: &str,
    rooms: usize,
    concurrency: usize,
    repeats: usize,
) -> Result<InitialReport> {
    let tag = crate::run_tag();
    let me = Session::register(http, base, &format!("lg{tag}_init"), &format!("pw-{tag}")).await?;
    let t = Instant::now();
    {
        let me = Arc::new(me.clone());
        crate::bounded(rooms, concurrency, move |i| {
            let me = me.clone();
            async move {
                me.create_room(&json!({ "preset": "private_chat", "name": format!("loadgen room {i}") })).await
            }
        })
        .await
        .context("creating rooms")?;
    }
    let create_secs = t.elapsed().as_secs_f64();
    let mut syncs = Vec::new();
    for n in 0..repeats.max(1) {
        let t = Instant::now();
        let r = me.sync(None, 0, &initial_filter(n)).await.context("initial sync")?;
        let took_us = micros(t.elapsed());
        let joined = r.body["rooms"]["join"].as_object().map_or(0, serde_json::Map::len);
        if joined < rooms {
            bail!("initial sync #{n} lists {joined} joined rooms, expected {rooms}");
        }
        syncs.push(InitialSync { took_us, bytes: r.bytes, rooms: joined });
    }
    Ok(InitialReport { rooms, create_secs, syncs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_use_distinct_equivalent_filters() {
        let f0: Value = serde_json::from_str(&initial_filter(0)).expect("json");
        let f2: Value = serde_json::from_str(&initial_filter(2)).expect("json");
        assert_eq!(f0["room"], f2["room"]);
        assert_eq!(f0["room"]["timeline"]["limit"], 10);
        assert_ne!(initial_filter(1), initial_filter(2));
    }
}
