-- Topics: messages kept for a TTL with a per-topic sequence, and session subscriptions.

CREATE TABLE topics (
    topic    TEXT   PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

CREATE TABLE topic_messages (
    topic             TEXT        NOT NULL,
    seq               BIGINT      NOT NULL,
    data              JSON        NOT NULL,
    origin_session_id TEXT,
    creation_date     TIMESTAMPTZ NOT NULL,
    expires_at        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, seq)
);
CREATE INDEX topic_messages_expiry ON topic_messages (expires_at);

-- Subscriptions belong to the (user, session): a reconnecting session gets them back.
CREATE TABLE session_topics (
    user_id       TEXT        NOT NULL,
    session_id    TEXT        NOT NULL,
    topic         TEXT        NOT NULL,
    subscribed_at TIMESTAMPTZ NOT NULL,
    active_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, session_id, topic)
);
CREATE INDEX session_topics_active ON session_topics (active_at);
