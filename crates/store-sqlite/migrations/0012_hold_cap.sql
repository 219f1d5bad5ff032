-- The denial-of-inventory guard: the device a hold was reserved from, so unpaid holds open at
-- once can be counted per device as well as per account, and holds that lapsed unpaid can be
-- listed per account and per device (the hoarders).
ALTER TABLE holds ADD COLUMN device_id TEXT;

CREATE INDEX holds_open_by_user ON holds (user_id, expires_at) WHERE state = 'active';
CREATE INDEX holds_open_by_device ON holds (device_id, expires_at)
    WHERE state = 'active' AND device_id IS NOT NULL;
CREATE INDEX holds_lapsed_by_user ON holds (user_id) WHERE state = 'expired';
CREATE INDEX holds_lapsed_by_device ON holds (device_id)
    WHERE state = 'expired' AND device_id IS NOT NULL;
