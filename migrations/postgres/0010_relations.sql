-- Event relations (PostgreSQL). Keep in step with migrations/sqlite/0010_relations.sql.

-- One row per event whose content's `m.relates_to` names a parent (`rel_type` + `event_id`),
-- written with the event: what /relations, /threads and bundled aggregations read. A redaction
-- deletes the row of the event it redacts.
CREATE TABLE event_relations (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    relates_to TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    event_type TEXT NOT NULL,
    sender TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX event_relations_parent ON event_relations (relates_to, rel_type, stream_ordering);
CREATE INDEX event_relations_threads ON event_relations (room_id, rel_type, stream_ordering);
