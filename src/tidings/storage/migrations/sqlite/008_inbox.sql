-- The inbox: a notification may carry a category, and is read and archived beside seen.
ALTER TABLE notifications ADD COLUMN category TEXT;
ALTER TABLE notifications ADD COLUMN read_date TEXT;
ALTER TABLE notifications ADD COLUMN archived_date TEXT;
