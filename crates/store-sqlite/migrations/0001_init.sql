-- Stampede's embedded judge: the whole schema.
--
-- Invariants the schema itself enforces, so that a bug in the adapter aborts its transaction
-- instead of committing an oversell:
--   * sales: available + held + sold = total_stock, each term >= 0;
--   * user_units: units >= 0;
--   * holds: quantity >= 1, state is one of the four words;
--   * audit: append-only (UPDATE and DELETE raise).
-- Time is INTEGER milliseconds since the epoch, money INTEGER minor units, ids ULID TEXT.

CREATE TABLE users (
    id            TEXT    PRIMARY KEY,
    email         TEXT    NOT NULL UNIQUE,
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('buyer', 'admin')),
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE sessions (
    token_hash TEXT    PRIMARY KEY,
    user_id    TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE INDEX sessions_by_user ON sessions (user_id);

CREATE TABLE sales (
    id             TEXT    PRIMARY KEY,
    name           TEXT    NOT NULL,
    description    TEXT    NOT NULL,
    original_price INTEGER NOT NULL,
    sale_price     INTEGER NOT NULL,
    currency       TEXT    NOT NULL,
    starts_at      INTEGER NOT NULL,
    ends_at        INTEGER NOT NULL,
    per_user_limit INTEGER NOT NULL CHECK (per_user_limit >= 0),
    queue_required INTEGER NOT NULL,
    hold_seconds   INTEGER NOT NULL CHECK (hold_seconds >= 0),
    control        TEXT    NOT NULL CHECK (control IN ('running', 'paused', 'stopped')),
    total_stock    INTEGER NOT NULL CHECK (total_stock >= 0),
    available      INTEGER NOT NULL CHECK (available >= 0),
    held           INTEGER NOT NULL CHECK (held >= 0),
    sold           INTEGER NOT NULL CHECK (sold >= 0),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    CHECK (available + held + sold = total_stock)
) STRICT;

CREATE INDEX sales_by_created ON sales (created_at, id);

-- Units each buyer holds or owns in each sale, kept in the same transactions as the holds and
-- orders that move them, so the judge reads one row instead of summing.
CREATE TABLE user_units (
    sale_id TEXT    NOT NULL REFERENCES sales (id),
    user_id TEXT    NOT NULL,
    units   INTEGER NOT NULL CHECK (units >= 0),
    PRIMARY KEY (sale_id, user_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE orders (
    id         TEXT    PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    status     TEXT    NOT NULL CHECK (status IN
                   ('pending_payment', 'confirmed', 'payment_failed', 'cancelled', 'refunded')),
    total      INTEGER NOT NULL CHECK (total >= 0),
    currency   TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE INDEX orders_by_user ON orders (user_id, created_at);

-- user_id has no foreign key on purpose: it comes from an authenticated session, and one bad
-- row must never fail a whole group-commit batch.
CREATE TABLE holds (
    id         TEXT    PRIMARY KEY,
    sale_id    TEXT    NOT NULL REFERENCES sales (id),
    user_id    TEXT    NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity >= 1),
    unit_price INTEGER NOT NULL,
    currency   TEXT    NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('active', 'converted', 'released', 'expired')),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    -- The order paying for this hold while that order is pending_payment.
    order_id   TEXT    REFERENCES orders (id)
) STRICT;

CREATE INDEX holds_by_user ON holds (user_id, created_at);
CREATE INDEX holds_by_sale_state ON holds (sale_id, state);
CREATE INDEX holds_due ON holds (expires_at) WHERE state = 'active';

CREATE TABLE order_items (
    order_id   TEXT    NOT NULL REFERENCES orders (id),
    hold_id    TEXT    NOT NULL REFERENCES holds (id),
    sale_id    TEXT    NOT NULL REFERENCES sales (id),
    quantity   INTEGER NOT NULL CHECK (quantity >= 1),
    unit_price INTEGER NOT NULL,
    PRIMARY KEY (order_id, hold_id)
) STRICT;

CREATE INDEX order_items_by_sale ON order_items (sale_id);

-- One payment attempt per order: a retry after a decline is a new order.
CREATE TABLE payments (
    id             TEXT    PRIMARY KEY,
    order_id       TEXT    NOT NULL UNIQUE REFERENCES orders (id),
    status         TEXT    NOT NULL CHECK (status IN
                       ('pending', 'authorized', 'captured', 'declined', 'voided', 'refunded')),
    method         TEXT    NOT NULL,
    reference      TEXT    UNIQUE,
    amount         INTEGER NOT NULL,
    failure_reason TEXT,
    updated_at     INTEGER NOT NULL
) STRICT;

-- status is NULL while the request is in progress.
CREATE TABLE idempotency (
    user_id      TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    status       INTEGER,
    body         TEXT,
    started_at   INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
) STRICT, WITHOUT ROWID;

CREATE TABLE webhook_events (
    event_id    TEXT    PRIMARY KEY,
    received_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE audit (
    id          TEXT    PRIMARY KEY,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    before_json TEXT,
    after_json  TEXT
) STRICT;

CREATE INDEX audit_by_actor ON audit (actor, id);
CREATE INDEX audit_by_action ON audit (action, id);

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only');
END;

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only');
END;
