DROP TABLE user_session_turns;
DROP TABLE user_sessions;
