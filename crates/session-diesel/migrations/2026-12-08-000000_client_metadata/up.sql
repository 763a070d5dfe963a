-- Client metadata (ADR 0030): when the user last proved who they are, the device label and the
-- address at sign-in. Additive: rows the previous release writes during a rolling deploy leave
-- `authenticated_at` NULL, read as `created_at` (authenticated at sign-in), and no device metadata.
-- `address` is `IpAddr`'s text form, TEXT rather than INET, as the MySQL and SQLite stores keep
-- it: one decoder reads all three.
ALTER TABLE user_sessions
    ADD COLUMN authenticated_at TIMESTAMPTZ,
    ADD COLUMN device           TEXT NOT NULL DEFAULT '',
    ADD COLUMN address          TEXT;

-- New overloads of the two functions that take every column. The old ones stay, so instances of
-- the previous release keep calling them until they are replaced.
CREATE FUNCTION user_sessions_create_capped(
    p_handle TEXT, p_user_id TEXT, p_company_name TEXT, p_email TEXT, p_is_root BOOLEAN,
    p_remember_me BOOLEAN, p_attributes TEXT, p_created_at TIMESTAMPTZ,
    p_last_seen_at TIMESTAMPTZ, p_idle_expires_at TIMESTAMPTZ, p_absolute_expires_at TIMESTAMPTZ,
    p_version BIGINT, p_cap BIGINT, p_authenticated_at TIMESTAMPTZ, p_device TEXT, p_address TEXT
) RETURNS VOID LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- As the first overload (migration 2026-11-26): the user's turn, the eviction, the insert.
    IF current_setting('transaction_isolation') = 'repeatable read' THEN
        RAISE EXCEPTION 'user_sessions_create_capped needs READ COMMITTED or SERIALIZABLE';
    END IF;
    PERFORM pg_advisory_xact_lock(
        hashtextextended('user_sessions.user:' || current_schema() || ':' || p_user_id, 0));
    LOOP
        DELETE FROM user_sessions WHERE handle IN (
            SELECT handle FROM user_sessions
            WHERE user_id = p_user_id AND idle_expires_at > p_created_at
            ORDER BY created_at DESC, handle DESC OFFSET p_cap - 1);
        EXIT WHEN NOT FOUND;
    END LOOP;
    INSERT INTO user_sessions (handle, user_id, company_name, email, is_root, remember_me,
        attributes, created_at, last_seen_at, idle_expires_at, absolute_expires_at, version,
        authenticated_at, device, address)
    VALUES (p_handle, p_user_id, p_company_name, p_email, p_is_root, p_remember_me, p_attributes,
        p_created_at, p_last_seen_at, p_idle_expires_at, p_absolute_expires_at, p_version,
        p_authenticated_at, p_device, p_address);
END
$$;

CREATE FUNCTION user_sessions_import(
    p_handle TEXT, p_user_id TEXT, p_company_name TEXT, p_email TEXT, p_is_root BOOLEAN,
    p_remember_me BOOLEAN, p_attributes TEXT, p_created_at TIMESTAMPTZ,
    p_last_seen_at TIMESTAMPTZ, p_idle_expires_at TIMESTAMPTZ, p_absolute_expires_at TIMESTAMPTZ,
    p_version BIGINT, p_now TIMESTAMPTZ, p_authenticated_at TIMESTAMPTZ, p_device TEXT,
    p_address TEXT
) RETURNS TEXT LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- As the first overload (migration 2026-12-07): refused while the tombstone stands, else
    -- stored unless a live row holds the handle.
    PERFORM user_sessions_take_handle_turn(p_handle);
    IF EXISTS (SELECT 1 FROM user_session_tombstones WHERE handle = p_handle AND until > p_now) THEN
        RETURN 'ended';
    END IF;
    INSERT INTO user_sessions (handle, user_id, company_name, email, is_root, remember_me,
        attributes, created_at, last_seen_at, idle_expires_at, absolute_expires_at, version,
        authenticated_at, device, address)
    VALUES (p_handle, p_user_id, p_company_name, p_email, p_is_root, p_remember_me, p_attributes,
        p_created_at, p_last_seen_at, p_idle_expires_at, p_absolute_expires_at, p_version,
        p_authenticated_at, p_device, p_address)
    ON CONFLICT (handle) DO UPDATE SET user_id = EXCLUDED.user_id,
        company_name = EXCLUDED.company_name, email = EXCLUDED.email,
        is_root = EXCLUDED.is_root, remember_me = EXCLUDED.remember_me,
        attributes = EXCLUDED.attributes, created_at = EXCLUDED.created_at,
        last_seen_at = EXCLUDED.last_seen_at, idle_expires_at = EXCLUDED.idle_expires_at,
        absolute_expires_at = EXCLUDED.absolute_expires_at, version = EXCLUDED.version,
        authenticated_at = EXCLUDED.authenticated_at, device = EXCLUDED.device,
        address = EXCLUDED.address
    WHERE user_sessions.idle_expires_at <= p_now;
    IF FOUND THEN
        RETURN 'stored';
    END IF;
    RETURN 'present';
END;
$$;
