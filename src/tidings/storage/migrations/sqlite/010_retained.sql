-- How many notifications retention removed from a device's queue while they waited in it: told
-- to the device (queueGap, reason "retention") when it next opens its queue.
ALTER TABLE devices ADD COLUMN retained INTEGER NOT NULL DEFAULT 0;
