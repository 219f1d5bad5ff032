-- The waiting room's durable log: one row per buyer per sale, written in batches (a join is
-- acknowledged once its batch has committed) and read back in one pass to rebuild the room
-- after a restart. A row only moves forward: a new rank (joined again after a lapse) or a
-- later stage (0 waiting, 1 admitted, 2 used / expired / lost) at the same rank; see
-- `LoggedEntry::supersedes`. `rank` is NULL for a pre-queue entry whose rank the draw gives
-- (recomputed from the drawn order kept in `room_values`).
CREATE TABLE room_log (
    id          INTEGER PRIMARY KEY,
    sale_id     TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    device_id   TEXT    NOT NULL,
    rank        INTEGER,
    pre_seq     INTEGER,
    stage       INTEGER NOT NULL CHECK (stage BETWEEN 0 AND 2),
    state       TEXT    NOT NULL CHECK (state IN ('waiting', 'admitted', 'used', 'expired', 'lost')),
    until_ms    INTEGER NOT NULL,
    lottery_won INTEGER NOT NULL,
    units       INTEGER NOT NULL CHECK (units >= 0),
    UNIQUE (sale_id, user_id)
);

-- The rebuild reads a sale's rows in the order they were first written.
CREATE INDEX room_log_by_sale ON room_log (sale_id, id);

-- Values kept beside the log: per sale (`scope` = the sale id) the draw seeds, the room's
-- rules, the drawn order and the published draw records; per deployment (`scope` = '*') the
-- admission signing key.
CREATE TABLE room_values (
    scope TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
