-- User sessions, keyed by the token's SHA-256 (the public handle); the token itself is never stored.
CREATE TABLE user_sessions (
    handle              TEXT        PRIMARY KEY,
    user_id             TEXT        NOT NULL,
    company_name        TEXT        NOT NULL,
    email               TEXT        NOT NULL,
    is_root             BOOLEAN     NOT NULL,
    remember_me         BOOLEAN     NOT NULL,
    attributes          TEXT        NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    last_seen_at        TIMESTAMPTZ NOT NULL,
    idle_expires_at     TIMESTAMPTZ NOT NULL,
    absolute_expires_at TIMESTAMPTZ NOT NULL,
    version             BIGINT      NOT NULL,
    CHECK (idle_expires_at <= absolute_expires_at)
);

-- list_by_user / delete_by_user / the per-user cap.
CREATE INDEX user_sessions_user_idx ON user_sessions (user_id, created_at);
-- purge_expired: the idle expiry is never after the absolute one, so it alone orders expiry.
CREATE INDEX user_sessions_expiry_idx ON user_sessions (idle_expires_at);
