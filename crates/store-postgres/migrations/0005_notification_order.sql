-- Feeds page in the order notifications were added, not by id: an event applied late (a retry,
-- a slow consumer) has an older id but must not land behind a reader's cursor.
ALTER TABLE notifications ADD COLUMN seq BIGSERIAL;
CREATE INDEX notifications_by_user_seq ON notifications (user_id, seq);
