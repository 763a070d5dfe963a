-- User sessions in SQLite, keyed by the token's SHA-256 (the public handle); the token itself is
-- never stored. Instants are epoch milliseconds judged by the store's (the policy's) clock.
-- TEXT compares with the BINARY collation, byte for byte, which orders `scan`'s keyset.
CREATE TABLE user_sessions (
    handle                 TEXT    NOT NULL PRIMARY KEY,
    user_id                TEXT    NOT NULL,
    company_name           TEXT    NOT NULL,
    email                  TEXT    NOT NULL,
    is_root                BOOLEAN NOT NULL,
    remember_me            BOOLEAN NOT NULL,
    attributes             TEXT    NOT NULL,
    created_at_ms          BIGINT  NOT NULL,
    last_seen_at_ms        BIGINT  NOT NULL,
    idle_expires_at_ms     BIGINT  NOT NULL,
    absolute_expires_at_ms BIGINT  NOT NULL,
    version                BIGINT  NOT NULL,
    CHECK (idle_expires_at_ms <= absolute_expires_at_ms)
) WITHOUT ROWID;

-- list_by_user, delete_by_user and the per-user cap.
CREATE INDEX user_sessions_user_idx ON user_sessions (user_id, idle_expires_at_ms);
-- purge_expired: the idle expiry is never after the absolute one, so it alone orders expiry.
CREATE INDEX user_sessions_expiry_idx ON user_sessions (idle_expires_at_ms);
