-- Presence (SQLite). Keep in step with migrations/postgres/0011_presence.sql.

CREATE TABLE presence (
    user_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts INTEGER NOT NULL,
    stream_id INTEGER NOT NULL
);

-- The `presence` stream: one row per change.
CREATE TABLE presence_log (
    stream_id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL
);
