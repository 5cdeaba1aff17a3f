//! The relations index: which events relate to which (`m.relates_to`), read by `/relations`,
//! `/threads`, bundled aggregations, and `timestamp_to_event`'s look-up by time.
//!
//! Rows are written by [`EventStore::persist`] in the event's transaction (see
//! [`NewEvent::relation`]) and deleted when the event is redacted.

use ruma::{OwnedEventId, OwnedUserId, RoomId, UserId};
use sqlx::Row;

use crate::events::{EVENT_COLUMNS, decode_all, placeholders};
use crate::{Error, EventStore, NewEvent, PersistedEvent, Result};

/// Inserts `ev`'s relation row inside the transaction persisting it.
pub(crate) async fn insert_relation(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ev: &NewEvent,
    parent: &OwnedEventId,
    rel_type: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO event_relations (event_id, room_id, relates_to, rel_type, event_type, sender, stream_ordering)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(ev.event_id.as_str())
    .bind(ev.room_id.as_str())
    .bind(parent.as_str())
    .bind(rel_type)
    .bind(&ev.event_type)
    .bind(ev.sender.as_str())
    .bind(ev.stream_ordering)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What `/relations` asks for.
#[derive(Debug, Clone, Default)]
pub struct RelationFilter<'a> {
    /// Only relations of this type.
    pub rel_type: Option<&'a str>,
    /// Only events of this type.
    pub event_type: Option<&'a str>,
    /// How many levels of relations to follow: 1 is the direct children only.
    pub max_depth: i64,
    /// Newest first (`true`) or oldest first.
    pub backwards: bool,
    /// Only events strictly past this stream position, in the direction of travel.
    pub from: Option<i64>,
    /// Only events up to this stream position (inclusive going backwards, exclusive going forwards).
    pub to: Option<i64>,
    /// Only events at or below this position (what the user may see).
    pub upto: i64,
    /// At most this many.
    pub limit: i64,
}

/// One row of the relations index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationRow {
    /// The child event.
    pub event_id: OwnedEventId,
    /// The event it relates to.
    pub relates_to: OwnedEventId,
    /// `rel_type`.
    pub rel_type: String,
    /// The child's `type`.
    pub event_type: String,
    /// The child's sender.
    pub sender: OwnedUserId,
    /// The child's stream position.
    pub stream_ordering: i64,
}

fn event_id(s: &str) -> Result<OwnedEventId> {
    OwnedEventId::try_from(s).map_err(|e| Error::Decode(format!("event id: {e}")))
}

