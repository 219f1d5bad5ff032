-- Every reservation wrote its hold into two indexes by buyer, and an index by buyer takes a page
-- of its own for each buyer of a batch (the buyers of a flash sale are all different): the
-- write-ahead log grew by a page per hold for `holds_by_user` alone. What reads holds by buyer
-- reads the open ones (`holds_open_by_user`) or those of one pending order, which only the holds
-- in an order carry (`order_id`), so that is all this index keeps.
DROP INDEX holds_by_user;
CREATE INDEX holds_in_orders ON holds (user_id, order_id) WHERE order_id IS NOT NULL;
