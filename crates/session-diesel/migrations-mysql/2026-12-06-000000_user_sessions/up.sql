-- User sessions on MySQL 8.0+ / MariaDB 10.6+, keyed by the token's SHA-256 (the public handle);
-- the token itself is never stored. Instants are epoch milliseconds: no server or session time
-- zone can shift them, and the store's clock (the policy's) is the only one that judges expiry.
-- Handles and user ids are VARBINARY so they compare byte for byte: a text collation would match
-- `bob` with `Bob` (case-insensitive collations) or with `bob ` (PAD SPACE ones).
CREATE TABLE user_sessions (
    handle                 VARBINARY(96)   NOT NULL PRIMARY KEY,
    user_id                VARBINARY(4096) NOT NULL,
    company_name           TEXT            NOT NULL,
    email                  TEXT            NOT NULL,
    is_root                BOOLEAN         NOT NULL,
    remember_me            BOOLEAN         NOT NULL,
    attributes             MEDIUMTEXT      NOT NULL,
    created_at_ms          BIGINT          NOT NULL,
    last_seen_at_ms        BIGINT          NOT NULL,
    idle_expires_at_ms     BIGINT          NOT NULL,
    absolute_expires_at_ms BIGINT          NOT NULL,
    version                BIGINT          NOT NULL,
    CONSTRAINT user_sessions_idle_within_absolute CHECK (idle_expires_at_ms <= absolute_expires_at_ms),
    -- list_by_user / delete_by_user / the per-user cap (a prefix: a key holds at most 3072 bytes;
    -- the full id is still compared).
    INDEX user_sessions_user_idx (user_id(255), idle_expires_at_ms),
    -- purge_expired: the idle expiry is never after the absolute one, so it alone orders expiry.
    INDEX user_sessions_expiry_idx (idle_expires_at_ms)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- One row per user who has signed in under a per-user cap: a capped create locks its user's row
-- for the length of its transaction, so concurrent sign-ins of one user take turns (the role of
-- PostgreSQL's transaction-scoped advisory lock). Keyed by the SHA-256 of the user id.
CREATE TABLE user_session_turns (
    user_key BINARY(32) NOT NULL PRIMARY KEY
) ENGINE = InnoDB;
