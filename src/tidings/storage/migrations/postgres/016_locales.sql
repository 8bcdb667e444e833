-- Locales (docs/pipeline.md, "Locales"): the locale a template's content is written in, its
-- translations, and each user's locale.
ALTER TABLE pipeline_templates ADD COLUMN locale TEXT NOT NULL DEFAULT 'en';

CREATE TABLE pipeline_template_locales (
    template_id TEXT        NOT NULL REFERENCES pipeline_templates (template_id) ON DELETE CASCADE,
    locale      TEXT        NOT NULL,
    subject     TEXT,
    text        TEXT        NOT NULL,
    html        TEXT,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (template_id, locale)
);

CREATE TABLE pipeline_user_locales (
    user_id    TEXT        PRIMARY KEY,
    locale     TEXT        NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
