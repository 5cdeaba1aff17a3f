//! State groups: the state each event sees, stored as deltas over earlier states.
//!
//! Every event points at the group of the room's state after it; a message shares its
//! predecessor's group, and a state event adds a group holding one entry over the group before it.
//! A group is read by walking its `prev_group` chain back to the nearest snapshot (a group stored in
//! full) in one recursive query. A new snapshot is written once the chain's deltas reach half the
//! state's size (and at least [`MIN_CHAIN`]), so a read costs at most about one and a half times
//! the state it returns, while the snapshots add a bounded number of rows per state event on
//! average. See docs/state-storage.md.

use std::collections::BTreeMap;

use sqlx::AnyConnection;
use sqlx::Row;

use crate::Result;
use crate::events::placeholders;

/// A room state by IDs: (event type, state key) → event ID.
pub type StateIds = BTreeMap<(String, String), String>;

/// Deltas kept before a snapshot is considered, however small the state.
pub const MIN_CHAIN: i64 = 100;

/// The query for the chain from the group `anchor` (an SQL expression: a placeholder or a
/// subquery) back to its snapshot, as rows `(id, hop)`; `hop` counts from the anchor's group.
pub(crate) fn chain_query(anchor: &str) -> String {
    format!(
        "WITH RECURSIVE chain(id, prev_group, hop) AS (
             SELECT id, prev_group, 0 FROM state_groups WHERE id = ({anchor})
             UNION ALL
             SELECT g.id, g.prev_group, c.hop + 1 FROM state_groups g JOIN chain c ON g.id = c.prev_group
         )
         SELECT id, hop FROM chain"
    )
}

/// Runs a [`chain_query`] whose anchor's parameters are bound. The chain is read alone and its
/// entries by ID afterwards: joined in one statement, PostgreSQL's planner cannot see how short
/// the chain is and hashes whole tables.
pub(crate) async fn chain_ids<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    conn: &mut AnyConnection,
) -> Result<Vec<(i64, i64)>> {
    let rows = q.fetch_all(&mut *conn).await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// A stored group's bookkeeping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupMeta {
    pub(crate) id: i64,
    pub(crate) chain_length: i64,
    pub(crate) size: i64,
}

