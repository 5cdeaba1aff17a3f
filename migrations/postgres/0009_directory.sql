-- Room directory (PostgreSQL). Keep in step with migrations/sqlite/0009_directory.sql.

-- Rooms published in the public room directory.
CREATE TABLE room_directory (
    room_id TEXT PRIMARY KEY,
    published_ts BIGINT NOT NULL
);
