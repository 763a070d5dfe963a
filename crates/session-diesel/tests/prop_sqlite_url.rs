//! Properties of SQLite URL parsing, the same the `urls` fuzz target checks (fuzz/), run on
//! stable in every test run.

use proptest::prelude::*;
use session_core::SessionError;
use session_diesel::{SqliteTarget, parse_sqlite_url};

proptest! {
    #[test]
    fn any_text_is_a_target_or_a_config_error(url in any::<String>()) {
        match parse_sqlite_url(&url) {
            Ok(SqliteTarget::File(path)) => {
                prop_assert!(!path.is_empty());
                prop_assert!(url.ends_with(&path));
            }
            Ok(SqliteTarget::Memory(uri)) => {
                prop_assert!(uri.starts_with("file:/") && uri.ends_with("?vfs=memdb"), "{uri}");
            }
            Err(SessionError::Config { key, .. }) => prop_assert_eq!(key, "url"),
            Err(other) => prop_assert!(false, "untyped error {other:?}"),
        }
    }

    #[test]
    fn a_path_behind_any_prefix_is_that_file(
        path in "[^\\x00]{1,40}".prop_filter("not the memory name", |p| p != ":memory:" && !p.starts_with("sqlite:")),
        prefix in prop_oneof![Just("sqlite://"), Just("sqlite:"), Just("")],
    ) {
        // `sqlite:` then `//x` reads as `sqlite://x`.
        prop_assume!(!(prefix == "sqlite:" && path.starts_with("//")));
        let url = format!("{prefix}{path}");
        prop_assert_eq!(parse_sqlite_url(&url).expect("a file"), SqliteTarget::File(path));
    }

    #[test]
    fn memory_urls_are_each_a_private_database(prefix in prop_oneof![Just("sqlite:"), Just("sqlite://"), Just("")]) {
        let url = format!("{prefix}:memory:");
        let (Ok(SqliteTarget::Memory(a)), Ok(SqliteTarget::Memory(b))) =
            (parse_sqlite_url(&url), parse_sqlite_url(&url))
        else {
            return Err(TestCaseError::fail(format!("{url} is not memory")));
        };
        prop_assert_ne!(a, b);
    }
}
