-- Tombstones of sessions ended during a migration (ADR 0029): until `until`, an import of the
-- handle stores nothing. An import and an ending of one handle take turns on a transaction-scoped
-- advisory lock keyed by the schema and the handle, and each statement of these VOLATILE
-- functions reads a fresh snapshot (at READ COMMITTED): the later one sees the earlier one's
-- write, so an import either lands before the ending (and is removed by it) or is refused.
-- Without the lock, each could miss the other's uncommitted row and the copy would stay. Under
-- SERIALIZABLE the snapshot predates the lock, and it is PostgreSQL's serialization check that
-- keeps the two apart: one of them fails with 40001 and can be run again.
CREATE TABLE user_session_tombstones (
    handle TEXT        PRIMARY KEY,
    until  TIMESTAMPTZ NOT NULL
);

-- purge_expired removes tombstones whose instant has passed.
CREATE INDEX user_session_tombstones_until_idx ON user_session_tombstones (until);

-- The handle's turn: the advisory lock, held until the calling transaction ends.
CREATE FUNCTION user_sessions_take_handle_turn(p_handle TEXT) RETURNS VOID LANGUAGE plpgsql
VOLATILE AS $$
BEGIN
    -- Under REPEATABLE READ the snapshot predates the lock, and taking turns would protect nothing.
    IF current_setting('transaction_isolation') = 'repeatable read' THEN
        RAISE EXCEPTION 'importing or ending a session with a tombstone needs READ COMMITTED or SERIALIZABLE';
    END IF;
    PERFORM pg_advisory_xact_lock(
        hashtextextended('user_sessions.handle:' || current_schema() || ':' || p_handle, 0));
END;
$$;

-- `import`: 'ended' if the handle's tombstone stands, else the insert of `create`, which may
-- replace only a row that has expired by `p_now`: 'stored' or 'present'.
CREATE FUNCTION user_sessions_import(
    p_handle TEXT, p_user_id TEXT, p_company_name TEXT, p_email TEXT, p_is_root BOOLEAN,
    p_remember_me BOOLEAN, p_attributes TEXT, p_created_at TIMESTAMPTZ,
    p_last_seen_at TIMESTAMPTZ, p_idle_expires_at TIMESTAMPTZ, p_absolute_expires_at TIMESTAMPTZ,
    p_version BIGINT, p_now TIMESTAMPTZ
) RETURNS TEXT LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM user_sessions_take_handle_turn(p_handle);
    IF EXISTS (SELECT 1 FROM user_session_tombstones WHERE handle = p_handle AND until > p_now) THEN
        RETURN 'ended';
    END IF;
    INSERT INTO user_sessions (handle, user_id, company_name, email, is_root, remember_me,
        attributes, created_at, last_seen_at, idle_expires_at, absolute_expires_at, version)
    VALUES (p_handle, p_user_id, p_company_name, p_email, p_is_root, p_remember_me, p_attributes,
        p_created_at, p_last_seen_at, p_idle_expires_at, p_absolute_expires_at, p_version)
    ON CONFLICT (handle) DO UPDATE SET user_id = EXCLUDED.user_id,
        company_name = EXCLUDED.company_name, email = EXCLUDED.email,
        is_root = EXCLUDED.is_root, remember_me = EXCLUDED.remember_me,
        attributes = EXCLUDED.attributes, created_at = EXCLUDED.created_at,
        last_seen_at = EXCLUDED.last_seen_at, idle_expires_at = EXCLUDED.idle_expires_at,
        absolute_expires_at = EXCLUDED.absolute_expires_at, version = EXCLUDED.version
    WHERE user_sessions.idle_expires_at <= p_now;
    IF FOUND THEN
        RETURN 'stored';
    END IF;
    RETURN 'present';
END;
$$;

-- `delete_with_tombstone`: the tombstone (a later instant already there is kept), then the
-- session's removal; true if a live session was removed.
CREATE FUNCTION user_sessions_end(p_handle TEXT, p_until TIMESTAMPTZ, p_now TIMESTAMPTZ)
RETURNS BOOLEAN LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    live BOOLEAN;
BEGIN
    PERFORM user_sessions_take_handle_turn(p_handle);
    INSERT INTO user_session_tombstones (handle, until) VALUES (p_handle, p_until)
    ON CONFLICT (handle) DO UPDATE SET until = GREATEST(user_session_tombstones.until, EXCLUDED.until);
    DELETE FROM user_sessions WHERE handle = p_handle RETURNING idle_expires_at > p_now INTO live;
    RETURN COALESCE(live, FALSE);
END;
$$;
