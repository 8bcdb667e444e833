-- Push tokens: a user's addresses at APNs, FCM and Expo. A (platform, token) pair belongs to
-- one user at a time.
CREATE TABLE push_tokens (
    token_id     TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    platform     TEXT NOT NULL,
    token        TEXT NOT NULL,
    app_id       TEXT,
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    UNIQUE (platform, token)
);
CREATE INDEX push_tokens_by_user ON push_tokens (user_id, created_at);
