-- The transactional outbox: events about buyers' orders, written in the same transaction as
-- the change they report, then relayed to the bus at least once by whichever node claims them.
--   * lease_until: a relay that claims an event leases it until then; the others skip it (and
--     skip rows another relay is claiming right now: FOR UPDATE SKIP LOCKED) until the lease
--     lapses (0 = never claimed);
--   * delivered_at: set once the bus has confirmed the event; it is never claimed again.
-- Not partitioned: relays read it across all buyers, oldest first.
CREATE TABLE outbox (
    id           TEXT   PRIMARY KEY,
    user_id      TEXT   NOT NULL,
    kind         TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    data_json    JSONB  NOT NULL,
    lease_until  BIGINT NOT NULL DEFAULT 0,
    delivered_at BIGINT
);

-- What the relays scan, oldest first: only the events still waiting, so the index stays as
-- small as the backlog however long the table grows.
CREATE INDEX outbox_undelivered ON outbox (id) WHERE delivered_at IS NULL;
