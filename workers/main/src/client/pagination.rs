//! Paging through a room's timeline with a `RoomEventFilter`, for `/messages` and `/context`.

use ganglion_core::{FilteredEvent, PageToken, room_event_matches};
use ganglion_http::MatrixError;
use ganglion_storage::PersistedEvent;
use ruma::RoomId;
use ruma::api::client::filter::RoomEventFilter;
use serde_json::Value;

use crate::Rooms;

/// Rows read per query while a filter skips events.
const FILTERED_BATCH: i64 = 200;
/// Rows one request reads at most while a filter skips events; the page then ends early with a
/// token to go on from, as the spec allows.
const MAX_SCANNED: usize = 5_000;

/// The `filter` query parameter: a JSON `RoomEventFilter`.
///
/// # Errors
/// `M_INVALID_PARAM` when it is not JSON or not a filter.
pub(crate) fn parse_filter(filter: Option<&str>) -> Result<RoomEventFilter, MatrixError> {
    let Some(filter) = filter else { return Ok(RoomEventFilter::default()) };
    let value: Value =
        serde_json::from_str(filter).map_err(|e| MatrixError::invalid_param(format!("filter is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(MatrixError::invalid_param("filter must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| MatrixError::invalid_param(format!("Invalid filter: {e}")))
}

/// The `limit` query parameter (a non-negative integer), else the filter's, else `default`, at
/// most `max`.
///
/// # Errors
/// `M_INVALID_PARAM` when it is not a non-negative integer.
pub(crate) fn parse_limit(
    limit: Option<&str>,
    filter: &RoomEventFilter,
    default: i64,
    max: i64,
) -> Result<i64, MatrixError> {
    let limit = match limit {
        Some(l) => {
            l.parse::<i64>().ok().filter(|l| *l >= 0).ok_or_else(|| MatrixError::invalid_param("Invalid limit"))?
        }
        None => filter.limit.map_or(default, |l| i64::try_from(u64::from(l)).unwrap_or(max)),
    };
    Ok(limit.min(max))
}

/// A token from a query parameter.
///
/// # Errors
/// `M_INVALID_PARAM` naming the parameter when it is not a token of ours.
pub(crate) fn parse_token(token: &str, name: &str) -> Result<PageToken, MatrixError> {
    PageToken::parse(token).ok_or_else(|| MatrixError::invalid_param(format!("Invalid {name} token")))
}

/// One page of a room's timeline.
#[derive(Debug)]
pub(crate) struct Page {
    /// The events that passed the filter, in the direction paged.
    pub(crate) events: Vec<PersistedEvent>,
    /// Where the next page starts; `None` when the room (or `to`) is reached.
    pub(crate) next: Option<PageToken>,
}

/// Up to `limit` events of `room_id` from `from` (see [`PageToken`]), at or below `upto`, that
/// pass `filter`, stopping at `to`.
///
/// # Errors
/// On storage failure.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn page(
    rooms: &Rooms,
    room_id: &RoomId,
    from: PageToken,
    to: Option<PageToken>,
    backwards: bool,
    upto: i64,
    limit: i64,
    filter: &RoomEventFilter,
) -> Result<Page, MatrixError> {
    let filtered = !is_empty(filter);
    let batch = if filtered { FILTERED_BATCH.max(limit) } else { limit };
    let mut events = Vec::new();
    let mut cursor = from;
    let mut scanned = 0;
    while (events.len() as i64) < limit {
        let rows = rooms.events.room_messages(room_id, cursor, backwards, upto, batch).await?;
        let full = rows.len() as i64 == batch;
        for e in rows {
            // `to` names a gap: paging back stops at the events it covers, forwards after them.
            if to.is_some_and(|to| to.covers(e.depth, e.stream_ordering) == backwards) {
                return Ok(Page { events, next: None });
            }
            scanned += 1;
            cursor = if backwards {
                PageToken::before(e.depth, e.stream_ordering)
            } else {
                PageToken::after(e.depth, e.stream_ordering)
            };
            if !filtered || passes(filter, &e) {
                events.push(e);
                if events.len() as i64 == limit {
                    return Ok(Page { events, next: Some(cursor) });
                }
            }
        }
        if !full {
            return Ok(Page { events, next: None });
        }
        if scanned >= MAX_SCANNED {
            break;
        }
    }
    Ok(Page { events, next: (limit > 0).then_some(cursor) })
}

fn is_empty(filter: &RoomEventFilter) -> bool {
    filter.types.is_none()
        && filter.not_types.is_empty()
        && filter.senders.is_none()
        && filter.not_senders.is_empty()
        && filter.rooms.is_none()
        && filter.not_rooms.is_empty()
        && filter.url_filter.is_none()
}

fn passes(filter: &RoomEventFilter, e: &PersistedEvent) -> bool {
    let content = if filter.url_filter.is_some() {
        serde_json::from_str::<Value>(&e.json).ok().and_then(|mut v| v.get_mut("content").map(Value::take))
    } else {
        None
    };
    let content = content.unwrap_or(Value::Null);
    room_event_matches(
        filter,
        FilteredEvent {
            room_id: e.room_id.as_str(),
            event_type: &e.event_type,
            sender: e.sender.as_str(),
            content: &content,
        },
    )
}

/// With lazy-loading, the member events of the senders of `events`, as of the first of them
/// (what the spec's `state` of `/messages` carries so a client can show who sent what).
///
/// # Errors
/// On storage failure.
pub(crate) async fn lazy_members(
    rooms: &Rooms,
    room_id: &RoomId,
    filter: &RoomEventFilter,
    events: &[PersistedEvent],
) -> Result<Vec<PersistedEvent>, MatrixError> {
    let Some(first) = events.first() else { return Ok(Vec::new()) };
    if filter.lazy_load_options.is_disabled() {
        return Ok(Vec::new());
    }
    let mut senders: Vec<&str> = events.iter().map(|e| e.sender.as_str()).collect();
    senders.sort_unstable();
    senders.dedup();
    Ok(rooms.events.members_at(room_id, first.stream_ordering, &senders).await?)
}

/// The newest position a reader who sees up to `upto` may see: the `start` of a page read back
/// from the end, so paging forwards from it later returns what came since.
pub(crate) fn newest_visible(rooms: &Rooms, upto: i64) -> PageToken {
    PageToken::Stream(rooms.writer.position().min(upto))
}

/// The events around `event` (`/context`, search results' context): up to `before` older and
/// `after` newer ones that pass `filter`, with the tokens to page on from either side.
#[derive(Debug)]
pub(crate) struct Around {
    /// Older events, newest first.
    pub(crate) before: Vec<PersistedEvent>,
    /// Newer events, oldest first.
    pub(crate) after: Vec<PersistedEvent>,
    /// Paging back from here continues before `before`.
    pub(crate) start: PageToken,
    /// Paging forwards from here continues after `after`.
    pub(crate) end: PageToken,
}

/// See [`Around`].
///
/// # Errors
/// On storage failure.
pub(crate) async fn around(
    rooms: &Rooms,
    event: &PersistedEvent,
    (before, after): (i64, i64),
    upto: i64,
    filter: &RoomEventFilter,
) -> Result<Around, MatrixError> {
    let (depth, stream) = (event.depth, event.stream_ordering);
    let room = &event.room_id;
    let older = page(rooms, room, PageToken::before(depth, stream), None, true, upto, before, filter).await?;
    let newer = page(rooms, room, PageToken::after(depth, stream), None, false, upto, after, filter).await?;
    let start = older.next.unwrap_or_else(|| {
        older.events.last().map_or(PageToken::before(depth, stream), |e| PageToken::before(e.depth, e.stream_ordering))
    });
    let end = newer.next.unwrap_or_else(|| {
        newer.events.last().map_or(PageToken::after(depth, stream), |e| PageToken::after(e.depth, e.stream_ordering))
    });
    Ok(Around { before: older.events, after: newer.events, start, end })
}
