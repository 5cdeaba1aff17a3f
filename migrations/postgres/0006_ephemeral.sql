-- Receipts and typing (PostgreSQL). Keep in step with migrations/sqlite/0006_ephemeral.sql.

-- The `receipts` stream: every receipt, in order.
CREATE TABLE receipts_log (
    stream_id BIGINT PRIMARY KEY,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts BIGINT NOT NULL
);
CREATE INDEX receipts_log_room ON receipts_log (room_id, stream_id);

-- The latest receipt of each (room, user, type, thread).
CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);

-- The `typing` stream: each row is the full set of users typing in a room from then on.
CREATE TABLE typing_log (
    stream_id BIGINT PRIMARY KEY,
    room_id TEXT NOT NULL,
    user_ids TEXT NOT NULL
);
CREATE INDEX typing_log_room ON typing_log (room_id, stream_id);
