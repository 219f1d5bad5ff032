-- The holds' key starts with the buyer, so `holds_by_user` repeated it: a second index by buyer
-- that every reservation wrote to (a page each for the different buyers of a batch) and that no
-- read needed.
DROP INDEX holds_by_user;
