-- Push receipts still to check: a provider (Expo) answers a ticket at once and tells later,
-- in a receipt, whether the phone's provider took the push. Kept here rather than in a node's
-- memory, so a restart loses none, and any node may check them (each leased while checked).
CREATE TABLE push_receipts (
    receipt_id  TEXT        PRIMARY KEY,
    platform    TEXT        NOT NULL,
    user_id     TEXT        NOT NULL,
    token       TEXT        NOT NULL,
    due_at      TIMESTAMPTZ NOT NULL,
    keep_until  TIMESTAMPTZ NOT NULL,
    lease_until TIMESTAMPTZ
);
CREATE INDEX push_receipts_due ON push_receipts (platform, due_at);
CREATE INDEX push_receipts_user ON push_receipts (user_id);
