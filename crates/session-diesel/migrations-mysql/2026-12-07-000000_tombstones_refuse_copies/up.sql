-- Tombstones of sessions ended during a migration (ADR 0029): until `until_ms`, an import of the
-- handle stores nothing. An import and an ending of one handle take turns on the handle's row
-- here, locked for the length of their READ COMMITTED transactions (an import creates it with
-- `until_ms = 0`, a tombstone that refuses nothing): the later one sees the earlier one's write,
-- so an import either lands before the ending (and is removed by it) or is refused.
CREATE TABLE user_session_tombstones (
    handle   VARBINARY(96) NOT NULL PRIMARY KEY,
    until_ms BIGINT        NOT NULL,
    -- purge_expired removes rows whose instant has passed.
    INDEX user_session_tombstones_until_idx (until_ms)
) ENGINE = InnoDB;
