-- Categories and one-click unsubscribe (docs/pipeline.md, "Unsubscribe"): a message's category
-- and whether it is transactional (no List-Unsubscribe header), and each user's switches per
-- (category, channel).
ALTER TABLE pipeline_messages ADD COLUMN category TEXT;
ALTER TABLE pipeline_messages ADD COLUMN transactional INTEGER NOT NULL DEFAULT 0;

CREATE TABLE pipeline_category_prefs (
    user_id    TEXT    NOT NULL,
    category   TEXT    NOT NULL,
    channel    TEXT    NOT NULL,
    enabled    INTEGER NOT NULL,
    updated_at TEXT    NOT NULL,
    PRIMARY KEY (user_id, category, channel)
);
