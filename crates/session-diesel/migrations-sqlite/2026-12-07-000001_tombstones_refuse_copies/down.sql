DROP TABLE user_session_tombstones;
