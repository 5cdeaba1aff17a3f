//! The extensions: `to_device` (MSC3885), `e2ee` (MSC3884), `account_data` (MSC3959),
//! `receipts` (MSC3960) and `typing` (MSC3961). Each runs only when `enabled: true`.

use std::collections::{BTreeMap, HashMap, HashSet};

use ganglion_http::{AuthUser, MatrixError};
use ganglion_storage::{EphemeralStore, Receipt};
use ruma::{OwnedRoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::sync_v3::acknowledge_to_device;
use crate::{SyncContext, SyncToken};

/// `extensions` of a request.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ExtensionsRequest {
    #[serde(default)]
    pub(crate) to_device: ToDeviceRequest,
    #[serde(default)]
    pub(crate) e2ee: Enabled,
    #[serde(default)]
    pub(crate) account_data: Enabled,
    #[serde(default)]
    pub(crate) receipts: Enabled,
    #[serde(default)]
    pub(crate) typing: Enabled,
}

/// An extension switched on or off; its `lists`/`rooms` scoping is not applied (every joined
/// room is covered).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Enabled {
    pub(crate) enabled: Option<bool>,
}

impl Enabled {
    fn on(&self) -> bool {
        self.enabled == Some(true)
    }
}

/// The `to_device` extension's request.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ToDeviceRequest {
    pub(crate) enabled: Option<bool>,
    pub(crate) limit: Option<u64>,
    pub(crate) since: Option<String>,
}

/// Default and maximum to-device messages per response.
const TO_DEVICE_LIMIT: u64 = 100;

impl ExtensionsRequest {
    /// The `to_device.since` the client acknowledges, if any.
    ///
    /// # Errors
    /// `M_INVALID_PARAM` when it is not one of ours.
    pub(crate) fn to_device_since(&self) -> Result<Option<u64>, MatrixError> {
        if self.to_device.enabled != Some(true) {
            return Ok(None);
        }
        self.to_device
            .since
            .as_deref()
            .map(|s| s.parse::<u64>().map_err(|_| MatrixError::invalid_param("to_device.since is not a valid token")))
            .transpose()
    }
}

/// Deletes acknowledged to-device messages, through main, as classic sync does.
pub(crate) fn acknowledge(ctx: &SyncContext, user: &AuthUser, since: Option<u64>) {
    if let Some(s) = since.filter(|s| *s > 0) {
        acknowledge_to_device(ctx, user, s);
    }
}

/// What the extensions need to know about the response being built.
pub(crate) struct Scope<'a> {
    /// The previous pos's positions; `None` on a new connection.
    pub(crate) since: Option<SyncToken>,
    /// The positions this response covers.
    pub(crate) upto: SyncToken,
    /// The user's joined rooms at `upto`.
    pub(crate) joined: &'a HashSet<OwnedRoomId>,
    /// Rooms sent with `initial: true` in this response: their receipts and typing are sent whole.
    pub(crate) initial_rooms: &'a [OwnedRoomId],
}

/// Builds `extensions`; the flag says whether any carries news (which ends a long-poll).
pub(crate) async fn build(
    ctx: &SyncContext,
    user: &AuthUser,
    req: &ExtensionsRequest,
    scope: &Scope<'_>,
) -> Result<(Value, bool), MatrixError> {
    let mut out = Map::new();
    let mut news = false;
    if req.to_device.enabled == Some(true) {
        let since = req.to_device_since()?.unwrap_or(0);
        let limit = req.to_device.limit.unwrap_or(TO_DEVICE_LIMIT).clamp(1, TO_DEVICE_LIMIT) as i64;
        let messages =
            ctx.e2ee.to_device_for(&user.user_id, user.device_str(), scope.upto.to_device as i64, limit).await?;
        // A full page may stop short of `upto`: the next batch starts after its last message.
        let next = match messages.last() {
            Some(last) if messages.len() as i64 >= limit => last.position as u64,
            _ => scope.upto.to_device,
        }
        .max(since);
        let events: Vec<Value> = messages
            .iter()
            .filter(|m| m.position as u64 > since)
            .map(|m| {
                json!({
                    "sender": m.sender,
                    "type": m.event_type,
                    "content": serde_json::from_str::<Value>(&m.content).unwrap_or_default(),
                })
            })
            .collect();
        news |= !events.is_empty();
        out.insert("to_device".into(), json!({ "next_batch": next.to_string(), "events": events }));
    }
    if req.e2ee.on() {
        let (changed, left) = match scope.since {
            Some(s) => crate::device_list_changes(ctx, &user.user_id, &s, &scope.upto).await?,
            None => (Vec::new(), Vec::new()),
        };
        news |= !changed.is_empty() || !left.is_empty();
        let (counts, fallback) = ctx.e2ee.key_counts(&user.user_id, user.device_str()).await?;
        let counts: Map<String, Value> = counts.into_iter().map(|(a, n)| (a, json!(n))).collect();
        out.insert(
            "e2ee".into(),
            json!({
                "device_lists": { "changed": changed, "left": left },
                "device_one_time_keys_count": counts,
                "device_unused_fallback_key_types": fallback,
            }),
        );
    }
    if req.account_data.on() {
        let (data, fresh) = account_data(ctx, &user.user_id, scope).await?;
        news |= fresh;
        out.insert("account_data".into(), data);
    }
    if req.receipts.on() {
        let rooms = receipts(ctx, &user.user_id, scope).await?;
        news |= !rooms.is_empty();
        out.insert("receipts".into(), json!({ "rooms": rooms }));
    }
    if req.typing.on() {
        let rooms = typing(ctx, scope).await?;
        news |= !rooms.is_empty();
        out.insert("typing".into(), json!({ "rooms": rooms }));
    }
    Ok((Value::Object(out), news))
}

