-- The demo's items (created with IF NOT EXISTS: demos before migrations made it on start-up).
CREATE TABLE IF NOT EXISTS db_items (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

-- Accounts. `email` is stored lower-cased; `password_hash` is an argon2id PHC string.
-- `failed_attempts` counts sign-in attempts that were not (yet) successful since `attempts_since`
-- (epoch ms); a success sets it back to 0.
CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    company_name TEXT NOT NULL DEFAULT '',
    is_root BOOLEAN NOT NULL DEFAULT FALSE,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    attempts_since BIGINT NOT NULL DEFAULT 0
);
