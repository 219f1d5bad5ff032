-- Account administration: a disabled or banned account cannot log in and has no sessions.
ALTER TABLE users ADD COLUMN status TEXT NOT NULL DEFAULT 'active'
    CHECK (status IN ('active', 'disabled', 'banned'));
ALTER TABLE users ADD COLUMN status_reason TEXT NOT NULL DEFAULT '';
