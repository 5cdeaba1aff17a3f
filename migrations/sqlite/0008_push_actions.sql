-- Push actions (SQLite). Keep in step with migrations/postgres/0008_push_actions.sql.

-- For each event and each local member whose push rules say notify: what they said. Unread
-- counts are the rows after the member's latest read receipt, so a receipt clears them.
CREATE TABLE event_push_actions (
    stream_ordering INTEGER NOT NULL,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    highlight INTEGER NOT NULL,
    thread_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id, stream_ordering)
);
