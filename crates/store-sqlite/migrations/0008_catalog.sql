-- The catalog around sales: products reused across sales, drops grouping several sales under
-- one schedule and one per-buyer limit, and full-text search over names.

CREATE TABLE products (
    id            TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    description   TEXT    NOT NULL,
    category      TEXT    NOT NULL,
    -- A JSON array of strings.
    image_urls    TEXT    NOT NULL,
    regular_price INTEGER NOT NULL CHECK (regular_price >= 0),
    currency      TEXT    NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('active', 'out_of_stock', 'discontinued')),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

CREATE INDEX products_by_category ON products (category, id);

CREATE TABLE drops (
    id             TEXT    PRIMARY KEY,
    name           TEXT    NOT NULL,
    description    TEXT    NOT NULL,
    category       TEXT    NOT NULL,
    starts_at      INTEGER NOT NULL,
    ends_at        INTEGER NOT NULL,
    -- NULL: no limit across the drop, only each sale's own.
    per_user_limit INTEGER CHECK (per_user_limit IS NULL OR per_user_limit >= 1),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) STRICT;

CREATE INDEX drops_by_category ON drops (category, id);

-- A sale's drop is set when it is created and never changes: the judge finds a drop's sales by
-- it before taking their locks.
ALTER TABLE sales ADD COLUMN product_id TEXT REFERENCES products (id);
ALTER TABLE sales ADD COLUMN drop_id TEXT REFERENCES drops (id);
ALTER TABLE sales ADD COLUMN category TEXT NOT NULL DEFAULT '';

CREATE INDEX sales_by_drop ON sales (drop_id, id) WHERE drop_id IS NOT NULL;
CREATE INDEX sales_by_category ON sales (category, id);

-- Full-text indexes of names, keyed by id (not rowid, which VACUUM may renumber on tables
-- without an INTEGER PRIMARY KEY), kept in step by triggers. Counter updates on `sales` do not
-- name the `name` column, so the reserve path never fires them.
CREATE VIRTUAL TABLE sales_search USING fts5(id UNINDEXED, name, tokenize = 'unicode61');
CREATE VIRTUAL TABLE drops_search USING fts5(id UNINDEXED, name, tokenize = 'unicode61');
CREATE VIRTUAL TABLE products_search USING fts5(id UNINDEXED, name, tokenize = 'unicode61');

INSERT INTO sales_search (id, name) SELECT id, name FROM sales;

CREATE TRIGGER sales_search_insert AFTER INSERT ON sales BEGIN
    INSERT INTO sales_search (id, name) VALUES (new.id, new.name);
END;
CREATE TRIGGER sales_search_rename AFTER UPDATE OF name ON sales
    WHEN old.name IS NOT new.name BEGIN
    DELETE FROM sales_search WHERE id = old.id;
    INSERT INTO sales_search (id, name) VALUES (new.id, new.name);
END;

CREATE TRIGGER drops_search_insert AFTER INSERT ON drops BEGIN
    INSERT INTO drops_search (id, name) VALUES (new.id, new.name);
END;
CREATE TRIGGER drops_search_rename AFTER UPDATE OF name ON drops
    WHEN old.name IS NOT new.name BEGIN
    DELETE FROM drops_search WHERE id = old.id;
    INSERT INTO drops_search (id, name) VALUES (new.id, new.name);
END;

CREATE TRIGGER products_search_insert AFTER INSERT ON products BEGIN
    INSERT INTO products_search (id, name) VALUES (new.id, new.name);
END;
CREATE TRIGGER products_search_rename AFTER UPDATE OF name ON products
    WHEN old.name IS NOT new.name BEGIN
    DELETE FROM products_search WHERE id = old.id;
    INSERT INTO products_search (id, name) VALUES (new.id, new.name);
END;
