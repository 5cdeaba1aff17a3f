-- Full-text search over room events (PostgreSQL). SQLite uses an FTS5 table instead; see
-- migrations/sqlite/0014_search.sql.

CREATE TABLE event_search (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    key TEXT NOT NULL,
    vector tsvector NOT NULL
);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);
CREATE INDEX event_search_room ON event_search (room_id, stream_ordering);
