-- A user's quiet hours (docs/pipeline.md): a daily window in an IANA time zone in which only
-- in-app and critical deliveries are sent; the others wait until it ends.
CREATE TABLE pipeline_quiet_hours (
    user_id    TEXT PRIMARY KEY,
    timezone   TEXT NOT NULL,
    start_at   TEXT NOT NULL,  -- HH:MM, wall clock in timezone
    end_at     TEXT NOT NULL,  -- HH:MM; before start_at: the window passes midnight
    updated_at TEXT NOT NULL
);
