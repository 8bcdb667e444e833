-- The cluster: nodes with heartbeats, and the notification_registry of open sockets.

CREATE TABLE nodes (
    node_id      TEXT PRIMARY KEY,
    uri          TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
) WITHOUT ROWID;

-- One row per open WebSocket (two tabs sharing a cookie are two rows of one connection_id).
CREATE TABLE notification_registry (
    socket_id       TEXT PRIMARY KEY,
    connection_id   TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    node_id         TEXT NOT NULL,
    connected_since TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX notification_registry_user ON notification_registry (user_id);
CREATE INDEX notification_registry_node ON notification_registry (node_id);
