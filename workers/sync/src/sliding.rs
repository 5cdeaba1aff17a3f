//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`: simplified sliding sync
//! (MSC4186), as matrix-rust-sdk and Element X use it.
//!
//! Stateless like classic `/sync`: the `pos` handed to the client ([`pos::Pos`]) carries the
//! stream positions the response covered and, per list, the ranges served and a hash of the rooms
//! inside them. The next request rebuilds those lists as they stood at the old positions (the
//! event history is append-only, so that is exact), checks the hash, and sends only rooms that
//! changed since, or are newly in range. Design and limits: `docs/sliding-sync.md`.
//!
//! - [`pos`]: the `pos` format;
//! - [`lists`]: list requests, filters, ordering by `bump_stamp`, `required_state` matching;
//! - [`extensions`]: to-device, e2ee, account data, receipts, typing.

mod extensions;
mod lists;
mod pos;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use ganglion_storage::{PersistedEvent, RoomMembership};
use ruma::{OwnedRoomId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use self::extensions::{ExtensionsRequest, Scope};
use self::lists::{Candidates, ListRequest, RoomDetails, RoomFacts, bump_event_types, in_ranges, senders};
use self::pos::{ListPos, Pos, fnv1a, room_set_hash};
use crate::sync_v3::{pagination_token, sync_event};
use crate::{SyncContext, SyncToken};

/// Query parameters.
#[derive(Debug, Deserialize)]
pub(crate) struct SlidingQuery {
    pos: Option<String>,
    timeout: Option<String>,
    set_presence: Option<String>,
}

/// The request body.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SlidingRequest {
    #[serde(default)]
    conn_id: Option<String>,
    #[serde(default)]
    txn_id: Option<String>,
    #[serde(default)]
    lists: BTreeMap<String, ListRequest>,
    #[serde(default)]
    room_subscriptions: BTreeMap<OwnedRoomId, RoomDetails>,
    #[serde(default)]
    extensions: ExtensionsRequest,
}

