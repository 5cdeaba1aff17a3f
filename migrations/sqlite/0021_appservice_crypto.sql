-- Application service delivery of to-device messages and device-list changes (MSC2409,
-- MSC3202) (sqlite). Keep in step with the other backend's 0021.

-- How far the to_device and device_lists streams have been put into transactions. -1 means
-- "not yet known": the owner sets it to the stream's current position the first time it
-- reads the row, so a service registered before this migration starts from now, not from
-- the whole log.
ALTER TABLE appservice_state ADD COLUMN to_device_pos BIGINT NOT NULL DEFAULT -1;
ALTER TABLE appservice_state ADD COLUMN device_lists_pos BIGINT NOT NULL DEFAULT -1;
-- The to_device_log positions in the staged transaction that belong to devices of the
-- service's exclusive users (comma-separated): they are removed from the inbox when the
-- service acknowledges the transaction, as a device's own sync removes what it received.
ALTER TABLE appservice_state ADD COLUMN pending_to_device TEXT;
