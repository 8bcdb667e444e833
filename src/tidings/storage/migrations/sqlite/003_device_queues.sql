-- Durable per-device queues as cursors over each user's notification log: one write per
-- notification whatever the number of devices. A device's queue is the user's notifications
-- with seq > cursor that have no row in device_acks.

ALTER TABLE devices ADD COLUMN cursor INTEGER NOT NULL DEFAULT 0;

-- Acknowledgements above a device's cursor (out-of-order acks); folded into the cursor as soon
-- as they are contiguous, so the table stays tiny.
CREATE TABLE device_acks (
    connection_id TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    PRIMARY KEY (connection_id, seq)
) WITHOUT ROWID;
