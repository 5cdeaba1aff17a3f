-- Push actions (PostgreSQL). Keep in step with migrations/sqlite/0008_push_actions.sql.

-- For each event and each local member whose push rules say notify: what they said. Unread
-- counts are the rows after the member's latest read receipt, so a receipt clears them.
CREATE TABLE event_push_actions (
    stream_ordering BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    highlight BIGINT NOT NULL,
    thread_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id, stream_ordering)
);
