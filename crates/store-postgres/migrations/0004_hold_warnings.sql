-- Whether the buyer was warned that this hold is about to lapse (once per hold).
ALTER TABLE holds ADD COLUMN expiry_warned BOOLEAN NOT NULL DEFAULT false;
