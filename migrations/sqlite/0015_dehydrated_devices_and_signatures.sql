-- Dehydrated devices (MSC3814): at most one per user. The device itself is an ordinary row in
-- `devices` (without access tokens); this table holds the client's encrypted pickle of it.
CREATE TABLE dehydrated_devices (
    user_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    device_data TEXT NOT NULL
);
-- Signatures one user makes on another user's master key with their user-signing key. Only the
-- signer sees them in /keys/query; a user's signatures on their own keys live in the key JSON.
CREATE TABLE cross_user_signatures (
    signer_user_id TEXT NOT NULL,
    signing_key_id TEXT NOT NULL,
    target_user_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (signer_user_id, target_user_id, signing_key_id)
);
