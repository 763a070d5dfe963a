CREATE INDEX user_sessions_user_idx ON user_sessions (user_id, created_at);
DROP INDEX user_sessions_user_expiry_idx;
