-- The inbox's counts beside the unseen one: unread, and the unseen count of each category (a
-- JSON object without zero entries, NULL when empty). Filled from the notifications there are.
ALTER TABLE user_counts ADD COLUMN unread INTEGER NOT NULL DEFAULT 0 CHECK (unread >= 0);
ALTER TABLE user_counts ADD COLUMN categories TEXT;
UPDATE user_counts SET
    unread = (SELECT count(*) FROM notifications AS n
              WHERE n.user_id = user_counts.user_id AND n.read_date IS NULL),
    categories = (SELECT nullif(json_group_object(category, k), '{}') FROM
                  (SELECT category, count(*) AS k FROM notifications AS n
                   WHERE n.user_id = user_counts.user_id AND n.seen_date IS NULL
                   AND n.category IS NOT NULL GROUP BY category));
