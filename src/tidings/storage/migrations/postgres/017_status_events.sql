-- Delivery-status webhooks (docs/pipeline.md): the endpoints every change of a delivery is
-- posted to, and the outbox of those posts, one row per (event, endpoint), kept after it is
-- delivered or failed as its own history (pruned after TIDINGS_STATUS_WEBHOOK_RETENTION).
CREATE TABLE pipeline_status_endpoints (
    url TEXT PRIMARY KEY
);
-- Known empty (autovacuum never analyses a table of a few rows): every write of history joins
-- it, and a planner that guessed thousands of rows would cost that write high enough to JIT it.
ANALYZE pipeline_status_endpoints;

CREATE TABLE pipeline_status_events (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id          TEXT    NOT NULL,  -- webhook-id: the same on every try and endpoint
    endpoint          TEXT    NOT NULL,
    type              TEXT    NOT NULL,  -- delivery.sent, ...
    delivery_id       TEXT    NOT NULL,
    message_id        TEXT    NOT NULL,
    user_id           TEXT    NOT NULL,
    channel           TEXT    NOT NULL,
    delivery_state    TEXT    NOT NULL,  -- the delivery's, as of the change
    reason            TEXT    NOT NULL,
    detail            TEXT,
    at                TIMESTAMPTZ NOT NULL,
    delivery_attempts INTEGER NOT NULL,
    provider_id       TEXT,
    state             TEXT    NOT NULL DEFAULT 'pending',  -- pending, delivered, failed
    attempts          INTEGER NOT NULL DEFAULT 0,          -- POSTs tried
    available_at      TIMESTAMPTZ NOT NULL,                -- next try, once due
    lease_owner       TEXT,
    lease_until       TIMESTAMPTZ,
    last_status       INTEGER,
    last_error        TEXT,
    last_attempt_at   TIMESTAMPTZ,
    delivered_at      TIMESTAMPTZ
);
-- (delivered ones are found in id order, the great majority of rows)
CREATE INDEX pipeline_status_events_failed ON pipeline_status_events (id)
    WHERE state = 'failed';
CREATE INDEX pipeline_status_events_due ON pipeline_status_events (available_at)
    WHERE state = 'pending';
-- one delivery's events go to an endpoint in order: the oldest pending one first
CREATE INDEX pipeline_status_events_chain ON pipeline_status_events (endpoint, delivery_id, id)
    WHERE state = 'pending';
CREATE INDEX pipeline_status_events_user ON pipeline_status_events (user_id);
