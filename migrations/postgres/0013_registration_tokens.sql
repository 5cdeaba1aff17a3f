-- Registration tokens (PostgreSQL). Keep in step with migrations/sqlite/0013_registration_tokens.sql.

CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed BIGINT,
    completed BIGINT NOT NULL DEFAULT 0,
    expiry_time BIGINT
);
