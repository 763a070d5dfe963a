-- `create` under a per-user cap: evict the user's oldest live sessions beyond `cap - 1`, then
-- insert. Concurrent sign-ins of one user take turns on a transaction-scoped advisory lock keyed
-- by the schema and the user, and each statement in this VOLATILE function reads a fresh snapshot
-- (at READ COMMITTED), so the eviction of the later one sees the earlier one's insert. In one
-- statement it could not: both evictions read the table as it was before either insert, and both
-- sessions stayed. Users whose keys collide in the 64-bit hash only wait for each other.
CREATE FUNCTION user_sessions_create_capped(
    p_handle TEXT, p_user_id TEXT, p_company_name TEXT, p_email TEXT, p_is_root BOOLEAN,
    p_remember_me BOOLEAN, p_attributes TEXT, p_created_at TIMESTAMPTZ,
    p_last_seen_at TIMESTAMPTZ, p_idle_expires_at TIMESTAMPTZ, p_absolute_expires_at TIMESTAMPTZ,
    p_version BIGINT, p_cap BIGINT
) RETURNS VOID LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- Under REPEATABLE READ the snapshot predates the lock, and taking turns would protect nothing.
    IF current_setting('transaction_isolation') = 'repeatable read' THEN
        RAISE EXCEPTION 'user_sessions_create_capped needs READ COMMITTED or SERIALIZABLE';
    END IF;
    PERFORM pg_advisory_xact_lock(
        hashtextextended('user_sessions.user:' || current_schema() || ':' || p_user_id, 0));
    -- Repeated until it deletes nothing: a row that a concurrent rotate (or root-changing update)
    -- re-keys while this DELETE waits for it is skipped on re-check, and is found by the next
    -- pass, which reads a fresh snapshot.
    LOOP
        DELETE FROM user_sessions WHERE handle IN (
            SELECT handle FROM user_sessions
            WHERE user_id = p_user_id AND idle_expires_at > p_created_at
            ORDER BY created_at DESC, handle DESC OFFSET p_cap - 1);
        EXIT WHEN NOT FOUND;
    END LOOP;
    INSERT INTO user_sessions (handle, user_id, company_name, email, is_root, remember_me,
        attributes, created_at, last_seen_at, idle_expires_at, absolute_expires_at, version)
    VALUES (p_handle, p_user_id, p_company_name, p_email, p_is_root, p_remember_me, p_attributes,
        p_created_at, p_last_seen_at, p_idle_expires_at, p_absolute_expires_at, p_version);
END
$$;
