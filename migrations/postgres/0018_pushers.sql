-- Pushers and what the pusher role needs to push (postgres).
-- Keep in step with migrations/sqlite/0018_pushers.sql.

-- A user's pushers (POST /pushers/set), one per (user, app_id, pushkey). `device_id` is the
-- device whose access token set it: deleting the device or logging it out removes the pusher.
-- `last_stream_ordering` is the pusher's durable position: every push action at or below it has
-- been pushed (acknowledged by the gateway) or given up on. `failing_since` is set while the
-- gateway keeps failing.
CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    app_display_name TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag TEXT,
    lang TEXT NOT NULL,
    data TEXT NOT NULL,
    pushkey_ts BIGINT NOT NULL,
    last_stream_ordering BIGINT NOT NULL,
    last_badge BIGINT,
    failing_since BIGINT,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_app_pushkey ON pushers (app_id, pushkey);

-- The `pushers` stream: one row per change to a user's pushers.
CREATE TABLE pusher_log (
    stream_id BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL
);

-- The actions the user's push rules gave (a JSON array), so a push carries the rule's tweaks.
ALTER TABLE event_push_actions ADD COLUMN actions TEXT NOT NULL DEFAULT '["notify"]';
-- Which users an event range notified (the pusher role, per batch of the events stream), and one
-- user's notifications in stream order (each pusher's catch-up).
CREATE INDEX event_push_actions_stream ON event_push_actions (stream_ordering);
CREATE INDEX event_push_actions_user_stream ON event_push_actions (user_id, stream_ordering);
