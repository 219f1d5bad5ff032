-- The money move the judge decided but the gateway has not acknowledged yet: written in the
-- same transaction that confirms, fails, cancels or refunds the order, cleared once the
-- gateway answered. A crash in between leaves it here for the money reconciliation.
ALTER TABLE payments ADD COLUMN gateway_owed TEXT
    CHECK (gateway_owed IN ('capture', 'void', 'refund', 'capture_refund'));
CREATE INDEX payments_owed ON payments (updated_at) WHERE gateway_owed IS NOT NULL;
-- Pending orders are looked for by age when they may be stuck.
CREATE INDEX orders_pending ON orders (created_at) WHERE status = 'pending_payment';
