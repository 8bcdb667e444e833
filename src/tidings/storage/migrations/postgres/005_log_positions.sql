-- Log positions that consumers can follow without ever skipping a row: a notification's
-- transaction id. Rows of transactions older than every running one (pg_snapshot_xmin) can no
-- longer appear, whereas a BIGSERIAL seq can become visible after a higher one.

ALTER TABLE notifications ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX notifications_log ON notifications (txid, seq);
