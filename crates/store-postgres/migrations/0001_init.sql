-- Stampede's cluster judge: the whole schema, on PostgreSQL.
--
-- Same invariants as the SQLite schema, enforced by the database itself so that a bug in the
-- adapter aborts its transaction instead of committing an oversell:
--   * sales: available + held + sold = total_stock, each term >= 0;
--   * user_units: units >= 0;
--   * holds: quantity >= 1, state is one of the four words;
--   * audit: append-only (UPDATE and DELETE raise).
-- Time is BIGINT milliseconds since the epoch, money BIGINT minor units, ids ULID TEXT. Every
-- integer is BIGINT so the adapter decodes one integer type.
--
-- Holds, orders and order items are hash-partitioned by user_id (the write-heavy, per-buyer
-- tables). A primary key on a partitioned table must include the partition key, so their keys
-- are (user_id, id); every read of them knows the user. Global uniqueness of hold ids (the
-- group commit's duplicate detection) lives in the small unpartitioned `hold_ids` table, and
-- orders are found without their user through `payments` (one per order, unpartitioned).

CREATE TABLE users (
    id            TEXT   PRIMARY KEY,
    email         TEXT   NOT NULL UNIQUE,
    name          TEXT   NOT NULL,
    role          TEXT   NOT NULL CHECK (role IN ('buyer', 'admin')),
    password_hash TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE sessions (
    token_hash TEXT   PRIMARY KEY,
    user_id    TEXT   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX sessions_by_user ON sessions (user_id);

CREATE TABLE sales (
    id             TEXT    PRIMARY KEY,
    name           TEXT    NOT NULL,
    description    TEXT    NOT NULL,
    original_price BIGINT  NOT NULL,
    sale_price     BIGINT  NOT NULL,
    currency       TEXT    NOT NULL,
    starts_at      BIGINT  NOT NULL,
    ends_at        BIGINT  NOT NULL,
    per_user_limit BIGINT  NOT NULL CHECK (per_user_limit >= 0),
    queue_required BOOLEAN NOT NULL,
    hold_seconds   BIGINT  NOT NULL CHECK (hold_seconds >= 0),
    control        TEXT    NOT NULL CHECK (control IN ('running', 'paused', 'stopped')),
    total_stock    BIGINT  NOT NULL CHECK (total_stock >= 0),
    available      BIGINT  NOT NULL CHECK (available >= 0),
    held           BIGINT  NOT NULL CHECK (held >= 0),
    sold           BIGINT  NOT NULL CHECK (sold >= 0),
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL,
    CHECK (available + held + sold = total_stock)
);

CREATE INDEX sales_by_created ON sales (created_at, id);

-- Units each buyer holds or owns in each sale, kept in the same transactions as the holds and
-- orders that move them (always under the sale row's lock), so the judge reads one row.
CREATE TABLE user_units (
    sale_id TEXT   NOT NULL REFERENCES sales (id),
    user_id TEXT   NOT NULL,
    units   BIGINT NOT NULL CHECK (units >= 0),
    PRIMARY KEY (sale_id, user_id)
);

CREATE TABLE orders (
    id         TEXT   NOT NULL,
    user_id    TEXT   NOT NULL,
    status     TEXT   NOT NULL CHECK (status IN
                   ('pending_payment', 'confirmed', 'payment_failed', 'cancelled', 'refunded')),
    total      BIGINT NOT NULL CHECK (total >= 0),
    currency   TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, id)
) PARTITION BY HASH (user_id);

CREATE INDEX orders_by_user ON orders (user_id, created_at);

-- user_id has no foreign key on purpose: it comes from an authenticated session, and one bad
-- row must never fail a whole group-commit batch.
CREATE TABLE holds (
    id         TEXT   NOT NULL,
    sale_id    TEXT   NOT NULL REFERENCES sales (id),
    user_id    TEXT   NOT NULL,
    quantity   BIGINT NOT NULL CHECK (quantity >= 1),
    unit_price BIGINT NOT NULL,
    currency   TEXT   NOT NULL,
    state      TEXT   NOT NULL CHECK (state IN ('active', 'converted', 'released', 'expired')),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    -- The order paying for this hold while that order is pending_payment.
    order_id   TEXT,
    PRIMARY KEY (user_id, id),
    FOREIGN KEY (user_id, order_id) REFERENCES orders (user_id, id)
) PARTITION BY HASH (user_id);

CREATE INDEX holds_by_user ON holds (user_id, created_at);
CREATE INDEX holds_by_sale_state ON holds (sale_id, state);
CREATE INDEX holds_due ON holds (expires_at) WHERE state = 'active';

-- Every hold id ever issued, with its owner: the global uniqueness the partitioned `holds`
-- key cannot give, and how a retried reservation finds its hold.
CREATE TABLE hold_ids (
    id      TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    sale_id TEXT NOT NULL REFERENCES sales (id)
);

CREATE TABLE order_items (
    order_id   TEXT   NOT NULL,
    user_id    TEXT   NOT NULL,
    hold_id    TEXT   NOT NULL,
    sale_id    TEXT   NOT NULL REFERENCES sales (id),
    -- Checkout order of the lines.
    position   BIGINT NOT NULL,
    quantity   BIGINT NOT NULL CHECK (quantity >= 1),
    unit_price BIGINT NOT NULL,
    PRIMARY KEY (user_id, order_id, hold_id),
    FOREIGN KEY (user_id, order_id) REFERENCES orders (user_id, id),
    FOREIGN KEY (user_id, hold_id) REFERENCES holds (user_id, id)
) PARTITION BY HASH (user_id);

CREATE INDEX order_items_by_sale ON order_items (sale_id);

DO $$
BEGIN
    FOR i IN 0..7 LOOP
        EXECUTE format('CREATE TABLE orders_p%s PARTITION OF orders '
                       'FOR VALUES WITH (MODULUS 8, REMAINDER %s)', i, i);
        EXECUTE format('CREATE TABLE holds_p%s PARTITION OF holds '
                       'FOR VALUES WITH (MODULUS 8, REMAINDER %s)', i, i);
        EXECUTE format('CREATE TABLE order_items_p%s PARTITION OF order_items '
                       'FOR VALUES WITH (MODULUS 8, REMAINDER %s)', i, i);
    END LOOP;
END
$$;

-- One payment attempt per order: a retry after a decline is a new order. Unpartitioned, so an
-- order is found by its id or its gateway reference without knowing its user.
CREATE TABLE payments (
    id             TEXT   PRIMARY KEY,
    order_id       TEXT   NOT NULL UNIQUE,
    user_id        TEXT   NOT NULL,
    status         TEXT   NOT NULL CHECK (status IN
                       ('pending', 'authorized', 'captured', 'declined', 'voided', 'refunded')),
    method         TEXT   NOT NULL,
    reference      TEXT   UNIQUE,
    amount         BIGINT NOT NULL,
    failure_reason TEXT,
    updated_at     BIGINT NOT NULL,
    FOREIGN KEY (user_id, order_id) REFERENCES orders (user_id, id)
);

-- status is NULL while the request is in progress.
CREATE TABLE idempotency (
    user_id      TEXT   NOT NULL,
    key          TEXT   NOT NULL,
    request_hash TEXT   NOT NULL,
    status       BIGINT,
    body         TEXT,
    started_at   BIGINT NOT NULL,
    PRIMARY KEY (user_id, key)
);

CREATE TABLE webhook_events (
    event_id    TEXT   PRIMARY KEY,
    received_at BIGINT NOT NULL
);

CREATE TABLE audit (
    id          TEXT   PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    target      TEXT   NOT NULL,
    before_json JSONB,
    after_json  JSONB
);

CREATE INDEX audit_by_actor ON audit (actor, id);
CREATE INDEX audit_by_action ON audit (action, id);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit is append-only';
END
$$;

CREATE TRIGGER audit_no_update_or_delete BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();

-- In-app notifications: each buyer's own feed, read newest-last by id (ULIDs sort by time).
CREATE TABLE notifications (
    id         TEXT   PRIMARY KEY,
    user_id    TEXT   NOT NULL,
    kind       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    data_json  JSONB  NOT NULL
);

CREATE INDEX notifications_by_user ON notifications (user_id, id);
