-- The catalog around sales: products reused across sales, drops grouping several sales under
-- one schedule and one per-buyer limit, and full-text search over names. Names are indexed as
-- their runs of letters and digits (everything else becomes a space, so the parser cannot read
-- "Air-90" as "air" and "-90") under the 'simple' configuration (no stemming, no stop words):
-- a search word then matches the start of a name word exactly as with the embedded store's
-- tokenizer.

CREATE TABLE products (
    id            TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    description   TEXT    NOT NULL,
    category      TEXT    NOT NULL,
    -- A JSON array of strings.
    image_urls    TEXT    NOT NULL,
    regular_price BIGINT  NOT NULL CHECK (regular_price >= 0),
    currency      TEXT    NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('active', 'out_of_stock', 'discontinued')),
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);

CREATE INDEX products_by_category ON products (category, id);
CREATE INDEX products_search ON products
    USING GIN (to_tsvector('simple', regexp_replace(name, '[^[:alnum:]]+', ' ', 'g')));

CREATE TABLE drops (
    id             TEXT    PRIMARY KEY,
    name           TEXT    NOT NULL,
    description    TEXT    NOT NULL,
    category       TEXT    NOT NULL,
    starts_at      BIGINT  NOT NULL,
    ends_at        BIGINT  NOT NULL,
    -- NULL: no limit across the drop, only each sale's own.
    per_user_limit BIGINT  CHECK (per_user_limit IS NULL OR per_user_limit >= 1),
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL
);

CREATE INDEX drops_by_category ON drops (category, id);
CREATE INDEX drops_search ON drops
    USING GIN (to_tsvector('simple', regexp_replace(name, '[^[:alnum:]]+', ' ', 'g')));

-- A sale's drop is set when it is created and never changes: the judge finds a drop's sales by
-- it before taking their locks.
ALTER TABLE sales ADD COLUMN product_id TEXT REFERENCES products (id);
ALTER TABLE sales ADD COLUMN drop_id TEXT REFERENCES drops (id);
ALTER TABLE sales ADD COLUMN category TEXT NOT NULL DEFAULT '';

CREATE INDEX sales_by_drop ON sales (drop_id, id) WHERE drop_id IS NOT NULL;
CREATE INDEX sales_by_category ON sales (category, id);
CREATE INDEX sales_search ON sales
    USING GIN (to_tsvector('simple', regexp_replace(name, '[^[:alnum:]]+', ' ', 'g')));
