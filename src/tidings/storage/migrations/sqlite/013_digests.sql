-- Digests (docs/pipeline.md): the open digest of each (user, channel, key), which later
-- messages with the key join while its delivery waits, and the deliveries each digest sends.
CREATE TABLE pipeline_digests (
    user_id     TEXT        NOT NULL,
    channel     TEXT        NOT NULL,
    digest_key  TEXT        NOT NULL,
    delivery_id TEXT        NOT NULL,  -- the digest's delivery ('' before the first opens)
    closes_at   TEXT        NOT NULL,
    PRIMARY KEY (user_id, channel, digest_key)
);

CREATE TABLE pipeline_digest_items (
    delivery_id TEXT PRIMARY KEY,  -- the item's own delivery (the digest's own first)
    digest_id   TEXT NOT NULL,     -- the delivery that sends the digest
    message_id  TEXT NOT NULL
);
CREATE INDEX pipeline_digest_items_digest ON pipeline_digest_items (digest_id, message_id);

-- A message's digest step: {"key", "window", "channels"} or NULL. Every delivery of such a
-- message is rendered over its items (those on other channels over the message alone).
ALTER TABLE pipeline_messages ADD COLUMN digest TEXT;
