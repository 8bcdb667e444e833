-- The inbox's counts beside the unseen one: unread, and the unseen count of each category (an
-- object without zero entries, NULL when empty). Filled from the notifications there are.
ALTER TABLE user_counts ADD COLUMN unread INTEGER NOT NULL DEFAULT 0 CHECK (unread >= 0);
ALTER TABLE user_counts ADD COLUMN categories JSONB;
UPDATE user_counts AS c SET
    unread = (SELECT count(*) FROM notifications AS n
              WHERE n.user_id = c.user_id AND n.read_date IS NULL),
    categories = (SELECT jsonb_object_agg(category, k) FROM
                  (SELECT category, count(*) AS k FROM notifications AS n
                   WHERE n.user_id = c.user_id AND n.seen_date IS NULL
                   AND n.category IS NOT NULL GROUP BY category) AS per);
