-- Account data, filters and profiles (SQLite). Keep in step with migrations/postgres/0004_account_data.sql.

-- Every account-data write, in `account_data` stream order: the database side of that replication
-- stream. Positions are contiguous (main allocates them under one lock).
CREATE TABLE account_data_log (
    stream_id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    data_type TEXT NOT NULL,
    content TEXT NOT NULL
);
CREATE INDEX account_data_log_user ON account_data_log (user_id, stream_id);

-- The latest content of each (user, room, type); room_id '' is global account data.
CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    data_type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);

CREATE TABLE user_filters (
    user_id TEXT NOT NULL,
    filter_id TEXT NOT NULL,
    filter_json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

CREATE TABLE profiles (
    user_id TEXT PRIMARY KEY,
    displayname TEXT,
    avatar_url TEXT
);
