-- Ganglion schema v3 (sqlite): the media repository. Keep in step with the other backend's 0003_media.sql.

-- One row per piece of media, local (origin = our server name) or a cached remote one.
-- A row created by POST /_matrix/media/v1/create has uploaded_ts NULL until its bytes arrive, and
-- unused_expires_ts saying when the reservation lapses.
CREATE TABLE media (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    uploader TEXT,
    content_type TEXT,
    upload_name TEXT,
    size_bytes INTEGER,
    sha256 TEXT,
    created_ts INTEGER NOT NULL,
    uploaded_ts INTEGER,
    unused_expires_ts INTEGER,
    quarantined INTEGER NOT NULL DEFAULT 0,
    -- 1: uploaded after the unauthenticated endpoints were frozen; served only by the
    -- authenticated /_matrix/client/v1/media endpoints.
    authenticated_only INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (origin, media_id)
);
-- Quotas sum a user's uploads; pending-upload limits count their open reservations.
CREATE INDEX media_uploader ON media (uploader, uploaded_ts);
-- Identical uploads share their bytes; deleting one must know whether another still uses them.
CREATE INDEX media_sha256 ON media (sha256);

-- Thumbnails stored for a piece of media, generated on upload or on demand.
CREATE TABLE media_thumbnails (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    animated INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (origin, media_id, width, height, method, animated)
);
