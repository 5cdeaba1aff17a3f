//! The delivery scenario: N receivers long-poll `/sync` in one room while senders send M
//! messages at a fixed total rate. Each message carries the run's tag, its number and its send
//! time; each receiver notes when each message arrives. Reported: send→arrival latency per
//! (message, receiver), messages never arrived within the grace period (lost), messages
//! arrived twice at one receiver (duplicates), and the server's CPU-seconds per delivered event.
//!
//! Times are offsets from one `Instant` of this process, so sender and receivers share a clock.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client::Session;
use crate::procstat::{CpuMeter, CpuUsage};
use crate::stats::{Summary, opt_json};

/// The key in message content holding the loadgen's marker.
pub const MARKER: &str = "ganglion.loadgen";

/// Concurrent requests while setting up (registrations, joins, initial syncs).
const SETUP_CONCURRENCY: usize = 8;

/// Parameters of a delivery run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Receiving clients, each long-polling `/sync`.
    pub clients: usize,
    /// Messages sent in all.
    pub messages: usize,
    /// Sending users; message `i` is sent by sender `i % senders`.
    pub senders: usize,
    /// Messages per second, all senders together.
    pub rate_per_sec: f64,
    /// How long after the last send receivers may still get messages before the rest count as lost.
    pub grace: Duration,
    /// The `timeout` of each long-poll, ms.
    pub sync_timeout_ms: u64,
    /// The receivers' filter's `timeline.limit`.
    pub timeline_limit: u32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            clients: 50,
            messages: 1000,
            senders: 1,
            rate_per_sec: 20.0,
            grace: Duration::from_secs(10),
            sync_timeout_ms: 30_000,
            timeline_limit: 50,
        }
    }
}

/// What receivers saw, checked against what was sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Send→arrival latency of each first arrival, µs.
    pub latencies_us: Vec<u64>,
    /// First arrivals of successfully sent messages: unique (message, receiver) pairs.
    pub delivered: u64,
    /// (message, receiver) pairs for a successfully sent message that never arrived.
    pub lost: u64,
    /// Arrivals of a message a receiver had already seen.
    pub duplicates: u64,
    /// Arrivals of a message whose send had failed (or out of range).
    pub unexpected: u64,
}

/// Accounts for arrivals. `sent[i]` is message `i`'s send time (µs) when its send succeeded;
/// `arrivals[c]` lists `(message, arrival time µs)` in the order receiver `c` saw them.
pub fn tally(sent: &[Option<u64>], arrivals: &[Vec<(usize, u64)>]) -> Tally {
    let mut t = Tally::default();
    for client in arrivals {
        let mut seen = vec![false; sent.len()];
        for &(id, at) in client {
            match sent.get(id).copied().flatten() {
                None => t.unexpected += 1,
                Some(_) if seen[id] => t.duplicates += 1,
                Some(sent_at) => {
                    seen[id] = true;
                    t.delivered += 1;
                    t.latencies_us.push(at.saturating_sub(sent_at));
                }
            }
        }
        t.lost += sent.iter().zip(&seen).filter(|(s, seen)| s.is_some() && !**seen).count() as u64;
    }
    t
}

/// The result of a delivery run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The parameters it ran with.
    pub params: Params,
    /// Messages whose send succeeded.
    pub sent_ok: u64,
    /// Messages whose send failed after retries.
    pub send_failed: u64,
    /// Failed send attempts (retried with the same transaction ID).
    pub send_errors: u64,
    /// Failed `/sync` requests of receivers (retried from the same token).
    pub sync_errors: u64,
    /// Receiver `/sync` responses whose timeline for the room was `limited` (a gap the client
    /// would have to back-fill; messages in it count as lost here).
    pub limited_timelines: u64,
    /// Seconds from the first send to the last send's answer.
    pub send_secs: f64,
    /// Seconds from the first send until every message arrived everywhere, or the grace ended.
    pub measured_secs: f64,
    /// Duration of the `PUT /send` requests.
    pub send_latency: Option<Summary>,
    /// Send→arrival latencies, lost, duplicates.
    pub tally: Tally,
    /// Send→arrival latency summary.
    pub latency: Option<Summary>,
    /// CPU-seconds over `measured_secs` (server, this load generator, whole machine), when
    /// server PIDs were given.
    pub cpu: Option<CpuUsage>,
    /// CPU-seconds of the server's database processes (e.g. its PostgreSQL backends) over the
    /// same window, when their PIDs were given.
    pub db_cpu_secs: Option<f64>,
}

