-- Other servers' signing keys, fetched from them or from a notary (sqlite). Keep in step with
-- the other backend's 0022.

-- One row per key. valid_until_ts is the newest validity seen for a current key; expired_ts
-- is set for a key the server lists under old_verify_keys (it verifies what was signed
-- before then, and nothing after).
CREATE TABLE remote_server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    expired_ts BIGINT,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- The newest /_matrix/key/v2/server document of each server, as it signed it: what this
-- server answers when asked as a notary.
CREATE TABLE remote_server_key_documents (
    server_name TEXT NOT NULL PRIMARY KEY,
    valid_until_ts BIGINT NOT NULL,
    document TEXT NOT NULL,
    fetched_ts BIGINT NOT NULL
);
