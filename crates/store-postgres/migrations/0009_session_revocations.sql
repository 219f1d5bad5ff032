-- Sessions are signed tokens checked in memory by every node; what a node must still learn
-- is which sessions were ended early (logout, a ban). Kept until the token would have expired
-- anyway, so a node that starts reads the whole set in one query.
CREATE TABLE session_revocations (
    session_id TEXT   PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

CREATE INDEX session_revocations_by_expiry ON session_revocations (expires_at);

-- Secrets shared by every node of a deployment (the session signing key), written once.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