impl Report {
    /// Events to deliver: successful sends × receivers (equal to those delivered when nothing
    /// is lost).
    pub fn expected_deliveries(&self) -> u64 {
        self.sent_ok * self.params.clients as u64
    }

    /// Server CPU-seconds per delivered event (messages × receivers).
    pub fn cpu_secs_per_delivery(&self) -> Option<f64> {
        let n = self.expected_deliveries();
        self.cpu.filter(|_| n > 0).map(|c| c.server_secs / n as f64)
    }

    /// Server plus database CPU-seconds per delivered event.
    pub fn cpu_with_db_per_delivery(&self) -> Option<f64> {
        let n = self.expected_deliveries();
        let (cpu, db) = (self.cpu?, self.db_cpu_secs?);
        (n > 0).then(|| (cpu.server_secs + db) / n as f64)
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let p = &self.params;
        json!({
            "params": {
                "clients": p.clients, "messages": p.messages, "senders": p.senders,
                "rate_per_sec": p.rate_per_sec, "grace_secs": p.grace.as_secs_f64(),
                "sync_timeout_ms": p.sync_timeout_ms, "timeline_limit": p.timeline_limit,
            },
            "sent_ok": self.sent_ok,
            "send_failed": self.send_failed,
            "send_errors": self.send_errors,
            "sync_errors": self.sync_errors,
            "limited_timelines": self.limited_timelines,
            "send_secs": self.send_secs,
            "measured_secs": self.measured_secs,
            "send_request": opt_json(self.send_latency.as_ref()),
            "latency": opt_json(self.latency.as_ref()),
            "expected_deliveries": self.expected_deliveries(),
            "delivered": self.tally.delivered,
            "lost": self.tally.lost,
            "duplicates": self.tally.duplicates,
            "unexpected": self.tally.unexpected,
            "server_cpu_secs": self.cpu.map(|c| c.server_secs),
            "loadgen_cpu_secs": self.cpu.map(|c| c.loadgen_secs),
            "host_busy_cpu_secs": self.cpu.map(|c| c.host_busy_secs),
            "server_cpu_us_per_delivered_event": self.cpu_secs_per_delivery().map(|c| c * 1e6),
            "db_cpu_secs": self.db_cpu_secs,
            "server_and_db_cpu_us_per_delivered_event": self.cpu_with_db_per_delivery().map(|c| c * 1e6),
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.params;
        writeln!(
            f,
            "delivery: {} receivers, {} messages from {} sender(s) at {}/s",
            p.clients, p.messages, p.senders, p.rate_per_sec
        )?;
        writeln!(
            f,
            "  sent ok {} (failed {}, errors retried {}) in {:.1}s; measured over {:.1}s",
            self.sent_ok, self.send_failed, self.send_errors, self.send_secs, self.measured_secs
        )?;
        if let Some(s) = &self.send_latency {
            writeln!(f, "  PUT /send:        {s}")?;
        }
        match &self.latency {
            Some(s) => writeln!(f, "  send→arrival:     {s}")?,
            None => writeln!(f, "  send→arrival:     no arrivals")?,
        }
        writeln!(
            f,
            "  delivered {} of {}; lost {}, duplicates {}, unexpected {}; sync errors {}, limited timelines {}",
            self.tally.delivered,
            self.expected_deliveries(),
            self.tally.lost,
            self.tally.duplicates,
            self.tally.unexpected,
            self.sync_errors,
            self.limited_timelines
        )?;
        if let (Some(cpu), Some(per)) = (self.cpu, self.cpu_secs_per_delivery()) {
            writeln!(
                f,
                "  server CPU {:.2}s = {:.1}µs per delivered event (loadgen {:.2}s, whole machine {:.2}s)",
                cpu.server_secs,
                per * 1e6,
                cpu.loadgen_secs,
                cpu.host_busy_secs
            )?;
        }
        if let (Some(db), Some(per)) = (self.db_cpu_secs, self.cpu_with_db_per_delivery()) {
            writeln!(f, "  database CPU {db:.2}s; server + database = {:.1}µs per delivered event", per * 1e6)?;
        }
        Ok(())
    }
}

/// The receivers' filter: lazy-loaded members and a timeline of `limit` events.
pub fn receiver_filter(limit: u32) -> String {
    json!({ "room": { "state": { "lazy_load_members": true }, "timeline": { "limit": limit } } }).to_string()
}

/// What one receiver saw.
#[derive(Default)]
struct ReceiverLog {
    arrivals: Vec<(usize, u64)>,
    sync_errors: u64,
    limited: u64,
}

/// Shared by the receivers: the clock, the run tag and the count of first arrivals.
struct Shared {
    base: Instant,
    tag: String,
    room_id: String,
    filter: String,
    timeout_ms: u64,
    messages: usize,
    first_arrivals: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// One receiver: long-polls from `since` until told to stop, noting marked messages.
async fn receive(
    session: Session,
    mut since: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> ReceiverLog {
    let mut log = ReceiverLog::default();
    let mut seen = vec![false; shared.messages];
    loop {
        if *stop.borrow() {
            break;
        }
        let res = tokio::select! {
            r = session.sync(Some(&since), shared.timeout_ms, &shared.filter) => r,
            _ = stop.changed() => break,
        };
        let resp = match res {
            Ok(r) => r,
            Err(_) => {
                log.sync_errors += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let at = shared.now_us();
        let timeline = &resp.body["rooms"]["join"][&shared.room_id]["timeline"];
        if timeline["limited"] == true {
            log.limited += 1;
        }
        for ev in timeline["events"].as_array().into_iter().flatten() {
            let marker = &ev["content"][MARKER];
            if marker["run"] != shared.tag.as_str() {
                continue;
            }
            let Some(id) = marker["id"].as_u64().and_then(|i| usize::try_from(i).ok()) else { continue };
            log.arrivals.push((id, at));
            if let Some(s) = seen.get_mut(id)
                && !*s
            {
                *s = true;
                shared.first_arrivals.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(next) = resp.body["next_batch"].as_str() {
            next.clone_into(&mut since);
        }
    }
    log
}

/// Outcome of one message's send: its send time when it succeeded, the request's duration and
/// the failed attempts.
struct Sent {
    id: usize,
    at_us: Option<u64>,
    took_us: u64,
    errors: u64,
}

/// One sender: sends messages `first, first + step, …` each at its scheduled time.
async fn send_all(
    session: Session,
    shared: Arc<Shared>,
    first: usize,
    step: usize,
    start: tokio::time::Instant,
    interval: Duration,
) -> Vec<Sent> {
    let mut out = Vec::new();
    for id in (first..shared.messages).step_by(step) {
        tokio::time::sleep_until(start + interval.mul_f64(id as f64)).await;
        let at = shared.now_us();
        let content = json!({
            "msgtype": "m.text",
            "body": format!("loadgen {} #{id}", shared.tag),
            MARKER: { "run": shared.tag, "id": id, "sent_us": at },
        });
        let txn = format!("lg{}-{id}", shared.tag);
        let mut errors = 0;
        let mut ok = false;
        // A retry reuses the transaction ID, so the server sends the message at most once.
        for _ in 0..3 {
            if session.send_message(&shared.room_id, &txn, &content).await.is_ok() {
                ok = true;
                break;
            }
            errors += 1;
        }
        out.push(Sent { id, at_us: ok.then_some(at), took_us: shared.now_us().saturating_sub(at), errors });
    }
    out
}

/// Runs the scenario against `base` with fresh users and a fresh room; `server_pids` and
/// `db_pids` (either possibly empty) are measured for CPU from the first send until every
/// message arrived everywhere or the grace period ended.
///
/// # Errors
/// When setting up fails (registration, room creation, joins, initial syncs) or the server's
/// processes cannot be read. Failures during the measured part are counted instead.
pub async fn run(
    http: &reqwest::Client,
    base: &str,
    params: &Params,
    server_pids: &[u32],
    db_pids: &[u32],
) -> Result<Report> {
    let tag = crate::run_tag();
    let password = format!("pw-{tag}-{:016x}", rand::random::<u64>());
    let senders = params.senders.max(1);
    let n_users = senders + params.clients;
    let users = {
        let (http, base, tag, password) = (http.clone(), base.to_owned(), tag.clone(), password.clone());
        crate::bounded(n_users, SETUP_CONCURRENCY, move |i| {
            let (http, base, password) = (http.clone(), base.clone(), password.clone());
            let name = if i < senders { format!("lg{tag}_s{i}") } else { format!("lg{tag}_r{}", i - senders) };
            async move { Session::register(&http, &base, &name, &password).await }
        })
        .await
        .context("registering users")?
    };
    let (sender_sessions, receivers) = users.split_at(senders);
    let room_id = sender_sessions[0]
        .create_room(&json!({ "preset": "public_chat", "name": format!("loadgen delivery {tag}") }))
        .await
        .context("creating the room")?;
    let joiners: Vec<Session> = sender_sessions[1..].iter().chain(receivers).cloned().collect();
    {
        let (joiners, room_id) = (Arc::new(joiners), room_id.clone());
        crate::bounded(joiners.len(), SETUP_CONCURRENCY, move |i| {
            let (s, room) = (joiners[i].clone(), room_id.clone());
            async move { s.join(&room).await }
        })
        .await
        .context("joining the room")?;
    }
    let filter = receiver_filter(params.timeline_limit);
    let tokens = {
        let (receivers, filter) = (Arc::new(receivers.to_vec()), filter.clone());
        crate::bounded(receivers.len(), SETUP_CONCURRENCY, move |i| {
            let (s, filter) = (receivers[i].clone(), filter.clone());
            async move {
                let r = s.sync(None, 0, &filter).await?;
                Ok(r.body["next_batch"].as_str().unwrap_or_default().to_owned())
            }
        })
        .await
        .context("initial syncs")?
    };

    let shared = Arc::new(Shared {
        base: Instant::now(),
        tag: tag.clone(),
        room_id: room_id.clone(),
        filter,
        timeout_ms: params.sync_timeout_ms,
        messages: params.messages,
        first_arrivals: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut receiver_tasks = JoinSet::new();
    for (i, (s, since)) in receivers.iter().cloned().zip(tokens).enumerate() {
        let (shared, stop) = (shared.clone(), stop_rx.clone());
        receiver_tasks.spawn(async move { (i, receive(s, since, shared, stop).await) });
    }
    // Let every receiver's first long-poll reach the server before the first send.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let meter = if server_pids.is_empty() { None } else { Some(CpuMeter::start(server_pids)?) };
    let db_meter = if db_pids.is_empty() { None } else { Some(CpuMeter::start(db_pids)?) };
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / params.rate_per_sec.max(0.001));
    let mut sender_tasks = JoinSet::new();
    for (k, s) in sender_sessions.iter().cloned().enumerate() {
        sender_tasks.spawn(send_all(s, shared.clone(), k, senders, start, interval));
    }
    let mut sent: Vec<Option<u64>> = vec![None; params.messages];
    let (mut send_errors, mut send_took) = (0, Vec::with_capacity(params.messages));
    while let Some(joined) = sender_tasks.join_next().await {
        for s in joined.context("sender task")? {
            sent[s.id] = s.at_us;
            send_errors += s.errors;
            send_took.push(s.took_us);
        }
    }
    let sends_done = tokio::time::Instant::now();
    let sent_ok = sent.iter().flatten().count() as u64;
    let want = sent_ok * receivers.len() as u64;
    // Wait until every receiver has every sent message, or the grace period ends.
    while shared.first_arrivals.load(Ordering::Relaxed) < want && sends_done.elapsed() < params.grace {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let measured_secs = start.elapsed().as_secs_f64();
    let cpu = meter.map(|m| m.stop()).transpose()?;
    let db_cpu_secs = db_meter.map(|m| m.stop()).transpose().context("a database process ended during the run")?;
    let _ = stop_tx.send(true);

    let mut logs: Vec<(usize, ReceiverLog)> = Vec::with_capacity(receivers.len());
    while let Some(joined) = receiver_tasks.join_next().await {
        logs.push(joined.context("receiver task")?);
    }
    logs.sort_by_key(|(i, _)| *i);
    let arrivals: Vec<Vec<(usize, u64)>> = logs.iter().map(|(_, l)| l.arrivals.clone()).collect();
    let tally = tally(&sent, &arrivals);
    Ok(Report {
        params: params.clone(),
        sent_ok,
        send_failed: params.messages as u64 - sent_ok,
        send_errors,
        sync_errors: logs.iter().map(|(_, l)| l.sync_errors).sum(),
        limited_timelines: logs.iter().map(|(_, l)| l.limited).sum(),
        send_secs: (sends_done - start).as_secs_f64(),
        measured_secs,
        send_latency: Summary::of(send_took),
        latency: Summary::of(tally.latencies_us.clone()),
        tally,
        cpu,
        db_cpu_secs: db_cpu_secs.map(|c| c.server_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_delivered_once() {
        let sent = vec![Some(100), Some(200)];
        let t = tally(&sent, &[vec![(0, 150), (1, 260)], vec![(1, 210), (0, 400)]]);
        assert_eq!((t.delivered, t.lost, t.duplicates, t.unexpected), (4, 0, 0, 0));
        let mut l = t.latencies_us;
        l.sort_unstable();
        assert_eq!(l, vec![10, 50, 60, 300]);
    }

    #[test]
    fn lost_and_duplicates_per_receiver() {
        let sent = vec![Some(0), Some(0), Some(0)];
        // Receiver 0 misses message 2 and sees message 0 twice; receiver 1 misses everything.
        let t = tally(&sent, &[vec![(0, 5), (1, 5), (0, 9)], vec![]]);
        assert_eq!((t.delivered, t.lost, t.duplicates, t.unexpected), (2, 4, 1, 0));
        // The duplicate's later arrival does not count as a latency sample.
        assert_eq!(t.latencies_us, vec![5, 5]);
    }

    #[test]
    fn failed_sends_are_neither_lost_nor_delivered() {
        let sent = vec![Some(0), None];
        let t = tally(&sent, &[vec![(0, 1), (1, 2), (7, 3)]]);
        assert_eq!((t.delivered, t.lost, t.duplicates, t.unexpected), (1, 0, 0, 2));
    }

    #[test]
    fn arrival_before_send_time_is_zero_latency() {
        // The send time is taken just before the request, so this cannot happen, but the
        // accounting must not underflow if clocks misbehave.
        let t = tally(&[Some(50)], &[vec![(0, 40)]]);
        assert_eq!(t.latencies_us, vec![0]);
    }

    #[test]
    fn filter_is_lazy_loading() {
        let f: Value = serde_json::from_str(&receiver_filter(7)).expect("json");
        assert_eq!(f["room"]["state"]["lazy_load_members"], true);
        assert_eq!(f["room"]["timeline"]["limit"], 7);
    }
}
