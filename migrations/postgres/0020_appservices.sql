-- Application service delivery (postgres). Keep in step with the other backend's 0020.

-- One row per registered application service (by its registration's `id`): how far each
-- stream has been put into transactions, the next transaction ID, and the transaction staged
-- but not yet acknowledged. A transaction is staged (body and new positions in one write)
-- before it is sent and cleared only once the service answered 2xx, so after a crash the same
-- transaction, with the same ID, is sent again: nothing is lost and the service can drop the
-- repeat by its ID.
CREATE TABLE appservice_state (
    appservice_id TEXT PRIMARY KEY,
    events_pos BIGINT NOT NULL,
    receipts_pos BIGINT NOT NULL,
    typing_pos BIGINT NOT NULL,
    presence_pos BIGINT NOT NULL,
    next_txn_id BIGINT NOT NULL,
    pending_txn_id BIGINT,
    pending_body TEXT,
    failing_since BIGINT
);
