-- The events table doubles as the outbox: the dispatcher hands each event to the plugins and
-- stamps dispatched_at once every plugin is done with it. Undispatched events are found by a
-- partial index, which stays small however long the log grows.
ALTER TABLE events ADD COLUMN dispatched_at BIGINT;
UPDATE events SET dispatched_at = ts;
CREATE INDEX idx_events_undispatched ON events (seq) WHERE dispatched_at IS NULL;
