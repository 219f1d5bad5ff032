-- In-app notifications: each buyer's own feed, read newest-last by id (ULIDs sort by time).
CREATE TABLE notifications (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    data_json   TEXT NOT NULL
);
CREATE INDEX notifications_by_user ON notifications (user_id, id);
