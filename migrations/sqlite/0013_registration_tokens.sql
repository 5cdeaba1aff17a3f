-- Registration tokens (SQLite). Keep in step with migrations/postgres/0013_registration_tokens.sql.

CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed INTEGER,
    completed INTEGER NOT NULL DEFAULT 0,
    expiry_time INTEGER
);
