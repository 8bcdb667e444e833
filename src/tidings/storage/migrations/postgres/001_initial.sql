-- The in-app core: notifications, per-user unseen counts, devices, service clients, keys.

CREATE TABLE notifications (
    seq             BIGSERIAL   PRIMARY KEY,   -- global creation order
    notification_id TEXT        NOT NULL UNIQUE,
    user_id         TEXT        NOT NULL,
    data            JSON        NOT NULL,      -- JSON, not JSONB: kept exactly as sent
    creation_date   TIMESTAMPTZ NOT NULL,
    seen_date       TIMESTAMPTZ
);

-- getUnseen reads a user's unseen notifications in creation order.
CREATE INDEX notifications_unseen ON notifications (user_id, seq) WHERE seen_date IS NULL;
CREATE INDEX notifications_user ON notifications (user_id, seq);

-- Maintained in the transaction that changes a user's notifications: never re-counted.
CREATE TABLE user_counts (
    user_id TEXT    PRIMARY KEY,
    unseen  INTEGER NOT NULL CHECK (unseen >= 0),
    version BIGINT  NOT NULL
);

CREATE TABLE devices (
    connection_id TEXT        PRIMARY KEY,
    user_id       TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    last_seen_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX devices_user ON devices (user_id);

CREATE TABLE service_clients (
    client_id   TEXT        PRIMARY KEY,
    name        TEXT        NOT NULL,
    secret_hash TEXT        NOT NULL,
    scopes      TEXT        NOT NULL,  -- space-separated, as in OAuth2
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE server_keys (
    name       TEXT        PRIMARY KEY,
    value      TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
