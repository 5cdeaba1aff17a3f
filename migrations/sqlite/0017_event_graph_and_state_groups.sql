-- The event graph and state groups (sqlite). Keep in step with the other backend's 0017.

-- How an event takes part in its room. NULL: an ordinary event, shown to clients. 'outlier': known
-- only as an auth or state event of others, its own state unknown. 'rejected': failed the auth rules
-- (kept so it is not fetched again; never shown, never part of state). 'soft_failed': valid at its
-- place in the graph but not against the room's current state (kept for the graph, never shown,
-- never a forward extremity).
ALTER TABLE events ADD COLUMN status TEXT;
ALTER TABLE events ADD COLUMN rejected_reason TEXT;
-- The state group holding the room's state after this event (for a non-state event, the same as
-- before it). NULL for outliers, and for events written before this migration.
ALTER TABLE events ADD COLUMN state_group INTEGER;
CREATE INDEX events_room_group ON events (room_id, stream_ordering, state_group);

-- The graph: each event's prev_events and auth_events, both ways. (WITHOUT ROWID: the key is
-- the row, so SQLite does not store it twice.)
CREATE TABLE event_edges (
    event_id TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
) WITHOUT ROWID;
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);
CREATE TABLE event_auth (
    event_id TEXT NOT NULL,
    auth_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_event_id)
) WITHOUT ROWID;

-- A state group is a room state some event sees. It is stored as a delta over prev_group (the
-- entries that differ), or in full when prev_group is NULL (a snapshot). chain_length counts the
-- deltas back to the snapshot and size the entries of the whole state, so a writer knows when a new
-- snapshot pays for itself. See docs/state-storage.md.
CREATE TABLE state_groups (
    id INTEGER PRIMARY KEY,
    room_id TEXT NOT NULL,
    prev_group INTEGER,
    chain_length INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE state_group_entries (
    state_group INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (state_group, event_type, state_key)
) WITHOUT ROWID;

-- The group of each room's current state (the state current_state materialises).
ALTER TABLE rooms ADD COLUMN state_group INTEGER;

-- Push actions keyed by their primary key alone (WITHOUT ROWID): one copy of each row instead of
-- a table plus an index holding the same columns. They are the biggest table of a busy room.
CREATE TABLE event_push_actions_new (
    stream_ordering INTEGER NOT NULL,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    highlight INTEGER NOT NULL,
    thread_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id, stream_ordering)
) WITHOUT ROWID;
INSERT INTO event_push_actions_new SELECT stream_ordering, room_id, user_id, highlight, thread_id FROM event_push_actions;
DROP TABLE event_push_actions;
ALTER TABLE event_push_actions_new RENAME TO event_push_actions;
