-- Room directory (SQLite). Keep in step with migrations/postgres/0009_directory.sql.

-- Rooms published in the public room directory.
CREATE TABLE room_directory (
    room_id TEXT PRIMARY KEY,
    published_ts INTEGER NOT NULL
);