pub(crate) async fn group_meta(conn: &mut AnyConnection, id: i64) -> Result<Option<GroupMeta>> {
    let row = sqlx::query("SELECT id, chain_length, size FROM state_groups WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| Ok(GroupMeta { id: r.try_get(0)?, chain_length: r.try_get(1)?, size: r.try_get(2)? })).transpose()
}

/// The full state of a group: the chain's entries, the nearest group's entry winning per key.
pub(crate) async fn load_group(conn: &mut AnyConnection, id: i64) -> Result<StateIds> {
    let sql = chain_query("$1");
    let chain = chain_ids(sqlx::query(&sql).bind(id), conn).await?;
    if chain.is_empty() {
        return Ok(StateIds::new());
    }
    let hops: std::collections::HashMap<i64, i64> = chain.iter().copied().collect();
    let sql = format!(
        "SELECT state_group, event_type, state_key, event_id FROM state_group_entries WHERE state_group IN {}",
        placeholders(1, chain.len())
    );
    let mut q = sqlx::query(&sql);
    for (g, _) in &chain {
        q = q.bind(*g);
    }
    let mut rows: Vec<(i64, (String, String), String)> = Vec::new();
    for r in q.fetch_all(&mut *conn).await? {
        let g: i64 = r.try_get(0)?;
        rows.push((hops.get(&g).copied().unwrap_or(0), (r.try_get(1)?, r.try_get(2)?), r.try_get(3)?));
    }
    // Farthest first, so nearer groups overwrite what they changed.
    rows.sort_by_key(|(hop, _, _)| std::cmp::Reverse(*hop));
    Ok(rows.into_iter().map(|(_, k, v)| (k, v)).collect())
}

/// Stores `state` as a new group of `room_id`, as a delta over `base` when that is cheap, else as a
/// snapshot. `base_state` is `base`'s full state when the caller has it (saves a read).
pub(crate) async fn store_group(
    conn: &mut AnyConnection,
    room_id: &str,
    base: Option<GroupMeta>,
    base_state: Option<&StateIds>,
    state: &StateIds,
) -> Result<i64> {
    let size = i64::try_from(state.len()).unwrap_or(i64::MAX);
    let mut delta: Option<Vec<(&(String, String), &String)>> = None;
    if let Some(base) = base {
        let snapshot_due = base.chain_length + 1 > MIN_CHAIN.max(size / 2);
        if !snapshot_due {
            let loaded;
            let base_state = match base_state {
                Some(s) => s,
                None => {
                    loaded = load_group(conn, base.id).await?;
                    &loaded
                }
            };
            // State entries are never removed (resolution keeps every key), so a delta is the
            // entries that are new or changed.
            delta = Some(state.iter().filter(|(k, v)| base_state.get(*k) != Some(*v)).collect());
        }
    }
    let (prev_group, chain_length, entries) = match (&delta, base) {
        (Some(d), Some(b)) => (Some(b.id), b.chain_length + 1, d.clone()),
        _ => (None, 0, state.iter().collect()),
    };
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO state_groups (room_id, prev_group, chain_length, size) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(room_id)
    .bind(prev_group)
    .bind(chain_length)
    .bind(size)
    .fetch_one(&mut *conn)
    .await?;
    insert_entries(conn, id, &entries).await?;
    Ok(id)
}

/// A group equal to `base` plus one entry, without reading `base`'s state unless a snapshot is due.
pub(crate) async fn store_group_with(
    conn: &mut AnyConnection,
    room_id: &str,
    base: GroupMeta,
    key: (String, String),
    event_id: &str,
) -> Result<i64> {
    // The size grows by one unless the key replaces an entry.
    let sql = chain_query("$1");
    let chain = chain_ids(sqlx::query(&sql).bind(base.id), conn).await?;
    if chain.is_empty() {
        return Err(crate::Error::Decode(format!("state group {} is missing", base.id)));
    }
    let sql = format!(
        "SELECT COUNT(*) FROM state_group_entries WHERE event_type = $1 AND state_key = $2 AND state_group IN {}",
        placeholders(3, chain.len())
    );
    let mut q = sqlx::query_scalar::<_, i64>(&sql).bind(&key.0).bind(&key.1);
    for (g, _) in &chain {
        q = q.bind(*g);
    }
    let replaces = q.fetch_one(&mut *conn).await? > 0;
    let size = base.size + i64::from(!replaces);
    if base.chain_length + 1 > MIN_CHAIN.max(size / 2) {
        let mut state = load_group(conn, base.id).await?;
        state.insert(key, event_id.to_owned());
        return store_group(conn, room_id, None, None, &state).await;
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO state_groups (room_id, prev_group, chain_length, size) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(room_id)
    .bind(base.id)
    .bind(base.chain_length + 1)
    .bind(size)
    .fetch_one(&mut *conn)
    .await?;
    let event_id = event_id.to_owned();
    insert_entries(conn, id, &[(&key, &event_id)]).await?;
    Ok(id)
}

async fn insert_entries(conn: &mut AnyConnection, group: i64, entries: &[(&(String, String), &String)]) -> Result<()> {
    // Batched so a snapshot of thousands of members is a handful of statements.
    for chunk in entries.chunks(200) {
        let mut sql =
            String::from("INSERT INTO state_group_entries (state_group, event_type, state_key, event_id) VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            let b = i * 3 + 2;
            sql.push_str(&format!("($1, ${b}, ${}, ${})", b + 1, b + 2));
        }
        let mut q = sqlx::query(&sql).bind(group);
        for ((ty, key), id) in chunk {
            q = q.bind(ty.as_str()).bind(key.as_str()).bind(id.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
