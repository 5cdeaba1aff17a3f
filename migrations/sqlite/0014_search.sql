-- Full-text search over room events (SQLite, FTS5). PostgreSQL uses a tsvector column instead;
-- see migrations/postgres/0014_search.sql.

CREATE VIRTUAL TABLE event_search USING fts5(
    body,
    event_id UNINDEXED,
    room_id UNINDEXED,
    stream_ordering UNINDEXED,
    origin_server_ts UNINDEXED,
    key UNINDEXED
);
