-- Order items and payments carry their buyer, and items their position in checkout order, as
-- on PostgreSQL (where the buyer is the partition key): both engines then write and read
-- orders with the same statements. Rows written before are filled in from their order.
ALTER TABLE order_items ADD COLUMN user_id TEXT NOT NULL DEFAULT '';
ALTER TABLE order_items ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
UPDATE order_items
   SET user_id = (SELECT o.user_id FROM orders o WHERE o.id = order_items.order_id),
       position = rowid;
ALTER TABLE payments ADD COLUMN user_id TEXT NOT NULL DEFAULT '';
UPDATE payments SET user_id = (SELECT o.user_id FROM orders o WHERE o.id = payments.order_id);
