-- Tombstones of sessions ended during a migration (ADR 0029): until `until_ms`, an import of the
-- handle stores nothing. SQLite runs one writing statement at a time, and an import checks the
-- tombstone in the statement that inserts: an import lands before the tombstone (and the
-- ending's removal that follows it removes the copy) or after it (and is refused).
CREATE TABLE user_session_tombstones (
    handle   TEXT    NOT NULL PRIMARY KEY,
    until_ms INTEGER NOT NULL
);

-- purge_expired removes tombstones whose instant has passed.
CREATE INDEX user_session_tombstones_until_idx ON user_session_tombstones (until_ms);
