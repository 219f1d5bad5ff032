-- A keyed checkout's order and payment ids are fixed when its key is first claimed, so a
-- retry after a crash finds the order the first attempt committed (claims from before this
-- migration get ids when next taken over).
ALTER TABLE idempotency ADD COLUMN order_id TEXT;
ALTER TABLE idempotency ADD COLUMN payment_id TEXT;
