//! `GET /_matrix/client/v3/sync`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use ganglion_core::{client_event, strip_to_sync_format};
use ganglion_http::{AuthUser, MatrixError};
use ganglion_storage::PersistedEvent;
use ruma::{OwnedRoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::{SyncContext, SyncToken};

#[derive(Debug, Deserialize)]
pub(crate) struct SyncQuery {
    since: Option<String>,
    timeout: Option<String>,
    full_state: Option<String>,
    filter: Option<String>,
    set_presence: Option<String>,
    use_state_after: Option<String>,
}

/// Timeline events per room when the filter does not say.
const DEFAULT_TIMELINE_LIMIT: usize = 10;
/// How many events one incremental sync reads across all rooms before falling back to per-room reads.
const INCREMENTAL_SCAN_CAP: i64 = 5000;

/// The filter of a request: inline JSON, or the ID of one stored with the filter API.
async fn load_filter(ctx: &SyncContext, user: &UserId, filter: Option<&str>) -> Result<Value, MatrixError> {
    let Some(f) = filter else { return Ok(json!({})) };
    if f.trim_start().starts_with('{') {
        return serde_json::from_str(f).map_err(|_| MatrixError::invalid_param("filter is not valid JSON"));
    }
    let stored =
        ctx.users.filter(user, f).await?.ok_or_else(|| MatrixError::invalid_param(format!("No filter {f}")))?;
    serde_json::from_str(&stored).map_err(MatrixError::internal)
}

/// `room.timeline.limit` of a filter.
fn timeline_limit(filter: &Value) -> Result<usize, MatrixError> {
    match filter.pointer("/room/timeline/limit") {
        None | Some(Value::Null) => Ok(DEFAULT_TIMELINE_LIMIT),
        Some(l) => l
            .as_u64()
            .map(|l| l.clamp(1, 1000) as usize)
            .ok_or_else(|| MatrixError::invalid_param("filter.room.timeline.limit must be a positive integer")),
    }
}

/// `room.include_leave` of a filter (left rooms on an initial sync).
fn include_leave(filter: &Value) -> bool {
    filter.pointer("/room/include_leave").and_then(Value::as_bool).unwrap_or(false)
}

/// What one sync computes, from its query (or from a legacy endpoint).
pub(crate) struct SyncParams {
    pub(crate) since: Option<SyncToken>,
    pub(crate) timeout: Duration,
    pub(crate) full_state: bool,
    pub(crate) filter: Value,
    pub(crate) state_after: bool,
    /// For `/events` and `/initialSync`: no to-device messages or device lists (those
    /// endpoints do not carry them), so nothing is acknowledged and they never end a long-poll.
    pub(crate) legacy: bool,
}

/// `GET /_matrix/client/v3/sync`: initial, incremental and long-polling sync.
pub(crate) async fn sync(
    State(ctx): State<SyncContext>,
    user: AuthUser,
    Query(q): Query<SyncQuery>,
) -> Result<Json<Value>, MatrixError> {
    let timeout = match q.timeout.as_deref() {
        None => Duration::ZERO,
        Some(t) => Duration::from_millis(
            t.parse::<u64>().map_err(|_| MatrixError::invalid_param("timeout must be a number of milliseconds"))?,
        ),
    };
    let full_state = match q.full_state.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(MatrixError::invalid_param("full_state must be true or false")),
    };
    let presence_state = match q.set_presence.as_deref() {
        None => "online",
        Some(p @ ("online" | "offline" | "unavailable")) => p,
        Some(_) => return Err(MatrixError::invalid_param("set_presence must be online, offline or unavailable")),
    };
    report_presence(&ctx, &user, presence_state);
    let state_after = match q.use_state_after.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(MatrixError::invalid_param("use_state_after must be true or false")),
    };
    let filter = load_filter(&ctx, &user.user_id, q.filter.as_deref()).await?;
    let since = q
        .since
        .as_deref()
        .map(|s| s.parse::<SyncToken>().map_err(|_| MatrixError::invalid_param("Invalid since token")))
        .transpose()?;
    let params = SyncParams { since, timeout, full_state, filter, state_after, legacy: false };
    Ok(Json(compute(&ctx, &user, params).await?))
}