/// Events one incremental response reads across rooms before falling back to per-room reads.
const INCREMENTAL_SCAN_CAP: i64 = 5000;
/// How many members `heroes` lists.
const MAX_HEROES: usize = 5;

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`: simplified sliding sync.
pub(crate) async fn sliding_sync(
    State(ctx): State<SyncContext>,
    user: AuthUser,
    Query(q): Query<SlidingQuery>,
    MatrixJson(body): MatrixJson<SlidingRequest>,
) -> Result<Json<Value>, MatrixError> {
    let timeout = match q.timeout.as_deref() {
        None => Duration::ZERO,
        Some(t) => Duration::from_millis(
            t.parse::<u64>().map_err(|_| MatrixError::invalid_param("timeout must be a number of milliseconds"))?,
        ),
    }
    .min(ctx.max_timeout);
    match q.set_presence.as_deref() {
        None | Some("online" | "offline" | "unavailable") => {}
        Some(_) => return Err(MatrixError::invalid_param("set_presence must be online, offline or unavailable")),
    }
    let who = fnv1a(&[user.user_id.as_str(), user.device_str(), body.conn_id.as_deref().unwrap_or("")]);
    let prev = q.pos.as_deref().map(|p| Pos::decode(p, who)).transpose()?;
    let to_device_since = body.extensions.to_device_since()?;

    let deadline = Instant::now() + timeout;
    let mut positions = ctx.positions.clone();
    if prev.is_none() {
        positions.catch_up_with_database(&ctx.events).await?;
    }
    // A pos from an instance further along: wait until this one has caught up, as classic sync does.
    if let Some((_, s)) = &prev {
        let catch_up_deadline = deadline.max(Instant::now() + Duration::from_secs(10));
        loop {
            let now = positions.current();
            if now.covers(s) {
                break;
            }
            if !matches!(tokio::time::timeout_at(catch_up_deadline, positions.changed()).await, Ok(Ok(()))) {
                break;
            }
        }
    }
    extensions::acknowledge(&ctx, &user, to_device_since);
    let subscribed: Vec<&RoomId> = body.room_subscriptions.keys().map(|r| &**r).collect();
    loop {
        let now = positions.current();
        let next = match &prev {
            Some((_, s)) => s.max(now),
            None => now,
        };
        let (response, news) = respond(&ctx, &user, &body, prev.as_ref(), next, who).await?;
        if prev.is_none() || news || Instant::now() >= deadline {
            return Ok(Json(response));
        }
        // Woken only by other streams or by events of the user's (or subscribed) rooms.
        let mut waiting_in = crate::sync_v3::waiting_rooms(&ctx, &user.user_id, next.events).await?;
        waiting_in.extend(subscribed.iter().map(|r| r.to_string()));
        if !positions.wait_for_news(&ctx.waiters, &user.user_id, waiting_in, next.events, deadline).await {
            // Timed out, or the followers stopped (shutdown): answer with what we have.
            return Ok(Json(response));
        }
    }
}

/// One room to send and how.
struct Planned {
    details: RoomDetails,
    initial: bool,
}

/// The user's joined and invited rooms at a position, with their bump stamps.
async fn candidates(
    ctx: &SyncContext,
    user_id: &UserId,
    upto: i64,
) -> Result<(Vec<RoomMembership>, Candidates), MatrixError> {
    let all = ctx.events.memberships_at(user_id, upto).await?;
    let rooms: Vec<RoomMembership> =
        all.iter().filter(|m| m.membership == "join" || m.membership == "invite").cloned().collect();
    let ids: Vec<OwnedRoomId> = rooms.iter().map(|m| m.room_id.clone()).collect();
    let bump = ctx.events.latest_of_types(&ids, bump_event_types(), user_id, upto).await?.into_iter().collect();
    Ok((all, Candidates { rooms, bump }))
}

/// Builds one response at `next`; the flag says whether it carries news (which ends a long-poll).
async fn respond(
    ctx: &SyncContext,
    user: &AuthUser,
    body: &SlidingRequest,
    prev: Option<&(Pos, SyncToken)>,
    next: SyncToken,
    who: u64,
) -> Result<(Value, bool), MatrixError> {
    let user_id = &user.user_id;
    let upto = next.events as i64;
    let since = prev.map(|(_, t)| t.events as i64);
    let (memberships, now) = candidates(ctx, user_id, upto).await?;
    let membership: HashMap<&RoomId, &RoomMembership> = memberships.iter().map(|m| (&*m.room_id, m)).collect();
    let dms = direct_rooms(ctx, user_id).await?;
    let mut facts: HashMap<OwnedRoomId, RoomFacts> = HashMap::new();
    if body.lists.values().any(|l| l.filters.as_ref().is_some_and(lists::Filters::needs_state)) {
        for m in &now.rooms {
            facts.insert(m.room_id.clone(), room_facts(ctx, &m.room_id).await?);
        }
    }

    // Rooms the client already holds: those inside the lists' ranges at the previous pos (rebuilt
    // from the history and checked against the hash the pos carries) and the subscriptions sent.
    let mut known_in_lists: HashSet<OwnedRoomId> = HashSet::new();
    let mut known_subs: HashSet<u64> = HashSet::new();
    let mut joined_then: HashSet<OwnedRoomId> = HashSet::new();
    if let Some((p, t)) = prev {
        known_subs.extend(p.subs.iter().copied());
        let (_, then) = candidates(ctx, user_id, t.events as i64).await?;
        joined_then.extend(then.rooms.iter().filter(|m| m.membership == "join").map(|m| m.room_id.clone()));
        for (name, list) in &body.lists {
            let Some(ListPos { r, h }) = p.lists.get(name) else { continue };
            let window = in_ranges(&then.list(list.filters.as_ref(), &dms, &facts), r);
            // A mismatch (changed filters, changed m.direct, …) means we cannot tell what the
            // client holds: it then gets every room in range again.
            if room_set_hash(window.iter().map(|r| r.as_str())) == *h {
                known_in_lists.extend(window);
            }
        }
    }

    let mut plan: BTreeMap<OwnedRoomId, Planned> = BTreeMap::new();
    let mut list_out = Map::new();
    let mut new_pos = Pos::new(next, who);
    for (name, list) in &body.lists {
        let ordered = now.list(list.filters.as_ref(), &dms, &facts);
        let window = in_ranges(&ordered, &list.ranges);
        list_out.insert(name.clone(), json!({ "count": ordered.len() }));
        new_pos.lists.insert(
            name.clone(),
            ListPos { r: list.ranges.clone(), h: room_set_hash(window.iter().map(|r| r.as_str())) },
        );
        for room in window {
            let initial = !known_in_lists.contains(&room) && !known_subs.contains(&fnv1a(&[room.as_str()]));
            let p = plan.entry(room).or_insert_with(|| Planned { details: RoomDetails::default(), initial });
            p.details.merge(&list.details);
            p.initial &= initial;
        }
    }
    for (room, details) in &body.room_subscriptions {
        // Only rooms the user is in or invited to; others are ignored, as Synapse does.
        if !membership.get(&**room).is_some_and(|m| m.membership == "join" || m.membership == "invite") {
            continue;
        }
        let h = fnv1a(&[room.as_str()]);
        new_pos.subs.push(h);
        // A room newly subscribed to is sent whole even if a list sent it before: opening a room
        // usually asks for more state and a longer timeline than the list did.
        let initial = !known_subs.contains(&h);
        let p = plan.entry(room.clone()).or_insert_with(|| Planned { details: RoomDetails::default(), initial });
        p.details.merge(details);
        p.initial |= initial;
    }
    // A room held as an invite and joined since: the client has only its stripped state.
    if prev.is_some() {
        for (room, p) in plan.iter_mut() {
            if membership.get(&**room).is_some_and(|m| m.membership == "join") && !joined_then.contains(room) {
                p.initial = true;
            }
        }
    }
    // Rooms the client held and has since left: sent once more, so it sees the leave.
    let mut left: HashMap<OwnedRoomId, i64> = HashMap::new();
    if let Some(s) = since {
        for room in &known_in_lists {
            if let Some(m) = membership.get(&**room)
                && matches!(m.membership.as_str(), "leave" | "ban")
                && m.stream_ordering > s
                && !plan.contains_key(room)
            {
                left.insert(room.clone(), m.stream_ordering);
                let details = body.lists.values().map(|l| &l.details).fold(RoomDetails::default(), |mut d, l| {
                    d.merge(l);
                    d
                });
                plan.insert(room.clone(), Planned { details, initial: false });
            }
        }
    }

    // What changed since the previous pos, in the rooms the client holds.
    let mut recent: HashMap<OwnedRoomId, Vec<PersistedEvent>> = HashMap::new();
    let mut capped = false;
    if let Some(s) = since {
        let held: Vec<OwnedRoomId> = plan.iter().filter(|(_, p)| !p.initial).map(|(r, _)| r.clone()).collect();
        let found = ctx.events.events_in_rooms_between(&held, s, upto, INCREMENTAL_SCAN_CAP).await?;
        capped = found.len() as i64 >= INCREMENTAL_SCAN_CAP;
        for e in found {
            recent.entry(e.room_id.clone()).or_default().push(e);
        }
    }

    // Rooms where the user's own read receipt moved: their unread counts changed.
    let mut counts_changed: HashSet<String> = HashSet::new();
    if let Some((_, t)) = prev
        && next.receipts > t.receipts
    {
        let held: Vec<String> = plan.iter().filter(|(_, p)| !p.initial).map(|(r, _)| r.to_string()).collect();
        for r in ctx.ephemeral.receipts_in_rooms(&held, t.receipts as i64, next.receipts as i64).await? {
            if r.user_id == user_id.as_str() {
                counts_changed.insert(r.room_id);
            }
        }
    }

    let mut rooms = Map::new();
    let mut initial_rooms = Vec::new();
    for (room_id, p) in &plan {
        let Some(m) = membership.get(&**room_id) else { continue };
        let limit = p.details.limit();
        let room_upto = left.get(room_id).copied().unwrap_or(upto);
        // (events for the timeline, whether older ones were left out)
        let (timeline, limited) = if p.initial || m.membership == "invite" {
            if m.membership == "invite" && !p.initial && !recent.contains_key(room_id) && !capped {
                continue;
            }
            if m.membership == "invite" {
                (Vec::new(), false)
            } else {
                let mut t = ctx.events.latest_room_events(room_id, room_upto, limit as i64 + 1).await?;
                let limited = t.len() > limit;
                t.drain(..t.len().saturating_sub(limit));
                (t, limited)
            }
        } else {
            let s = since.unwrap_or_default();
            let (mut events, mut limited) = if capped {
                let mut latest = ctx.events.latest_room_events(room_id, room_upto, limit as i64 + 1).await?;
                let all_new = latest.first().is_some_and(|e| e.stream_ordering > s);
                latest.retain(|e| e.stream_ordering > s);
                (latest, all_new)
            } else {
                (recent.remove(room_id).unwrap_or_default(), false)
            };
            events.retain(|e| e.stream_ordering <= room_upto);
            if events.is_empty() && !counts_changed.contains(room_id.as_str()) {
                continue;
            }
            limited |= events.len() > limit;
            events.drain(..events.len().saturating_sub(limit));
            (events, limited)
        };
        let bump = now.bump.get(room_id).copied();
        let data = RoomData { room_id, user_id, membership: m, details: &p.details, initial: p.initial, since, bump };
        rooms.insert(room_id.to_string(), room(ctx, &data, &timeline, limited, room_upto, &dms).await?);
        if p.initial {
            initial_rooms.push(room_id.clone());
        }
    }

    let joined: HashSet<OwnedRoomId> =
        memberships.iter().filter(|m| m.membership == "join").map(|m| m.room_id.clone()).collect();
    let scope = Scope { since: prev.map(|(_, t)| *t), upto: next, joined: &joined, initial_rooms: &initial_rooms };
    let (ext, ext_news) = extensions::build(ctx, user, &body.extensions, &scope).await?;

    let news = !rooms.is_empty() || ext_news;
    let mut out = json!({ "pos": new_pos.encode(), "lists": list_out, "rooms": rooms, "extensions": ext });
    if let Some(t) = &body.txn_id {
        out["txn_id"] = json!(t);
    }
    Ok((out, news))
}

/// Rooms the user marked as direct chats (`m.direct`).
async fn direct_rooms(ctx: &SyncContext, user_id: &UserId) -> Result<HashSet<OwnedRoomId>, MatrixError> {
    let Some(raw) = ctx.account_data.get(user_id, "", "m.direct").await? else { return Ok(HashSet::new()) };
    let content: Value = serde_json::from_str(&raw).unwrap_or_default();
    Ok(content
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|r| OwnedRoomId::try_from(r).ok())
        .collect())
}

/// A room's type and encryption, for list filters.
async fn room_facts(ctx: &SyncContext, room_id: &RoomId) -> Result<RoomFacts, MatrixError> {
    let create = ctx.events.state_event(room_id, "m.room.create", "").await?;
    let room_type = create
        .and_then(|e| serde_json::from_str::<Value>(&e.json).ok())
        .and_then(|v| v.pointer("/content/type").and_then(Value::as_str).map(str::to_owned));
    let encrypted = ctx.events.state_event(room_id, "m.room.encryption", "").await?.is_some();
    Ok(RoomFacts { room_type, encrypted })
}

/// What [`room`] needs besides the timeline.
struct RoomData<'a> {
    room_id: &'a RoomId,
    user_id: &'a UserId,
    membership: &'a RoomMembership,
    details: &'a RoomDetails,
    initial: bool,
    /// The previous pos's `events` position.
    since: Option<i64>,
    bump: Option<i64>,
}

fn content(e: &PersistedEvent) -> Value {
    serde_json::from_str::<Value>(&e.json)
        .ok()
        .and_then(|mut v| v.get_mut("content").map(Value::take))
        .unwrap_or_default()
}

/// One entry of `rooms`.
async fn room(
    ctx: &SyncContext,
    d: &RoomData<'_>,
    timeline: &[PersistedEvent],
    limited: bool,
    upto: i64,
    dms: &HashSet<OwnedRoomId>,
) -> Result<Value, MatrixError> {
    let state = ctx.events.state_at(d.room_id, upto).await?;
    let of = |t: &str| state.iter().find(|e| e.event_type == t && e.state_key.as_deref() == Some(""));
    let members: Vec<&PersistedEvent> = state.iter().filter(|e| e.event_type == "m.room.member").collect();
    let count = |m: &str| members.iter().filter(|e| e.membership.as_deref() == Some(m)).count();
    let heroes: Vec<Value> = members
        .iter()
        .filter(|e| matches!(e.membership.as_deref(), Some("join" | "invite")))
        .filter(|e| e.state_key.as_deref() != Some(d.user_id.as_str()))
        .take(MAX_HEROES)
        .map(|e| {
            let c = content(e);
            let mut h = json!({ "user_id": e.state_key });
            if let Some(n) = c.get("displayname").and_then(Value::as_str) {
                h["displayname"] = json!(n);
            }
            if let Some(a) = c.get("avatar_url").and_then(Value::as_str) {
                h["avatar_url"] = json!(a);
            }
            h
        })
        .collect();
    let name = of("m.room.name")
        .and_then(|e| content(e).get("name").and_then(Value::as_str).map(str::to_owned))
        .filter(|n| !n.is_empty())
        .or_else(|| {
            let names: Vec<&str> = heroes
                .iter()
                .filter_map(|h| h.get("displayname").or_else(|| h.get("user_id")).and_then(Value::as_str))
                .collect();
            (!names.is_empty()).then(|| names.join(", "))
        });

    let mut out = json!({
        "bump_stamp": d.bump.unwrap_or(0),
        "joined_count": count("join"),
        "invited_count": count("invite"),
        "heroes": heroes,
    });
    if let Some(n) = name {
        out["name"] = json!(n);
    }
    if let Some(url) =
        of("m.room.avatar").and_then(|e| content(e).get("url").and_then(Value::as_str).map(str::to_owned))
    {
        out["avatar"] = json!(url);
    }
    if d.initial {
        out["initial"] = json!(true);
    }
    if dms.contains(d.room_id) {
        out["is_dm"] = json!(true);
    }
    if d.membership.membership == "join" {
        let counts = ctx.events.unread_counts(d.user_id, d.room_id, upto).await?;
        out["notification_count"] = json!(counts.notifications);
        out["highlight_count"] = json!(counts.highlights);
    }
    if d.membership.membership == "invite" {
        let invite_state = crate::sync_v3::stripped_room_state(&state, d.user_id, crate::sync_v3::STRIPPED_STATE_TYPES);
        out["invite_state"] = json!(invite_state);
        return Ok(out);
    }

    let lazy = senders(timeline);
    let required_state: Vec<Value> = state
        .iter()
        .filter(|e| {
            let key = e.state_key.as_deref().unwrap_or_default();
            d.details.wants(d.user_id, &lazy, &e.event_type, key)
                && (d.initial
                    || d.since.is_none_or(|s| e.stream_ordering > s)
                    || (e.event_type == "m.room.member" && lazy.contains(key)))
        })
        .map(sync_event)
        .collect();
    out["required_state"] = json!(required_state);
    out["timeline"] = json!(crate::sync_v3::timeline_events(ctx, d.user_id, upto, timeline).await?);
    out["limited"] = json!(limited);
    let live = d.since.map_or(0, |s| timeline.iter().filter(|e| e.stream_ordering > s).count());
    out["num_live"] = json!(live);
    if let Some(first) = timeline.first() {
        out["prev_batch"] = json!(pagination_token(first));
    }
    Ok(out)
}
