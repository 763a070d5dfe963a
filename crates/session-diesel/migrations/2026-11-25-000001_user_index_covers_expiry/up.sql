-- The per-user index also carries the idle expiry, so `user_id = $1 AND idle_expires_at > $now`
-- is one index range. With only (user_id, created_at), a generic plan of the prepared statement,
-- made before the table had statistics, AND-ed in the expiry index, which matches every live
-- session: list_by_user fell from 6,486 to 1,509/s in the benchmark (ADR 0008).
CREATE INDEX user_sessions_user_expiry_idx ON user_sessions (user_id, idle_expires_at);
DROP INDEX user_sessions_user_idx;