/// One sync's answer: waits up to `timeout` for news after `since` (none: an initial sync).
pub(crate) async fn compute(ctx: &SyncContext, user: &AuthUser, p: SyncParams) -> Result<Value, MatrixError> {
    let SyncParams { since, timeout, full_state, filter, state_after, legacy } = p;
    let ctx = ctx.clone();
    let user = user.clone();
    let timeout = timeout.min(ctx.max_timeout);
    let opts = RoomsOptions {
        full_state,
        limit: timeline_limit(&filter)?,
        include_leave: include_leave(&filter),
        state_after,
    };
    let deadline = Instant::now() + timeout;
    let mut positions = ctx.positions.clone();
    if since.is_none() {
        positions.catch_up_with_database(&ctx.events).await?;
    }
    // A token from an instance further along: wait until this one has caught up, so the client never
    // sees time run backwards.
    if let Some(s) = since {
        let catch_up_deadline = deadline.max(Instant::now() + Duration::from_secs(10));
        loop {
            let now = positions.current();
            if now.covers(&s) {
                break;
            }
            if !matches!(tokio::time::timeout_at(catch_up_deadline, positions.changed()).await, Ok(Ok(()))) {
                break;
            }
        }
        // The client has everything up to `since` from its to-device inbox: main may delete it.
        if s.to_device > 0 && !legacy {
            acknowledge_to_device(&ctx, &user, s.to_device);
        }
    }
    // What the last pass found when it found nothing: a stream that has not moved since cannot
    // have anything new, so a long-poll woken by one stream reruns only that stream's sections.
    // An incremental sync has, by definition, nothing to find in rooms up to its own token.
    let mut quiet: Option<(SyncToken, Value)> = since.filter(|_| !full_state).map(|s| (s, empty_rooms()));
    loop {
        let now = positions.current();
        let mut next = match since {
            Some(s) => s.max(now),
            None => now,
        };
        let moved = |pos: fn(&SyncToken) -> u64| quiet.as_ref().is_none_or(|(q, _)| pos(&next) > pos(q));
        let (mut rooms, mut has_data, membership_quiet) = match &quiet {
            Some((_, rooms)) if !moved(|t| t.events) => (rooms.clone(), false, true),
            _ => build_rooms(&ctx, &user.user_id, since, next.events, opts).await?,
        };
        let global = account_data(&ctx, &user.user_id, since, next, full_state, &mut rooms, &mut has_data).await?;
        ephemeral(&ctx, &user.user_id, since, next, full_state, &mut rooms, &mut has_data).await?;
        let per_thread = filter.pointer("/room/timeline/unread_thread_notifications").and_then(Value::as_bool);
        unread_counts(&ctx, &user.user_id, next, per_thread.unwrap_or(false), &mut rooms).await?;
        let incremental = since.is_some() && !full_state;
        room_summaries_and_lazy_members(&ctx, &user.user_id, &filter, next, state_after, incremental, &mut rooms)
            .await?;
        let device_lists = DeviceListsWork {
            device_lists_moved: moved(|t| t.device_lists),
            membership_moved: moved(|t| t.events) && !membership_quiet,
        };
        let mut e2ee = if legacy {
            json!({})
        } else {
            e2ee_sections(&ctx, &user, since, &mut next, device_lists, &mut has_data).await?
        };
        let presence = presence_events(&ctx, &user.user_id, since, next, &mut has_data).await?;
        let answer = since.is_none() || full_state || has_data || Instant::now() >= deadline;
        if !answer {
            quiet = Some((next, rooms.clone()));
            let waiting_in = waiting_rooms(&ctx, &user.user_id, next.events).await?;
            if positions.wait_for_news(&ctx.waiters, &user.user_id, waiting_in, next.events, deadline).await {
                continue;
            }
            // Timed out, or the followers stopped (shutdown): answer with what we have.
        }
        if !legacy {
            key_counts(&ctx, &user, &mut e2ee).await?;
        }
        return Ok(finish(response(rooms, global, e2ee, presence, next), &filter, state_after));
    }
}

/// The rooms whose events a waiting sync of `user` wants to be woken by: every room they have
/// a membership of. Events about their own membership wake them anyway; rooms they left or were
/// banned from are included because state resolution can change a membership without an event
/// about that user.
pub(crate) async fn waiting_rooms(ctx: &SyncContext, user: &UserId, upto: u64) -> Result<Vec<String>, MatrixError> {
    let (memberships, _) = ctx.recent.memberships(&ctx.events, user, upto as i64).await?;
    Ok(memberships.iter().map(|m| m.room_id.to_string()).collect())
}

/// Tells main, in the background, the presence this sync implies (`set_presence`, online by
/// default); main records it only when it changes or activity goes stale, so a report this
/// worker made in the last half minute with the same state is not repeated.
fn report_presence(ctx: &SyncContext, user: &AuthUser, state: &str) {
    if !ctx.presence_reports.should_report(user.user_id.as_str(), state) {
        return;
    }
    let main = ctx.main.clone();
    let reports = ctx.presence_reports.clone();
    let user_id = user.user_id.to_string();
    let req = ganglion_rpc::v1::SetPresenceRequest { user_id: user_id.clone(), presence: state.to_owned() };
    tokio::spawn(async move {
        if let Err(e) = main.set_presence(req, "").await {
            tracing::debug!(error = %e, "could not report presence");
            reports.forget(&user_id);
        }
    });
}

