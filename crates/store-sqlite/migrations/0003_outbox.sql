-- The transactional outbox: events about buyers' orders, written in the same transaction as
-- the change they report, then relayed to the bus at least once.
--   * lease_until: a relay that claims an event leases it until then; others skip it until the
--     lease lapses (0 = never claimed);
--   * delivered_at: set once the bus has confirmed the event; it is never claimed again.
CREATE TABLE outbox (
    id           TEXT    PRIMARY KEY,
    user_id      TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    data_json    TEXT    NOT NULL,
    lease_until  INTEGER NOT NULL DEFAULT 0,
    delivered_at INTEGER
) STRICT;

-- What the relay scans, oldest first: only the events still waiting.
CREATE INDEX outbox_undelivered ON outbox (id) WHERE delivered_at IS NULL;
