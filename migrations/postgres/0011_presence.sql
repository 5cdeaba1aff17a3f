-- Presence (PostgreSQL). Keep in step with migrations/sqlite/0011_presence.sql.

CREATE TABLE presence (
    user_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    stream_id BIGINT NOT NULL
);

-- The `presence` stream: one row per change.
CREATE TABLE presence_log (
    stream_id BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL
);