impl EventStore {
    /// The events relating to `parent` in `room_id`, following relations of relations down to
    /// `filter.max_depth` levels, filtered and paged by stream position.
    ///
    /// # Errors
    /// On database failure.
    pub async fn relations(
        &self,
        room_id: &RoomId,
        parent: &str,
        filter: &RelationFilter<'_>,
    ) -> Result<Vec<PersistedEvent>> {
        let (cmp, order) = if filter.backwards { ("<", "DESC") } else { (">", "ASC") };
        let cols = EVENT_COLUMNS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ");
        let mut sql = format!(
            "WITH RECURSIVE rel (event_id, depth) AS (
                 SELECT event_id, 1 FROM event_relations WHERE relates_to = $1 AND room_id = $2
                 UNION ALL
                 SELECT r.event_id, rel.depth + 1 FROM event_relations r JOIN rel ON r.relates_to = rel.event_id
                 WHERE rel.depth < $3 AND r.room_id = $2)
             SELECT {cols} FROM events e JOIN event_relations r ON r.event_id = e.event_id
             WHERE e.event_id IN (SELECT event_id FROM rel) AND e.stream_ordering <= $4 AND e.status IS NULL"
        );
        let mut n = 5;
        let mut next = |clause: &str| {
            let s = format!(" AND {clause} ${n}");
            n += 1;
            s
        };
        if filter.rel_type.is_some() {
            sql.push_str(&next("r.rel_type ="));
        }
        if filter.event_type.is_some() {
            sql.push_str(&next("e.event_type ="));
        }
        if filter.from.is_some() {
            sql.push_str(&next(&format!("e.stream_ordering {cmp}")));
        }
        if filter.to.is_some() {
            sql.push_str(&next(if filter.backwards { "e.stream_ordering >=" } else { "e.stream_ordering <" }));
        }
        sql.push_str(&format!(" ORDER BY e.stream_ordering {order} LIMIT ${n}"));
        let mut q = sqlx::query(&sql).bind(parent).bind(room_id.as_str()).bind(filter.max_depth).bind(filter.upto);
        for v in [filter.rel_type, filter.event_type].into_iter().flatten() {
            q = q.bind(v);
        }
        for v in [filter.from, filter.to].into_iter().flatten() {
            q = q.bind(v);
        }
        decode_all(q.bind(filter.limit).fetch_all(self.db().pool()).await?)
    }

    /// The direct children of `parents` in `room_id` of the given relation types, at or below
    /// `upto`, oldest first: the raw material of bundled aggregations. An event elsewhere naming
    /// one of these parents is ignored.
    ///
    /// # Errors
    /// On database failure.
    pub async fn relation_rows(
        &self,
        room_id: &RoomId,
        parents: &[&str],
        rel_types: &[&str],
        upto: i64,
    ) -> Result<Vec<RelationRow>> {
        if parents.is_empty() || rel_types.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT event_id, relates_to, rel_type, event_type, sender, stream_ordering FROM event_relations
             WHERE stream_ordering <= $1 AND room_id = $2 AND relates_to IN {} AND rel_type IN {}
             ORDER BY stream_ordering",
            placeholders(3, parents.len()),
            placeholders(3 + parents.len(), rel_types.len())
        );
        let mut q = sqlx::query(&sql).bind(upto).bind(room_id.as_str());
        for p in parents {
            q = q.bind(*p);
        }
        for t in rel_types {
            q = q.bind(*t);
        }
        q.fetch_all(self.db().pool())
            .await?
            .iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                let parent: String = r.try_get(1)?;
                let sender: String = r.try_get(4)?;
                Ok(RelationRow {
                    event_id: event_id(&id)?,
                    relates_to: event_id(&parent)?,
                    rel_type: r.try_get(2)?,
                    event_type: r.try_get(3)?,
                    sender: OwnedUserId::try_from(sender.as_str())
                        .map_err(|e| Error::Decode(format!("sender: {e}")))?,
                    stream_ordering: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// A room's thread roots with the position of their latest thread event, latest activity
    /// first: only activity at or below `upto` and strictly below `before` counts. With
    /// `participant`, only threads that user started or replied in.
    ///
    /// # Errors
    /// On database failure.
    pub async fn threads(
        &self,
        room_id: &RoomId,
        participant: Option<&UserId>,
        upto: i64,
        before: i64,
        limit: i64,
    ) -> Result<Vec<(OwnedEventId, i64)>> {
        let mut sql = "SELECT t.relates_to, MAX(t.stream_ordering) AS latest FROM event_relations t
             JOIN events root ON root.event_id = t.relates_to AND root.room_id = t.room_id
             WHERE t.room_id = $1 AND t.rel_type = 'm.thread' AND t.stream_ordering <= $2"
            .to_owned();
        if participant.is_some() {
            sql.push_str(
                " AND (root.sender = $5 OR EXISTS (SELECT 1 FROM event_relations p WHERE p.relates_to = t.relates_to
                   AND p.rel_type = 'm.thread' AND p.sender = $5 AND p.stream_ordering <= $2))",
            );
        }
        sql.push_str(
            " GROUP BY t.relates_to HAVING MAX(t.stream_ordering) < $3 ORDER BY latest DESC, t.relates_to LIMIT $4",
        );
        let mut q = sqlx::query(&sql).bind(room_id.as_str()).bind(upto).bind(before).bind(limit);
        if let Some(p) = participant {
            q = q.bind(p.as_str());
        }
        q.fetch_all(self.db().pool())
            .await?
            .iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                Ok((event_id(&id)?, r.try_get(1)?))
            })
            .collect()
    }

    /// The first event of a room at or after `ts` (`forwards`) or at or before it, by
    /// `origin_server_ts`, among those at or below stream position `upto`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn event_near_ts(
        &self,
        room_id: &RoomId,
        ts: i64,
        forwards: bool,
        upto: i64,
    ) -> Result<Option<PersistedEvent>> {
        let (cmp, order) = if forwards { (">=", "ASC") } else { ("<=", "DESC") };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = $1 AND stream_ordering <= $2 AND status IS NULL
             AND origin_server_ts {cmp} $3 ORDER BY origin_server_ts {order}, stream_ordering {order} LIMIT 1"
        );
        let rows = sqlx::query(&sql).bind(room_id.as_str()).bind(upto).bind(ts).fetch_all(self.db().pool()).await?;
        Ok(decode_all(rows)?.into_iter().next())
    }
}
