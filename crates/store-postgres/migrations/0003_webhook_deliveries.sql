-- Outgoing webhooks to the shop's own systems: one row per order event, queued when the event
-- takes effect (on whichever node applies it), sent at least once by whichever sender leases it.
--   * event_id: the outbox event's id; the primary key makes queueing idempotent, so a
--     redelivered event never queues a second webhook;
--   * payload_json: the event's data as JSON text, sent as the body's `data` (text, not jsonb:
--     kept exactly as written);
--   * attempts / next_attempt_at / last_error: failed attempts so far, when the next one is
--     due (the backoff), and why the last one failed;
--   * lease_until: a sender that claims a delivery leases it until then; the others skip it
--     (and skip rows another sender is claiming right now: FOR UPDATE SKIP LOCKED) until the
--     lease lapses (0 = not leased);
--   * delivered_at: set once the shop answered 2xx; it is never claimed again.
-- Not partitioned: senders read it across all buyers, oldest first.
CREATE TABLE webhook_deliveries (
    event_id        TEXT   PRIMARY KEY,
    kind            TEXT   NOT NULL,
    user_id         TEXT   NOT NULL,
    payload_json    TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT NOT NULL DEFAULT 0,
    delivered_at    BIGINT,
    last_error      TEXT
);

-- What the senders scan, oldest first: only the deliveries still waiting, so the index stays
-- as small as the backlog however long the table grows.
CREATE INDEX webhook_deliveries_waiting ON webhook_deliveries (event_id)
    WHERE delivered_at IS NULL;
