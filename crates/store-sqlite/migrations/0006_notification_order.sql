-- Feeds page in the order notifications were added (rowid), not by id: an event applied late
-- (a retry, a slow consumer) has an older id but must not land behind a reader's cursor.
CREATE INDEX notifications_by_user_added ON notifications (user_id);
