ALTER TABLE user_sessions DROP COLUMN address;
ALTER TABLE user_sessions DROP COLUMN device;
ALTER TABLE user_sessions DROP COLUMN authenticated_at_ms;
