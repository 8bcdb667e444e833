-- Categories and one-click unsubscribe (docs/pipeline.md, "Unsubscribe"): a message's category
-- and whether it is transactional (no List-Unsubscribe header), and each user's switches per
-- (category, channel).
ALTER TABLE pipeline_messages ADD COLUMN category TEXT;
ALTER TABLE pipeline_messages ADD COLUMN transactional BOOLEAN NOT NULL DEFAULT false;

CREATE TABLE pipeline_category_prefs (
    user_id    TEXT        NOT NULL,
    category   TEXT        NOT NULL,
    channel    TEXT        NOT NULL,
    enabled    BOOLEAN     NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, category, channel)
);