/// Presence of users sharing a room with this one that changed since the token (all known ones
/// on an initial sync), as `m.presence` events.
async fn presence_events(
    ctx: &SyncContext,
    user_id: &UserId,
    since: Option<SyncToken>,
    next: SyncToken,
    has_data: &mut bool,
) -> Result<Vec<Value>, MatrixError> {
    let after = since.map_or(0, |s| s.presence as i64);
    if since.is_some() && next.presence as i64 <= after {
        return Ok(Vec::new());
    }
    let sharing = ctx.events.users_sharing_rooms(user_id).await?;
    let changes = ctx.presence.changed_among(&sharing, after, next.presence as i64).await?;
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let events: Vec<Value> = changes
        .iter()
        .map(|p| {
            let ago = (now - p.last_active_ts).max(0);
            let mut content = json!({
                "presence": p.state,
                "last_active_ago": ago,
                "currently_active": p.state == "online" && ago < 120_000,
            });
            if let Some(m) = &p.status_msg {
                content["status_msg"] = json!(m);
            }
            json!({ "type": "m.presence", "sender": p.user_id, "content": content })
        })
        .collect();
    // A user's own presence changing is not news for their own long-poll.
    if events.iter().any(|e| e["sender"] != user_id.as_str()) {
        *has_data = true;
    }
    Ok(events)
}

/// `state.lazy_load_members` of a filter.
fn lazy_load_members(filter: &Value) -> bool {
    filter.pointer("/room/state/lazy_load_members").and_then(Value::as_bool).unwrap_or(false)
}

