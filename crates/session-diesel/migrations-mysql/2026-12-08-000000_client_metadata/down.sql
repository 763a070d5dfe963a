ALTER TABLE user_sessions DROP COLUMN address, DROP COLUMN device, DROP COLUMN authenticated_at_ms;
