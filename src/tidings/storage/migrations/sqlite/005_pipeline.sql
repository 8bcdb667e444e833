-- The multi-channel pipeline (docs/pipeline.md): templates, messages, deliveries with their
-- history, the outbox (backup store and channel queues at once), preferences, contacts.

CREATE TABLE pipeline_templates (
    template_id TEXT    PRIMARY KEY,
    subject     TEXT,
    text        TEXT    NOT NULL,
    html        TEXT,
    version     INTEGER NOT NULL,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);

CREATE TABLE pipeline_messages (
    message_id      TEXT    PRIMARY KEY,
    client_id       TEXT    NOT NULL,
    idempotency_key TEXT,
    body_hash       TEXT    NOT NULL,
    recipients      TEXT    NOT NULL,
    channels        TEXT    NOT NULL,
    template_id     TEXT,
    content         TEXT,
    data            TEXT    NOT NULL,
    critical        INTEGER NOT NULL,
    created_at      TEXT    NOT NULL
);
CREATE UNIQUE INDEX pipeline_messages_key ON pipeline_messages (client_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX pipeline_messages_created ON pipeline_messages (created_at);

CREATE TABLE pipeline_deliveries (
    delivery_id TEXT    PRIMARY KEY,
    message_id  TEXT    NOT NULL REFERENCES pipeline_messages (message_id),
    user_id     TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    address     TEXT,
    state       TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    provider_id TEXT,
    -- queued at creation: counts against the user's rate limit on the channel
    counted     INTEGER NOT NULL,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    sent_at     TEXT
);
CREATE INDEX pipeline_deliveries_message ON pipeline_deliveries (message_id);
CREATE INDEX pipeline_deliveries_rate ON pipeline_deliveries (user_id, channel, created_at);

CREATE TABLE pipeline_history (
    id          INTEGER PRIMARY KEY,
    delivery_id TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    detail      TEXT,
    at          TEXT    NOT NULL
);
CREATE INDEX pipeline_history_delivery ON pipeline_history (delivery_id, id);

-- A row per delivery not yet in an end state: removed when sent, failed or deleted.
CREATE TABLE pipeline_outbox (
    delivery_id  TEXT    PRIMARY KEY,
    channel      TEXT    NOT NULL,
    available_at TEXT    NOT NULL,
    lease_owner  TEXT,
    lease_until  TEXT,
    attempt      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX pipeline_outbox_due ON pipeline_outbox (channel, available_at);
CREATE INDEX pipeline_outbox_lease ON pipeline_outbox (lease_until);

CREATE TABLE pipeline_channel_prefs (
    user_id    TEXT    NOT NULL,
    channel    TEXT    NOT NULL,
    enabled    INTEGER NOT NULL,
    updated_at TEXT    NOT NULL,
    PRIMARY KEY (user_id, channel)
);

CREATE TABLE pipeline_topic_subscriptions (
    topic      TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (topic, user_id)
);
CREATE INDEX pipeline_topic_subscriptions_user ON pipeline_topic_subscriptions (user_id);

CREATE TABLE pipeline_contacts (
    user_id    TEXT NOT NULL,
    channel    TEXT NOT NULL,
    address    TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (user_id, channel)
);

-- One row per (user, limited channel), upserted by every message to it: the row lock
-- serialises concurrent messages to one user on PostgreSQL (SQLite has one writer anyway).
CREATE TABLE pipeline_rate_locks (
    user_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    PRIMARY KEY (user_id, channel)
);
