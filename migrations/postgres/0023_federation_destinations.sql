-- Where the federation sender stands with each other server (postgres). Keep in step with the other
-- backend's 0023.

-- last_position: the events-stream position up to which every event owed to the destination
-- has been accepted by it. retry_at_ms / retry_interval_ms: when to try again after a failure,
-- and the interval that doubles with each failure in a row (0 while the server answers).
CREATE TABLE federation_destinations (
    destination TEXT NOT NULL PRIMARY KEY,
    last_position BIGINT NOT NULL,
    retry_at_ms BIGINT NOT NULL DEFAULT 0,
    retry_interval_ms BIGINT NOT NULL DEFAULT 0
);
