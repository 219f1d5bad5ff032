-- Outgoing webhooks to the shop's own systems: one row per order event, queued when the event
-- takes effect, sent at least once by whichever sender leases it.
--   * event_id: the outbox event's id; the primary key makes queueing idempotent, so a
--     redelivered event never queues a second webhook;
--   * payload_json: the event's data, sent as the body's `data`;
--   * attempts / next_attempt_at / last_error: failed attempts so far, when the next one is
--     due (the backoff), and why the last one failed;
--   * lease_until: a sender that claims a delivery leases it until then; others skip it until
--     the lease lapses (0 = not leased);
--   * delivered_at: set once the shop answered 2xx; it is never claimed again.
CREATE TABLE webhook_deliveries (
    event_id        TEXT    PRIMARY KEY,
    kind            TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    payload_json    TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER NOT NULL DEFAULT 0,
    delivered_at    INTEGER,
    last_error      TEXT
) STRICT;

-- What the senders scan, oldest first: only the deliveries still waiting.
CREATE INDEX webhook_deliveries_waiting ON webhook_deliveries (event_id)
    WHERE delivered_at IS NULL;
