-- The inbox's "archived" pages: a small index (rows enter it when archived, none at insert),
-- so a user's archive is read from it rather than by scanning the table when the planner
-- takes archived rows for rare.
CREATE INDEX notifications_archived ON notifications (user_id, seq)
    WHERE archived_date IS NOT NULL;
-- Statistics for the inbox's columns (added by 009 with none): until autovacuum analyzes the
-- table, the planner would take every notification for archived.
ANALYZE notifications;
