//! Application service transactions (`PUT /_matrix/app/v1/transactions/{txnId}`).
//!
//! Each registered service with a URL has one task. The shard ring over the pusher instances
//! assigns the service to one of them, and a lease on `appservice:{id}` makes that exact at a
//! hand-over. The owner builds a transaction from what the service is interested in after its
//! stored positions (events; with `receive_ephemeral`, receipts, typing, presence and to-device
//! messages for its users (MSC2409); with `org.matrix.msc3202`, device-list changes and the key
//! counts of its users' devices), stages it in the database with the new positions, then sends
//! it until the service answers 2xx. One
//! transaction is in flight per service; a failing service is retried with backoff and never
//! delays another. A staged transaction survives a crash and is sent again with the same ID.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ganglion_appservice::{AppserviceClient, Appservices, Registration};
use ganglion_replication::{Bus, Follower, ShardRing, StreamName};
use ganglion_storage::{
    AppservicePositions, AppserviceStore, Db, E2eeStore, EphemeralStore, EventStore, PresenceStore, follow_events,
    follow_stream_with,
};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use ganglion_storage::Error;

use crate::StartError;

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// At most this many events per transaction, as Synapse sends.
const MAX_EVENTS: i64 = 100;
/// At most this many ephemeral rows of each stream per transaction.
const MAX_EPHEMERAL: i64 = 100;

/// The delivery tasks; they stop when this is dropped.
pub(crate) struct Delivery {
    tasks: Vec<JoinHandle<()>>,
    _followers: Vec<Follower>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("services", &self.tasks.len()).finish()
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Stores {
    state: AppserviceStore,
    events: EventStore,
    ephemeral: EphemeralStore,
    presence: PresenceStore,
    e2ee: E2eeStore,
}

impl Delivery {
    /// Starts one task per service with a URL. Without any, follows nothing.
    pub(crate) async fn start(
        db: Db,
        bus: Arc<dyn Bus>,
        ring: ShardRing,
        appservices: Appservices,
        max_retry_interval: Duration,
    ) -> Result<Self, StartError> {
        let regs: Vec<Arc<Registration>> = appservices.all().iter().filter(|r| r.url.is_some()).cloned().collect();
        if regs.is_empty() {
            return Ok(Self { tasks: Vec::new(), _followers: Vec::new() });
        }
        let client = AppserviceClient::new(Duration::from_secs(60)).map_err(|e| StartError::Http(e.to_string()))?;
        let stores = Arc::new(Stores {
            state: AppserviceStore::new(db.clone()),
            events: EventStore::new(db.clone()),
            ephemeral: EphemeralStore::new(db.clone()),
            presence: PresenceStore::new(db.clone()),
            e2ee: E2eeStore::new(db),
        });
        let wakes: Arc<Vec<Arc<Notify>>> = Arc::new(regs.iter().map(|_| Arc::new(Notify::new())).collect());
        let wake_all = {
            let wakes = wakes.clone();
            move || wakes.iter().for_each(|n| n.notify_one())
        };

        let mut followers = Vec::new();
        let mut tasks = Vec::new();
        let (events_follower, mut position) = follow_events(&stores.events, bus.clone()).await?;
        followers.push(events_follower);
        {
            let wake_all = wake_all.clone();
            tasks.push(tokio::spawn(async move {
                while position.changed().await.is_ok() {
                    wake_all();
                }
            }));
        }
        let mut streams = Vec::new();
        if regs.iter().any(|r| r.receive_ephemeral) {
            streams.extend([StreamName::Receipts, StreamName::Typing, StreamName::Presence, StreamName::ToDevice]);
        }
        if regs.iter().any(|r| r.msc3202) {
            streams.push(StreamName::DeviceLists);
        }
        for stream in streams {
            let wake_all = wake_all.clone();
            let (f, _) = follow_stream_with(&stores.events, bus.clone(), stream, move |_| wake_all(), |_| {}).await?;
            followers.push(f);
        }
        for (reg, wake) in regs.into_iter().zip(wakes.iter().cloned()) {
            let worker = ServiceTask {
                reg,
                wake,
                ring: ring.clone(),
                client: client.clone(),
                stores: stores.clone(),
                max_retry_interval,
            };
            tasks.push(tokio::spawn(worker.run()));
        }
        Ok(Self { tasks, _followers: followers })
    }
}

struct ServiceTask {
    reg: Arc<Registration>,
    wake: Arc<Notify>,
    ring: ShardRing,
    client: AppserviceClient,
    stores: Arc<Stores>,
    max_retry_interval: Duration,
}

impl ServiceTask {
    fn key(&self) -> String {
        format!("appservice:{}", self.reg.id)
    }

