-- Rooms: forgotten rooms and redactions (SQLite). Keep in step with migrations/postgres/0002_rooms.sql.

-- Rooms a user has forgotten: hidden from their sync and history once they have left.
CREATE TABLE room_forgotten (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    forgotten_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- Which event redacted which. The redacted event's stored JSON is replaced by its redacted form.
CREATE TABLE redactions (
    event_id TEXT PRIMARY KEY,
    redacted_by TEXT NOT NULL,
    redacted_ts INTEGER NOT NULL
);

CREATE INDEX events_room_state ON events (room_id, event_type, state_key, stream_ordering);
CREATE INDEX room_aliases_room ON room_aliases (room_id);