/// For every joined room in the response: the `summary` (member counts, and heroes when the room
/// has no name or canonical alias), and, with lazy-loaded members, state trimmed to the members
/// who sent something in the timeline (plus the user), with any of those missing added.
///
/// On an incremental sync the summary is sent only when membership may have changed (member
/// events in the timeline or state): the spec lets a server leave out counts and heroes that did
/// not change, and that spares reading the room's state for every new message.
async fn room_summaries_and_lazy_members(
    ctx: &SyncContext,
    user_id: &UserId,
    filter: &Value,
    next: SyncToken,
    state_after: bool,
    incremental: bool,
    rooms: &mut Value,
) -> Result<(), MatrixError> {
    let lazy = lazy_load_members(filter);
    let Some(join) = rooms["join"].as_object_mut() else { return Ok(()) };
    for (room_id, room) in join.iter_mut() {
        let Ok(room_id) = <&ruma::RoomId>::try_from(room_id.as_str()) else { continue };
        let has_members = |section: &str| {
            room[section]["events"].as_array().is_some_and(|evs| evs.iter().any(|e| e["type"] == "m.room.member"))
        };
        let membership_may_have_changed = !incremental || has_members("timeline") || has_members("state");
        let mut wanted: std::collections::BTreeSet<String> = room["timeline"]["events"]
            .as_array()
            .map(|evs| evs.iter().filter_map(|e| e["sender"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        wanted.insert(user_id.to_string());
        let state = if membership_may_have_changed {
            ctx.events.state_at(room_id, next.events as i64).await?
        } else if lazy {
            let users: Vec<&str> = wanted.iter().map(String::as_str).collect();
            ctx.recent.members_at(&ctx.events, room_id, next.events as i64, &users).await?
        } else {
            continue;
        };
        let members: Vec<&PersistedEvent> = state.iter().filter(|e| e.event_type == "m.room.member").collect();
        if membership_may_have_changed {
            let count = |m: &str| members.iter().filter(|e| e.membership.as_deref() == Some(m)).count();
            let mut summary = json!({
                "m.joined_member_count": count("join"),
                "m.invited_member_count": count("invite"),
            });
            let named = state.iter().any(|e| {
                (e.event_type == "m.room.name" || e.event_type == "m.room.canonical_alias")
                    && e.state_key.as_deref() == Some("")
            });
            if !named {
                let mut heroes: Vec<&str> = members
                    .iter()
                    .filter(|e| matches!(e.membership.as_deref(), Some("join" | "invite")))
                    .filter_map(|e| e.state_key.as_deref())
                    .filter(|u| *u != user_id.as_str())
                    .collect();
                heroes.sort_unstable();
                heroes.truncate(5);
                summary["m.heroes"] = json!(heroes);
            }
            room["summary"] = summary;
        }
        if !lazy {
            continue;
        }
        // `state` need not repeat members the timeline carries; `state_after` is complete.
        let in_timeline: HashSet<String> = room["timeline"]["events"]
            .as_array()
            .filter(|_| !state_after)
            .map(|evs| {
                evs.iter()
                    .filter(|e| e["type"] == "m.room.member")
                    .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let Some(list) = room["state"]["events"].as_array_mut() else { continue };
        list.retain(|e| e["type"] != "m.room.member" || e["state_key"].as_str().is_some_and(|k| wanted.contains(k)));
        let present: HashSet<String> = list
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
            .collect();
        for m in &members {
            let Some(key) = m.state_key.as_deref() else { continue };
            if wanted.contains(key) && !present.contains(key) && !in_timeline.contains(key) {
                list.push(sync_event(m));
            }
        }
    }
    Ok(())
}

/// Fills `unread_notifications` of every joined room in the response: notifying events no read
/// receipt covers, as evaluated against the user's push rules when each was sent. With
/// `per_thread` (the filter's `unread_thread_notifications`), the main timeline's counts go in
/// `unread_notifications` and each thread's in `unread_thread_notifications`.
async fn unread_counts(
    ctx: &SyncContext,
    user_id: &UserId,
    next: SyncToken,
    per_thread: bool,
    rooms: &mut Value,
) -> Result<(), MatrixError> {
    let Some(join) = rooms["join"].as_object_mut() else { return Ok(()) };
    let counts_json = |c: &ganglion_storage::UnreadCounts| json!({ "notification_count": c.notifications, "highlight_count": c.highlights });
    for (room_id, room) in join.iter_mut() {
        let Ok(room_id) = <&ruma::RoomId>::try_from(room_id.as_str()) else { continue };
        let threads =
            ctx.unread.counts(&ctx.events, user_id, room_id, next.events as i64, next.receipts as i64).await?;
        let mut main = ganglion_storage::UnreadCounts::default();
        let mut by_thread = serde_json::Map::new();
        for (thread, c) in &threads {
            if per_thread && !thread.is_empty() {
                by_thread.insert(thread.clone(), counts_json(c));
            } else {
                main.notifications += c.notifications;
                main.highlights += c.highlights;
            }
        }
        room["unread_notifications"] = counts_json(&main);
        if per_thread {
            room["unread_thread_notifications"] = Value::Object(by_thread);
        }
    }
    Ok(())
}

/// Receipts and typing of the user's joined rooms that changed since the token (everything
/// current on an initial sync), as `m.receipt` and `m.typing` ephemeral events.
async fn ephemeral(
    ctx: &SyncContext,
    user_id: &UserId,
    since: Option<SyncToken>,
    next: SyncToken,
    full_state: bool,
    rooms: &mut Value,
    has_data: &mut bool,
) -> Result<(), MatrixError> {
    if let Some(s) = since
        && !full_state
        && next.receipts <= s.receipts
        && next.typing <= s.typing
    {
        // No receipt or typing change anywhere since the token.
        return Ok(());
    }
    let (memberships, _) = ctx.recent.memberships(&ctx.events, user_id, next.events as i64).await?;
    let joined: Vec<String> = memberships
        .iter()
        .filter(|m| m.membership == "join" && m.stream_ordering <= next.events as i64)
        .map(|m| m.room_id.to_string())
        .collect();
    let (r_after, y_after) = match since {
        Some(s) if !full_state => (s.receipts as i64, s.typing as i64),
        _ => (0, 0),
    };
    let mut per_room: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    if since.is_none() || next.receipts as i64 > r_after {
        let receipts = ctx.ephemeral.receipts_in_rooms(&joined, r_after, next.receipts as i64).await?;
        let mut content: std::collections::BTreeMap<String, Value> = Default::default();
        for r in receipts.iter().filter(|r| ganglion_storage::EphemeralStore::visible_to(r, user_id)) {
            let room = content.entry(r.room_id.clone()).or_insert_with(|| json!({}));
            let mut data = json!({ "ts": r.ts });
            if !r.thread_id.is_empty() {
                data["thread_id"] = json!(r.thread_id);
            }
            room[r.event_id.as_str()][r.receipt_type.as_str()][r.user_id.as_str()] = data;
        }
        for (room, c) in content {
            per_room.entry(room).or_default().push(json!({ "type": "m.receipt", "content": c }));
        }
    }
    if since.is_none() || next.typing as i64 > y_after {
        for (room, users) in ctx.ephemeral.typing_in_rooms(&joined, y_after, next.typing as i64).await? {
            if since.is_none() && users.is_empty() {
                continue;
            }
            per_room.entry(room).or_default().push(json!({ "type": "m.typing", "content": { "user_ids": users } }));
        }
    }
    for (room_id, events) in per_room {
        let room = &mut rooms["join"][room_id.as_str()];
        if room.is_null() {
            *room = joined_room(json!({ "events": [], "limited": false }), Vec::new());
        }
        if let Some(list) = room["ephemeral"]["events"].as_array_mut() {
            list.extend(events);
        }
        *has_data = true;
    }
    Ok(())
}

/// Asks main, in the background, to delete to-device messages the client has acknowledged.
pub(crate) fn acknowledge_to_device(ctx: &SyncContext, user: &AuthUser, upto: u64) {
    let main = ctx.main.clone();
    let req = ganglion_rpc::v1::AckToDeviceRequest {
        user_id: user.user_id.to_string(),
        device_id: user.device_str().to_owned(),
        upto,
    };
    tokio::spawn(async move {
        // Best effort: unacknowledged messages are simply delivered again.
        if let Err(e) = main.ack_to_device(req, "").await {
            tracing::debug!(error = %e, "could not acknowledge to-device messages");
        }
    });
}

/// How many to-device messages one sync delivers; the rest wait for the next.
const TO_DEVICE_LIMIT: i64 = 100;

/// The end-to-end encryption parts of a sync response: to-device messages for this device (up
/// to a limit; `next.to_device` then stops at the last one delivered), device-list changes of
/// users sharing a room, and the device's key counts.
/// Which parts of the device-list computation can have news this pass.
#[derive(Debug, Clone, Copy)]
struct DeviceListsWork {
    /// The `device_lists` stream moved (since the last empty pass).
    device_lists_moved: bool,
    /// Membership may have changed in the user's rooms.
    membership_moved: bool,
}

async fn e2ee_sections(
    ctx: &SyncContext,
    user: &AuthUser,
    since: Option<SyncToken>,
    next: &mut SyncToken,
    work: DeviceListsWork,
    has_data: &mut bool,
) -> Result<Value, MatrixError> {
    let device = user.device_str();
    // With no new to-device row anywhere since the token, every message up to it was acknowledged
    // by this very request: there is nothing to send.
    let messages = match since {
        Some(s) if next.to_device <= s.to_device => Vec::new(),
        _ => ctx.e2ee.to_device_for(&user.user_id, device, next.to_device as i64, TO_DEVICE_LIMIT).await?,
    };
    // Messages at or below `since` were delivered before and are being deleted; send again only
    // those the client has not acknowledged.
    let after = since.map_or(0, |s| s.to_device as i64);
    let fresh: Vec<_> = messages.iter().filter(|m| m.position > after).collect();
    if messages.len() as i64 >= TO_DEVICE_LIMIT
        && let Some(last) = messages.last()
    {
        next.to_device = last.position as u64;
    }
    let to_device: Vec<Value> = fresh
        .iter()
        .map(|m| json!({ "sender": m.sender, "type": m.event_type, "content": serde_json::from_str::<Value>(&m.content).unwrap_or_default() }))
        .collect();
    let (changed, left) = match since {
        Some(s) if work.device_lists_moved || work.membership_moved => {
            // Without membership news the events window is left out (an empty one).
            let upto = if work.membership_moved { *next } else { SyncToken { events: s.events, ..*next } };
            crate::device_list_changes(ctx, &user.user_id, &s, &upto).await?
        }
        _ => (Vec::new(), Vec::new()),
    };
    if !to_device.is_empty() || !changed.is_empty() || !left.is_empty() {
        *has_data = true;
    }
    Ok(json!({
        "to_device": { "events": to_device },
        "device_lists": { "changed": changed, "left": left },
    }))
}

/// The device's one-time key counts and unused fallback key types, which every response carries
/// (read once, when the response is ready).
async fn key_counts(ctx: &SyncContext, user: &AuthUser, e2ee: &mut Value) -> Result<(), MatrixError> {
    let (counts, fallback) = ctx.e2ee.key_counts(&user.user_id, user.device_str()).await?;
    let counts: serde_json::Map<String, Value> = counts.into_iter().map(|(a, n)| (a, json!(n))).collect();
    e2ee["device_one_time_keys_count"] = Value::Object(counts);
    e2ee["device_unused_fallback_key_types"] = json!(fallback);
    Ok(())
}

/// Account data changed since the token: global entries are returned (for the top level), room
/// entries go into `rooms.join.{room}.account_data` (adding the room when only that changed).
/// An initial sync with no stored push rules gets the spec's defaults.
async fn account_data(
    ctx: &SyncContext,
    user_id: &UserId,
    since: Option<SyncToken>,
    next: SyncToken,
    full_state: bool,
    rooms: &mut Value,
    has_data: &mut bool,
) -> Result<Vec<Value>, MatrixError> {
    let after = if full_state { 0 } else { since.map_or(0, |s| s.account_data as i64) };
    if since.is_some() && !full_state && next.account_data as i64 <= after {
        // Nothing was written to anyone's account data since the token.
        return Ok(Vec::new());
    }
    let entries = ctx.account_data.changed_for_user(user_id, after, next.account_data as i64).await?;
    let mut global = Vec::new();
    for e in entries {
        let event =
            json!({ "type": e.data_type, "content": serde_json::from_str::<Value>(&e.content).unwrap_or_default() });
        if e.room_id.is_empty() {
            global.push(event);
            continue;
        }
        // Only rooms the user is in; account data of other rooms waits until they join.
        if ctx
            .events
            .membership(<&ruma::RoomId>::try_from(e.room_id.as_str()).map_err(MatrixError::internal)?, user_id)
            .await?
            .as_deref()
            != Some("join")
        {
            continue;
        }
        let room = &mut rooms["join"][e.room_id.as_str()];
        if room.is_null() {
            *room = joined_room(json!({ "events": [], "limited": false }), Vec::new());
        }
        if let Some(list) = room["account_data"]["events"].as_array_mut() {
            list.push(event);
        }
        *has_data = true;
    }
    if !global.is_empty() {
        *has_data = true;
    }
    if since.is_none() && !global.iter().any(|e| e["type"] == "m.push_rules") {
        global.push(
            json!({ "type": "m.push_rules", "content": { "global": ganglion_core::push_rules::server_default(user_id) } }),
        );
    }
    Ok(global)
}

fn response(rooms: Value, account_data: Vec<Value>, e2ee: Value, presence: Vec<Value>, next: SyncToken) -> Value {
    let mut body = json!({
        "next_batch": next.to_string(),
        "rooms": rooms,
        "account_data": { "events": account_data },
        "presence": { "events": presence },
    });
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), e2ee) {
        b.extend(e);
    }
    body
}

pub(crate) fn sync_event(e: &PersistedEvent) -> Value {
    strip_to_sync_format(client_event(&e.json, e.event_id.as_str(), e.room_id.as_str(), None))
}

pub(crate) use ganglion_core::STRIPPED_STATE_TYPES;

/// Stripped state of `types` from `state`, plus `user`'s member event, which goes last. An
/// invite from another server into a room not known here carries the inviter's view of the
/// room in `unsigned.invite_room_state`: that fills in what the state here lacks.
pub(crate) fn stripped_room_state(state: &[PersistedEvent], user: &UserId, types: &[&str]) -> Vec<Value> {
    let own = |e: &PersistedEvent| e.event_type == "m.room.member" && e.state_key.as_deref() == Some(user.as_str());
    let mut out: Vec<Value> =
        state.iter().filter(|e| types.contains(&e.event_type.as_str()) || own(e)).filter_map(stripped).collect();
    if let Some(member) = state.iter().find(|e| own(e))
        && let Ok(full) = serde_json::from_str::<Value>(&member.json)
        && let Some(carried) = full["unsigned"]["invite_room_state"].as_array()
    {
        for e in carried {
            let have = out.iter().any(|o| o["type"] == e["type"] && o["state_key"] == e["state_key"]);
            if !have && e["type"].is_string() && e["type"] != "m.room.member" {
                out.push(ganglion_core::stripped_state_event(e));
            }
        }
    }
    out.sort_by_key(|v| v["type"] == "m.room.member");
    out
}

pub(crate) fn stripped(e: &PersistedEvent) -> Option<Value> {
    let full: Value = serde_json::from_str(&e.json).ok()?;
    Some(ganglion_core::stripped_state_event(&full))
}

/// A timeline's `prev_batch`: the gap before its first event, so `/messages` paging back from it
/// returns the events before the timeline (see [`ganglion_core::PageToken`]).
pub(crate) fn pagination_token(first: &PersistedEvent) -> String {
    ganglion_core::PageToken::before(first.depth, first.stream_ordering).to_string()
}

/// How `rooms` is built, from the request and its filter.
#[derive(Debug, Clone, Copy)]
struct RoomsOptions {
    full_state: bool,
    /// Timeline events per room.
    limit: usize,
    /// Left rooms on an initial sync too.
    include_leave: bool,
    /// `use_state_after`: room state as of the end of the timeline (`state_after`) rather than
    /// its start (`state`).
    state_after: bool,
}

/// The response with the filter applied; with `use_state_after`, rooms' `state` becomes
/// `state_after`.
fn finish(mut body: Value, filter: &Value, state_after: bool) -> Value {
    crate::filters::apply(filter, &mut body);
    if state_after {
        for section in ["join", "leave"] {
            if let Some(rooms) = body["rooms"][section].as_object_mut() {
                for room in rooms.values_mut() {
                    if let Some(state) = room.as_object_mut().and_then(|r| r.remove("state")) {
                        room["state_after"] = state;
                    }
                }
            }
        }
    }
    body
}

/// The latest event per `(type, state_key)` among the state events of `events` (oldest first).
fn latest_state(events: &[PersistedEvent]) -> Vec<&PersistedEvent> {
    let mut latest: HashMap<(&str, &str), &PersistedEvent> = HashMap::new();
    for e in events {
        if let Some(key) = e.state_key.as_deref() {
            latest.insert((e.event_type.as_str(), key), e);
        }
    }
    let mut out: Vec<&PersistedEvent> = latest.into_values().collect();
    out.sort_by_key(|e| e.stream_ordering);
    out
}

/// Builds `rooms` and says whether anything is in it.
async fn build_rooms(
    ctx: &SyncContext,
    user_id: &UserId,
    since: Option<SyncToken>,
    upto: u64,
    opts: RoomsOptions,
) -> Result<(Value, bool, bool), MatrixError> {
    let RoomsOptions { full_state, limit, include_leave, state_after } = opts;
    let upto_i = upto as i64;
    let since_i = since.map(|s| s.events as i64);
    let (mut memberships, mut forgotten) = ctx.recent.memberships(&ctx.events, user_id, upto_i).await?;
    // Forgetting a room writes no event, so the cache cannot see it: a leave about to be sent is
    // checked against the database.
    if memberships.iter().any(|m| {
        matches!(m.membership.as_str(), "leave" | "ban")
            && since_i.is_none_or(|s| m.stream_ordering > s)
            && m.stream_ordering <= upto_i
    }) {
        (memberships, forgotten) = ctx.recent.memberships_from_database(&ctx.events, user_id, upto_i).await?;
    }
    let mut join = Map::new();
    let mut invite = Map::new();
    let mut leave = Map::new();
    let mut knock = Map::new();

    // Rooms the user was already joined to at `since` but whose member event changed since (a
    // profile change is a join → join event): the client knows them, so they are not sent whole.
    let rejoined_in_place: HashSet<OwnedRoomId> = match since_i {
        Some(s)
            if !full_state
                && memberships
                    .iter()
                    .any(|m| m.membership == "join" && m.stream_ordering > s && m.stream_ordering <= upto_i) =>
        {
            ctx.events
                .memberships_at(user_id, s)
                .await?
                .into_iter()
                .filter(|m| m.membership == "join")
                .map(|m| m.room_id)
                .collect()
        }
        _ => HashSet::new(),
    };
    // Rooms the client already knows, whose new events one range query finds.
    let known_joined: Vec<OwnedRoomId> = memberships
        .iter()
        .filter(|m| m.membership == "join" && m.stream_ordering <= upto_i)
        .filter(|m| {
            since_i.is_some_and(|s| m.stream_ordering <= s || rejoined_in_place.contains(&m.room_id)) && !full_state
        })
        .map(|m| m.room_id.clone())
        .collect();
    let mut recent: HashMap<OwnedRoomId, Vec<PersistedEvent>> = HashMap::new();
    let mut scan_capped = false;
    if let (Some(s), false) = (since_i, known_joined.is_empty()) {
        let found = match ctx.recent.events_in_rooms_between(&known_joined, s, upto_i, INCREMENTAL_SCAN_CAP as usize) {
            Some(found) => found,
            None => ctx.events.events_in_rooms_between(&known_joined, s, upto_i, INCREMENTAL_SCAN_CAP).await?,
        };
        scan_capped = found.len() as i64 >= INCREMENTAL_SCAN_CAP;
        for e in found {
            recent.entry(e.room_id.clone()).or_default().push(e);
        }
    }
    // No member event in the user's joined rooms and no change of the user's own memberships:
    // nothing in the window can change who shares a room with them. (Read before the loop below
    // takes the events out of `recent`.)
    let membership_quiet = since_i.is_some_and(|s| memberships.iter().all(|m| m.stream_ordering <= s))
        && !full_state
        && !scan_capped
        && recent.values().flatten().all(|e| e.event_type != "m.room.member");

    for m in memberships.iter() {
        // A membership newer than this instance's position shows up on a later sync.
        if m.stream_ordering > upto_i {
            continue;
        }
        let is_new = since_i.is_none_or(|s| m.stream_ordering > s) || full_state;
        match m.membership.as_str() {
            "join" if is_new && !rejoined_in_place.contains(&m.room_id) => {
                let mut timeline = ctx.events.latest_room_events(&m.room_id, upto_i, limit as i64 + 1).await?;
                let limited = timeline.len() > limit;
                if limited {
                    timeline.remove(0);
                }
                // The state before the timeline starts (the timeline carries the rest), or with
                // `use_state_after` the state at its end.
                let at = if state_after {
                    timeline.last().map_or(upto_i, |e| e.stream_ordering)
                } else {
                    timeline.first().map_or(upto_i, |e| e.stream_ordering - 1)
                };
                let state: Vec<Value> = ctx.events.state_at(&m.room_id, at).await?.iter().map(sync_event).collect();
                let timeline = timeline_json(ctx, user_id, upto_i, &timeline, limited).await?;
                join.insert(m.room_id.to_string(), joined_room(timeline, state));
            }
            "join" => {
                let s = since_i.unwrap_or_default();
                let events = if scan_capped {
                    let mut latest = ctx.events.latest_room_events(&m.room_id, upto_i, limit as i64 + 1).await?;
                    latest.retain(|e| e.stream_ordering > s);
                    latest
                } else {
                    recent.remove(&m.room_id).unwrap_or_default()
                };
                if events.is_empty() {
                    continue;
                }
                let limited = events.len() > limit || (scan_capped && events.len() > limit);
                let split = events.len().saturating_sub(limit);
                let (gap, timeline) = events.split_at(split);
                // State that changed in the part of the gap the client will not see; with
                // `use_state_after`, every state change up to the end of the timeline.
                let changed = if state_after { latest_state(&events) } else { latest_state(gap) };
                let state: Vec<Value> = changed.into_iter().map(sync_event).collect();
                // Relations come after the events they relate to, so every relation a timeline
                // event can have up to `upto` is among this window's events: with none there,
                // nothing is bundled and the relations index need not be read.
                let bundle = scan_capped || events.iter().any(|e| e.json.contains("\"m.relates_to\""));
                let timeline = if bundle {
                    timeline_json(ctx, user_id, upto_i, timeline, limited).await?
                } else {
                    timeline_json_of(
                        timeline.iter().map(|e| client_event(&e.json, e.event_id.as_str(), e.room_id.as_str(), None)),
                        timeline,
                        limited,
                    )
                };
                join.insert(m.room_id.to_string(), joined_room(timeline, state));
            }
            "invite" | "knock" if is_new => {
                let state = ctx.events.current_state_events(&m.room_id).await?;
                let stripped_state = stripped_room_state(&state, user_id, STRIPPED_STATE_TYPES);
                if m.membership == "invite" {
                    invite.insert(m.room_id.to_string(), json!({ "invite_state": { "events": stripped_state } }));
                } else {
                    knock.insert(m.room_id.to_string(), json!({ "knock_state": { "events": stripped_state } }));
                }
            }
            "leave" | "ban"
                if (since_i.is_some_and(|s| m.stream_ordering > s) || (since_i.is_none() && include_leave))
                    && !forgotten.contains(m.room_id.as_str()) =>
            {
                let s = since_i.unwrap_or_default();
                let mut timeline =
                    ctx.events.latest_room_events(&m.room_id, m.stream_ordering, limit as i64 + 1).await?;
                timeline.retain(|e| e.stream_ordering > s);
                let limited = timeline.len() > limit;
                if limited {
                    timeline.remove(0);
                }
                leave.insert(
                    m.room_id.to_string(),
                    json!({
                        "timeline": timeline_json(ctx, user_id, m.stream_ordering, &timeline, limited).await?,
                        "state": { "events": [] },
                        "account_data": { "events": [] },
                    }),
                );
            }
            _ => {}
        }
    }
    let has_data = !(join.is_empty() && invite.is_empty() && leave.is_empty() && knock.is_empty());
    Ok((json!({ "join": join, "invite": invite, "leave": leave, "knock": knock }), has_data, membership_quiet))
}

/// `rooms` with nothing in it.
fn empty_rooms() -> Value {
    json!({ "join": {}, "invite": {}, "leave": {}, "knock": {} })
}

/// Timeline events in sync format, with their bundled aggregations (relations the user may see
/// at `upto`).
pub(crate) async fn timeline_events(
    ctx: &SyncContext,
    user_id: &UserId,
    upto: i64,
    timeline: &[PersistedEvent],
) -> Result<Vec<Value>, MatrixError> {
    let events = ganglion_storage::client_events_with_relations(&ctx.events, user_id, upto, timeline).await?;
    Ok(events.into_iter().map(strip_to_sync_format).collect())
}

async fn timeline_json(
    ctx: &SyncContext,
    user_id: &UserId,
    upto: i64,
    timeline: &[PersistedEvent],
    limited: bool,
) -> Result<Value, MatrixError> {
    let events = ganglion_storage::client_events_with_relations(&ctx.events, user_id, upto, timeline).await?;
    Ok(timeline_json_of(events, timeline, limited))
}

/// A `timeline` section of `timeline`'s events, already in client format.
fn timeline_json_of(
    client_events: impl IntoIterator<Item = Value>,
    timeline: &[PersistedEvent],
    limited: bool,
) -> Value {
    let events: Vec<Value> = client_events.into_iter().map(strip_to_sync_format).collect();
    let mut t = json!({ "events": events, "limited": limited });
    if let Some(first) = timeline.first() {
        t["prev_batch"] = json!(pagination_token(first));
    }
    t
}

fn joined_room(timeline: Value, state: Vec<Value>) -> Value {
    json!({
        "timeline": timeline,
        "state": { "events": state },
        "ephemeral": { "events": [] },
        "account_data": { "events": [] },
        "summary": {},
        "unread_notifications": { "notification_count": 0, "highlight_count": 0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_limit_and_include_leave_come_from_the_filter() {
        assert_eq!(timeline_limit(&json!({})).unwrap(), DEFAULT_TIMELINE_LIMIT);
        assert_eq!(timeline_limit(&json!({"room": {"timeline": {"limit": 3}}})).unwrap(), 3);
        assert_eq!(
            timeline_limit(&json!({"room": {"timeline": {"limit": "x"}}})).unwrap_err().errcode,
            "M_INVALID_PARAM"
        );
        assert!(include_leave(&json!({"room": {"include_leave": true}})));
        assert!(!include_leave(&json!({})));
    }
}
