-- Moderation reports and OpenID tokens (PostgreSQL). Keep in step with migrations/sqlite/0012_reports.sql.

-- Reports of events, rooms and users, for the server's admins.
CREATE TABLE reports (
    id BIGINT PRIMARY KEY,
    reporter TEXT NOT NULL,
    room_id TEXT,
    event_id TEXT,
    target_user_id TEXT,
    reason TEXT,
    score BIGINT,
    received_ts BIGINT NOT NULL
);

-- OpenID tokens: short-lived proof of a user's identity for third parties (stored hashed).
CREATE TABLE openid_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
