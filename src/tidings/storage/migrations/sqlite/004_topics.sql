-- Topics: messages kept for a TTL with a per-topic sequence, and session subscriptions.

CREATE TABLE topics (
    topic    TEXT    PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE topic_messages (
    topic             TEXT    NOT NULL,
    seq               INTEGER NOT NULL,
    data              TEXT    NOT NULL,  -- JSON
    origin_session_id TEXT,
    creation_date     TEXT    NOT NULL,
    expires_at        TEXT    NOT NULL,
    PRIMARY KEY (topic, seq)
) WITHOUT ROWID;
CREATE INDEX topic_messages_expiry ON topic_messages (expires_at);

-- Subscriptions belong to the (user, session): a reconnecting session gets them back.
CREATE TABLE session_topics (
    user_id       TEXT NOT NULL,
    session_id    TEXT NOT NULL,
    topic         TEXT NOT NULL,
    subscribed_at TEXT NOT NULL,
    active_at     TEXT NOT NULL,
    PRIMARY KEY (user_id, session_id, topic)
) WITHOUT ROWID;
CREATE INDEX session_topics_active ON session_topics (active_at);
