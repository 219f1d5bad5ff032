-- Whether the buyer was warned that this hold is about to lapse (once per hold).
ALTER TABLE holds ADD COLUMN expiry_warned INTEGER NOT NULL DEFAULT 0 CHECK (expiry_warned IN (0, 1));