    /// Forever: wait to own the service, take its lease, deliver while it is held.
    async fn run(self) {
        let key = self.key();
        let mut members = self.ring.members();
        loop {
            if !self.ring.owns(&key) {
                let _ = tokio::time::timeout(Duration::from_secs(5), members.changed()).await;
                continue;
            }
            let lease = match self.ring.try_lease(&key).await {
                Ok(Some(l)) => l,
                Ok(None) => {
                    // The previous owner still holds it; it lets go once it sees the ring change.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(appservice = %self.reg.id, error = %e, "could not take the delivery lease");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::info!(appservice = %self.reg.id, "delivering transactions to the application service");
            if let Err(e) = self.deliver(&lease, &key).await {
                tracing::warn!(appservice = %self.reg.id, error = %e, "application service delivery stopped; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            lease.release().await;
        }
    }

    /// Delivers while this instance owns the service and holds the lease.
    async fn deliver(&self, lease: &ganglion_replication::Lease, key: &str) -> Result<(), Error> {
        let id = self.reg.id.as_str();
        let mut backoff = Duration::from_secs(1);
        // Where a service seen for the first time starts; read once per lease, not per wake.
        let start = self.current_positions().await?;
        while lease.held() && self.ring.owns(key) {
            let state = self.stores.state.state_or_start(id, start).await?;
            if let Some((txn_id, body)) = state.pending {
                let body: Value = serde_json::from_str(&body).unwrap_or_else(|_| json!({ "events": [] }));
                match self.client.send_transaction(&self.reg, &txn_id.to_string(), &body).await {
                    Ok(()) => {
                        self.stores.state.acknowledged(id, txn_id).await?;
                        backoff = Duration::from_secs(1);
                        tracing::debug!(appservice = id, txn_id, "transaction acknowledged");
                    }
                    Err(e) => {
                        if state.failing_since.is_none() {
                            self.stores.state.set_failing(id, Some(now_ms())).await?;
                        }
                        tracing::warn!(appservice = id, txn_id, error = %e, retry_in = ?backoff, "transaction failed");
                        // A wake does not cut the wait short: the service is down, not behind.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.max_retry_interval);
                    }
                }
                continue;
            }
            let from = state.positions;
            let (body, to, consumed) = self.build(from).await?;
            if to == from {
                // Nothing new: wait for the streams (a timeout catches anything missed).
                let _ = tokio::time::timeout(Duration::from_secs(10), self.wake.notified()).await;
                continue;
            }
            match body {
                Some(body) => {
                    let text = body.to_string();
                    self.stores.state.stage(id, state.next_txn_id, &text, to, &consumed).await?;
                }
                None => self.stores.state.skip_to(id, to).await?,
            }
        }
        Ok(())
    }

    async fn current_positions(&self) -> Result<AppservicePositions, Error> {
        Ok(AppservicePositions {
            events: self.stores.events.max_stream_ordering().await?,
            receipts: self.stores.ephemeral.max_receipt_position().await?,
            typing: self.stores.ephemeral.max_typing_position().await?,
            presence: self.stores.presence.max_position().await?,
            to_device: self.stores.e2ee.max_to_device_position().await?,
            device_lists: self.stores.e2ee.max_device_list_position().await?,
        })
    }

    /// The next transaction after `from`: its body (`None` when nothing in the range interests
    /// the service), the positions it covers and the to-device messages it consumes.
    async fn build(&self, from: AppservicePositions) -> Result<(Option<Value>, AppservicePositions, Vec<i64>), Error> {
        let mut to = from;
        let mut interest = RoomInterest::default();
        let mut events = Vec::new();
        let mut rooms = BTreeSet::new();
        for ev in self.stores.events.events_after(from.events, MAX_EVENTS).await? {
            to.events = to.events.max(ev.stream_ordering);
            let by_user = self.reg.is_interested_in_user(ev.sender.as_str())
                || ev
                    .state_key
                    .as_deref()
                    .is_some_and(|k| ev.event_type == "m.room.member" && self.reg.is_interested_in_user(k));
            if by_user || interest.room(&self.reg, &self.stores.events, ev.room_id.as_str()).await? {
                rooms.insert(ev.room_id.to_string());
                events.push(ganglion_core::client_event(&ev.json, ev.event_id.as_str(), ev.room_id.as_str(), None));
            }
        }
        let mut ephemeral = Vec::new();
        let mut to_device = Vec::new();
        let mut consumed = Vec::new();
        if self.reg.receive_ephemeral {
            self.receipts(from, &mut to, &mut interest, &mut ephemeral).await?;
            self.typing(from, &mut to, &mut interest, &mut ephemeral).await?;
            self.presence(from, &mut to, &mut interest, &mut ephemeral).await?;
            self.to_device(from, &mut to, &mut to_device, &mut consumed).await?;
        }
        let mut changed = Vec::new();
        if self.reg.msc3202 {
            changed = self.device_lists(from, &mut to, &mut interest).await?;
        }
        if events.is_empty() && ephemeral.is_empty() && to_device.is_empty() && changed.is_empty() {
            return Ok((None, to, consumed));
        }
        let mut body = json!({ "events": events });
        if !ephemeral.is_empty() {
            rooms.extend(ephemeral.iter().filter_map(|e| e["room_id"].as_str().map(str::to_owned)));
            // The stable name, and MSC2409's, which older bridge frameworks read.
            body["ephemeral"] = json!(ephemeral);
            body["de.sorunome.msc2409.ephemeral"] = json!(ephemeral);
        }
        let mut key_users: BTreeSet<String> = BTreeSet::from([self.reg.sender.to_string()]);
        if !to_device.is_empty() {
            key_users.extend(to_device.iter().filter_map(|m| m["to_user_id"].as_str().map(str::to_owned)));
            // MSC4203's name and MSC2409's.
            body["to_device"] = json!(to_device);
            body["de.sorunome.msc2409.to_device"] = json!(to_device);
        }
        if self.reg.msc3202 {
            if !changed.is_empty() {
                key_users.extend(changed.iter().filter(|u| self.reg.is_interested_in_user(u)).cloned());
                body["org.matrix.msc3202.device_lists"] = json!({ "changed": changed, "left": [] });
            }
            // The key stock of the service's users this transaction touches: its own user,
            // its users in the rooms it names, the recipients of its to-device messages and
            // its users whose devices changed (so an upload is answered with the new counts).
            for room in &rooms {
                let Ok(room_id) = ruma::OwnedRoomId::try_from(room.as_str()) else { continue };
                let members = self.stores.events.members_with(&room_id, "join").await?;
                key_users.extend(members.into_iter().filter(|u| self.reg.is_interested_in_user(u)));
            }
            self.key_counts(&key_users.into_iter().collect::<Vec<_>>(), &mut body).await?;
        }
        Ok((Some(body), to, consumed))
    }

    /// To-device messages for the service's users, with their recipient named (MSC2409).
    /// Those for its exclusive users are consumed: they leave the inbox once acknowledged.
    async fn to_device(
        &self,
        from: AppservicePositions,
        to: &mut AppservicePositions,
        out: &mut Vec<Value>,
        consumed: &mut Vec<i64>,
    ) -> Result<(), Error> {
        for m in self.stores.e2ee.to_device_after(from.to_device, MAX_EPHEMERAL).await? {
            to.to_device = to.to_device.max(m.position);
            if !self.reg.is_interested_in_user(&m.user_id) {
                continue;
            }
            if self.reg.is_exclusive_user(&m.user_id) {
                consumed.push(m.position);
            }
            let content: Value = serde_json::from_str(&m.content).unwrap_or_else(|_| json!({}));
            out.push(json!({
                "type": m.event_type,
                "sender": m.sender,
                "content": content,
                "to_user_id": m.user_id,
                "to_device_id": m.device_id,
            }));
        }
        Ok(())
    }

    /// Users whose devices changed and whom the service is interested in: in its namespace,
    /// or in a room it watches (MSC3202).
    async fn device_lists(
        &self,
        from: AppservicePositions,
        to: &mut AppservicePositions,
        interest: &mut RoomInterest,
    ) -> Result<Vec<String>, Error> {
        let mut changed = BTreeSet::new();
        for (position, user) in self.stores.e2ee.device_changes_after(from.device_lists, MAX_EPHEMERAL).await? {
            to.device_lists = to.device_lists.max(position);
            if changed.contains(&user) {
                continue;
            }
            if self.reg.is_interested_in_user(&user) || interest.user(&self.reg, &self.stores.events, &user).await? {
                changed.insert(user);
            }
        }
        Ok(changed.into_iter().collect())
    }

    /// One-time key counts and unused fallback key types of `users`' devices (MSC3202), under
    /// the current name and the one Synapse sent before 1.73, which some frameworks still read.
    async fn key_counts(&self, users: &[String], body: &mut Value) -> Result<(), Error> {
        let stock = self.stores.e2ee.key_counts_of_users(users).await?;
        if stock.is_empty() {
            return Ok(());
        }
        let mut counts = BTreeMap::new();
        let mut fallback = BTreeMap::new();
        for (user, devices) in stock {
            let c: BTreeMap<_, _> = devices.iter().map(|(d, k)| (d.clone(), json!(k.one_time_keys))).collect();
            let f: BTreeMap<_, _> = devices.iter().map(|(d, k)| (d.clone(), json!(k.unused_fallback))).collect();
            counts.insert(user.clone(), c);
            fallback.insert(user, f);
        }
        body["org.matrix.msc3202.device_one_time_keys_count"] = json!(counts);
        body["org.matrix.msc3202.device_one_time_key_counts"] = json!(counts);
        body["org.matrix.msc3202.device_unused_fallback_key_types"] = json!(fallback);
        Ok(())
    }

    async fn receipts(
        &self,
        from: AppservicePositions,
        to: &mut AppservicePositions,
        interest: &mut RoomInterest,
        out: &mut Vec<Value>,
    ) -> Result<(), Error> {
        let mut by_room: HashMap<String, serde_json::Map<String, Value>> = HashMap::new();
        for r in self.stores.ephemeral.receipts_after(from.receipts, MAX_EPHEMERAL).await? {
            to.receipts = to.receipts.max(r.position);
            // Private receipts are for the reader's own devices only.
            if r.receipt_type == "m.read.private" {
                continue;
            }
            if !interest.room(&self.reg, &self.stores.events, &r.room_id).await? {
                continue;
            }
            let mut receipt = json!({ "ts": r.ts });
            if !r.thread_id.is_empty() {
                receipt["thread_id"] = json!(r.thread_id);
            }
            let content = by_room.entry(r.room_id.clone()).or_default();
            let per_event = content.entry(r.event_id.clone()).or_insert_with(|| json!({}));
            per_event[&r.receipt_type][&r.user_id] = receipt;
        }
        for (room_id, content) in by_room {
            out.push(json!({ "type": "m.receipt", "room_id": room_id, "content": content }));
        }
        Ok(())
    }

    async fn typing(
        &self,
        from: AppservicePositions,
        to: &mut AppservicePositions,
        interest: &mut RoomInterest,
        out: &mut Vec<Value>,
    ) -> Result<(), Error> {
        let rows = self.stores.ephemeral.typing_after(from.typing, MAX_EPHEMERAL).await?;
        let Some(last) = rows.iter().map(|(p, _)| *p).max() else { return Ok(()) };
        to.typing = to.typing.max(last);
        let mut rooms = Vec::new();
        for (_, room) in rows {
            if !rooms.contains(&room) && interest.room(&self.reg, &self.stores.events, &room).await? {
                rooms.push(room);
            }
        }
        if rooms.is_empty() {
            return Ok(());
        }
        for (room_id, users) in self.stores.ephemeral.typing_in_rooms(&rooms, from.typing, last).await? {
            out.push(json!({ "type": "m.typing", "room_id": room_id, "content": { "user_ids": users } }));
        }
        Ok(())
    }

    async fn presence(
        &self,
        from: AppservicePositions,
        to: &mut AppservicePositions,
        interest: &mut RoomInterest,
        out: &mut Vec<Value>,
    ) -> Result<(), Error> {
        let rows = self.stores.presence.log_after(from.presence, MAX_EPHEMERAL).await?;
        let Some(last) = rows.iter().map(|(p, _)| *p).max() else { return Ok(()) };
        to.presence = to.presence.max(last);
        let mut users: Vec<String> = rows.into_iter().map(|(_, u)| u).collect();
        users.sort();
        users.dedup();
        let now = now_ms();
        for user in users {
            // The presence of users in the service's namespace, or who share a room it watches.
            let shares =
                self.reg.is_interested_in_user(&user) || interest.user(&self.reg, &self.stores.events, &user).await?;
            if !shares {
                continue;
            }
            let Ok(user_id) = ruma::OwnedUserId::try_from(user.as_str()) else { continue };
            let Some(p) = self.stores.presence.get(&user_id).await? else { continue };
            let mut content = json!({
                "presence": p.state,
                "last_active_ago": (now - p.last_active_ts).max(0),
                "currently_active": p.state == "online",
            });
            if let Some(msg) = p.status_msg {
                content["status_msg"] = json!(msg);
            }
            out.push(json!({ "type": "m.presence", "sender": user, "content": content }));
        }
        Ok(())
    }
}

/// Which rooms interest the service, worked out once per transaction: the room ID is in its
/// room namespace, one of the room's aliases in its alias namespace, or a member is in its user
/// namespace.
#[derive(Default)]
struct RoomInterest {
    rooms: HashMap<String, bool>,
}

impl RoomInterest {
    async fn room(&mut self, reg: &Registration, events: &EventStore, room: &str) -> Result<bool, Error> {
        if let Some(&known) = self.rooms.get(room) {
            return Ok(known);
        }
        let Ok(room_id) = ruma::OwnedRoomId::try_from(room) else { return Ok(false) };
        let mut yes = reg.is_interested_in_room(room);
        if !yes && !reg.aliases.is_empty() {
            yes = events.room_aliases(&room_id).await?.iter().any(|a| reg.is_interested_in_alias(a));
        }
        if !yes {
            for membership in ["join", "invite"] {
                if events.members_with(&room_id, membership).await?.iter().any(|u| reg.is_interested_in_user(u)) {
                    yes = true;
                    break;
                }
            }
        }
        self.rooms.insert(room.to_owned(), yes);
        Ok(yes)
    }

    async fn user(&mut self, reg: &Registration, events: &EventStore, user: &str) -> Result<bool, Error> {
        let Ok(user_id) = ruma::OwnedUserId::try_from(user) else { return Ok(false) };
        for m in events.rooms_for_user(&user_id).await? {
            if m.membership == "join" && self.room(reg, events, m.room_id.as_str()).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
