-- Client metadata (ADR 0030): when the user last proved who they are (epoch ms), the device label
-- and the address at sign-in. Additive: rows the previous release writes during a rolling deploy
-- leave `authenticated_at_ms` NULL, read as `created_at_ms` (authenticated at sign-in), and no
-- device metadata. `device` is TEXT like `email` (the policy's field limit is configurable, up to
-- 4096 bytes). MySQL gives a TEXT column a default only as an expression, and only from 8.0.13,
-- so `device` is nullable instead, NULL read as no device: the previous release's inserts, which
-- do not name it, still pass in strict mode. `address` holds `IpAddr`'s text form, at most 45
-- characters (an IPv6 address with an embedded IPv4 one).
ALTER TABLE user_sessions
    ADD COLUMN authenticated_at_ms BIGINT      NULL,
    ADD COLUMN device              TEXT        NULL,
    ADD COLUMN address             VARCHAR(45) NULL;