/// Global and per-room account data changed since the pos (all of it on a new connection, with
/// the default push rules when none are stored).
async fn account_data(ctx: &SyncContext, user_id: &UserId, scope: &Scope<'_>) -> Result<(Value, bool), MatrixError> {
    let after = scope.since.map_or(0, |s| s.account_data as i64);
    let entries = ctx.account_data.changed_for_user(user_id, after, scope.upto.account_data as i64).await?;
    let mut global = Vec::new();
    let mut rooms: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in entries {
        let event =
            json!({ "type": e.data_type, "content": serde_json::from_str::<Value>(&e.content).unwrap_or_default() });
        if e.room_id.is_empty() {
            global.push(event);
        } else if scope.joined.iter().any(|r| r.as_str() == e.room_id) {
            rooms.entry(e.room_id).or_default().push(event);
        }
    }
    let fresh = !global.is_empty() || !rooms.is_empty();
    if scope.since.is_none() && !global.iter().any(|e| e["type"] == "m.push_rules") {
        global.push(
            json!({ "type": "m.push_rules", "content": { "global": ganglion_core::push_rules::server_default(user_id) } }),
        );
    }
    Ok((json!({ "global": global, "rooms": rooms }), fresh))
}

/// `m.receipt` events per room: changes since the pos in joined rooms, plus the latest receipts
/// of rooms sent whole.
async fn receipts(ctx: &SyncContext, user_id: &UserId, scope: &Scope<'_>) -> Result<Map<String, Value>, MatrixError> {
    let upto = scope.upto.receipts as i64;
    let mut found: Vec<Receipt> = Vec::new();
    let whole: Vec<String> = match scope.since {
        None => scope.joined.iter().map(ToString::to_string).collect(),
        Some(_) => scope.initial_rooms.iter().filter(|r| scope.joined.contains(*r)).map(ToString::to_string).collect(),
    };
    found.extend(ctx.ephemeral.receipts_in_rooms(&whole, 0, upto).await?);
    if let Some(s) = scope.since
        && upto > s.receipts as i64
    {
        let rest: Vec<String> = scope.joined.iter().map(ToString::to_string).filter(|r| !whole.contains(r)).collect();
        found.extend(ctx.ephemeral.receipts_in_rooms(&rest, s.receipts as i64, upto).await?);
    }
    // The log keeps every receipt; only the latest per (room, user, type, thread) matters.
    let mut latest: HashMap<(String, String, String, String), Receipt> = HashMap::new();
    for r in found.into_iter().filter(|r| EphemeralStore::visible_to(r, user_id)) {
        let key = (r.room_id.clone(), r.user_id.clone(), r.receipt_type.clone(), r.thread_id.clone());
        match latest.get(&key) {
            Some(have) if have.position > r.position => {}
            _ => {
                latest.insert(key, r);
            }
        }
    }
    let mut content: BTreeMap<String, Value> = BTreeMap::new();
    for r in latest.into_values() {
        let room = content.entry(r.room_id.clone()).or_insert_with(|| json!({}));
        let mut data = json!({ "ts": r.ts });
        if !r.thread_id.is_empty() {
            data["thread_id"] = json!(r.thread_id);
        }
        room[r.event_id.as_str()][r.receipt_type.as_str()][r.user_id.as_str()] = data;
    }
    Ok(content.into_iter().map(|(room, c)| (room, json!({ "type": "m.receipt", "content": c }))).collect())
}

/// `m.typing` events per room whose typing set changed since the pos (non-empty sets of every
/// joined room on a new connection).
async fn typing(ctx: &SyncContext, scope: &Scope<'_>) -> Result<Map<String, Value>, MatrixError> {
    let after = scope.since.map_or(0, |s| s.typing as i64);
    let mut out = Map::new();
    if scope.since.is_some_and(|s| s.typing >= scope.upto.typing) {
        return Ok(out);
    }
    let joined: Vec<String> = scope.joined.iter().map(ToString::to_string).collect();
    for (room, users) in ctx.ephemeral.typing_in_rooms(&joined, after, scope.upto.typing as i64).await? {
        if scope.since.is_none() && users.is_empty() {
            continue;
        }
        out.insert(room, json!({ "type": "m.typing", "content": { "user_ids": users } }));
    }
    Ok(out)
}
