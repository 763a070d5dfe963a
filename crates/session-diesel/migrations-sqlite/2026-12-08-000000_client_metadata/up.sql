-- Client metadata (ADR 0030): when the user last proved who they are (epoch ms), the device label
-- and the address at sign-in (`IpAddr`'s text form). Additive: a row written without them (by the
-- previous release, a process still open on the file) leaves `authenticated_at_ms` NULL, read as
-- `created_at_ms` (authenticated at sign-in), and no device metadata.
ALTER TABLE user_sessions ADD COLUMN authenticated_at_ms BIGINT NULL;
ALTER TABLE user_sessions ADD COLUMN device TEXT NOT NULL DEFAULT '';
ALTER TABLE user_sessions ADD COLUMN address TEXT NULL;
