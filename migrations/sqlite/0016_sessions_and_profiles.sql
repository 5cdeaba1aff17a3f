-- Refresh tokens, login tokens, guest accounts and extended profile fields (sqlite).
-- Keep in step with migrations/postgres/0015_sessions_and_profiles.sql.

-- An access token issued with a refresh token expires (NULL: never). `refresh_hash` is the refresh
-- token issued with it; `prev_refresh_hash` the refresh token it replaced, revoked when this access
-- token is first used.
ALTER TABLE access_tokens ADD COLUMN expires_ts INTEGER;
ALTER TABLE access_tokens ADD COLUMN refresh_hash TEXT;
ALTER TABLE access_tokens ADD COLUMN prev_refresh_hash TEXT;
CREATE INDEX access_tokens_refresh ON access_tokens (refresh_hash);

-- Only SHA-256 hashes, as for access tokens. `prev_hash` is the refresh token this one replaced.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    prev_hash TEXT,
    created_ts INTEGER NOT NULL
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (user_id, device_id);

-- Short-lived, single-use tokens from /login/get_token for m.login.token.
CREATE TABLE login_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts INTEGER NOT NULL
);

ALTER TABLE users ADD COLUMN is_guest INTEGER NOT NULL DEFAULT 0;

-- Profile fields other than displayname and avatar_url (those stay in `profiles`); values are JSON.
CREATE TABLE profile_fields (
    user_id TEXT NOT NULL,
    field_key TEXT NOT NULL,
    value_json TEXT NOT NULL,
    PRIMARY KEY (user_id, field_key)
);
