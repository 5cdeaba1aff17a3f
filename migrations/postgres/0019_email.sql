-- Email addresses on accounts, their validation, and email notification throttling (postgres).
-- Keep in step with migrations/sqlite/0019_email.sql.

-- An address belongs to at most one account.
CREATE TABLE user_threepids (
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    user_id TEXT NOT NULL,
    validated_ts BIGINT NOT NULL,
    added_ts BIGINT NOT NULL,
    PRIMARY KEY (medium, address)
);
CREATE INDEX user_threepids_user ON user_threepids (user_id);

-- /account/3pid/email/requestToken sessions: the token mailed, and when the link was followed.
-- `token_hash` is SHA-256 of the token, as for access tokens.
CREATE TABLE threepid_sessions (
    sid TEXT PRIMARY KEY,
    client_secret TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    send_attempt BIGINT NOT NULL,
    created_ts BIGINT NOT NULL,
    validated_ts BIGINT
);
CREATE INDEX threepid_sessions_secret ON threepid_sessions (client_secret, address);

-- When an email pusher last mailed about a room (one email per room per throttle period), and the
-- last notification that email covered.
CREATE TABLE email_throttle (
    user_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    room_id TEXT NOT NULL,
    last_sent_ts BIGINT NOT NULL,
    last_stream_ordering BIGINT NOT NULL,
    PRIMARY KEY (user_id, pushkey, room_id)
);
