//! Properties of the PostgreSQL row decoder (a `user_sessions` row, instants as epoch
//! milliseconds, to a `UserSession`), the same the `pg_row` fuzz target checks (fuzz/), run on
//! stable in every test run without a server.

use std::net::IpAddr;

use proptest::prelude::*;
use session_core::clock::from_millis_since_epoch;
use session_core::{Attributes, SessionError, SessionHandle, SessionToken};
use session_diesel::fuzzing::PgRow;

fn handle() -> impl Strategy<Value = String> {
    ("(?:[A-Za-z0-9_-]{1,16}\\.)?", "[A-Za-z0-9_-]{43}").prop_map(|(tag, hash)| tag + &hash)
}

fn attributes() -> impl Strategy<Value = Attributes> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(2, 8, 4, |inner| {
        prop::collection::btree_map("[a-z]{1,4}", inner, 0..3)
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
    });
    prop::collection::btree_map(any::<String>(), value, 0..4)
}

fn millis() -> impl Strategy<Value = i64> {
    prop_oneof![0..=4_000_000_000_000i64, 0..=i64::MAX, Just(i64::MAX)]
}

/// A row's columns; `PgRow` itself has no `Debug` for proptest to show a failing case with.
#[derive(Clone, Debug)]
struct Fields {
    handle: String,
    user_id: String,
    company_name: String,
    email: String,
    is_root: bool,
    remember_me: bool,
    attributes: String,
    created_at_ms: i64,
    last_seen_at_ms: i64,
    idle_expires_at_ms: i64,
    absolute_expires_at_ms: i64,
    version: i64,
    authenticated_at_ms: i64,
    device: String,
    address: Option<String>,
}

impl Fields {
    fn into_row(self) -> PgRow {
        PgRow {
            handle: self.handle,
            user_id: self.user_id,
            company_name: self.company_name,
            email: self.email,
            is_root: self.is_root,
            remember_me: self.remember_me,
            attributes: self.attributes,
            created_at_ms: self.created_at_ms,
            last_seen_at_ms: self.last_seen_at_ms,
            idle_expires_at_ms: self.idle_expires_at_ms,
            absolute_expires_at_ms: self.absolute_expires_at_ms,
            version: self.version,
            authenticated_at_ms: self.authenticated_at_ms,
            device: self.device,
            address: self.address,
        }
    }
}

prop_compose! {
    fn row()(
        handle in handle(),
        user_id in any::<String>(),
        company_name in any::<String>(),
        email in any::<String>(),
        is_root in any::<bool>(),
        remember_me in any::<bool>(),
        attributes in attributes(),
        times in [millis(), millis(), millis(), millis(), millis()],
        version in prop_oneof![0..1000i64, 0..=i64::MAX],
        device in any::<String>(),
        address in proptest::option::of(any::<IpAddr>()),
    ) -> (Fields, Attributes) {
        let row = Fields {
            handle,
            user_id,
            company_name,
            email,
            is_root,
            remember_me,
            attributes: serde_json::to_string(&attributes).expect("JSON"),
            created_at_ms: times[0],
            last_seen_at_ms: times[1],
            idle_expires_at_ms: times[2],
            absolute_expires_at_ms: times[3],
            version,
            authenticated_at_ms: times[4],
            device,
            address: address.map(|a| a.to_string()),
        };
        (row, attributes)
    }
}

fn at(ms: i64) -> std::time::SystemTime {
    from_millis_since_epoch(u64::try_from(ms).expect("not negative"))
}

fn is_decode_error<T>(result: &Result<T, SessionError>) -> bool {
    matches!(
        result,
        Err(SessionError::Decode {
            backend: "postgres",
            ..
        })
    )
}

proptest! {
    #[test]
    fn a_stored_row_decodes_to_the_session_it_holds((row, attributes) in row()) {
        let expected = (
            row.handle.clone(),
            row.user_id.clone(),
            row.company_name.clone(),
            row.email.clone(),
            (row.is_root, row.remember_me),
            [row.created_at_ms, row.last_seen_at_ms, row.idle_expires_at_ms, row.absolute_expires_at_ms],
            row.version,
            (row.authenticated_at_ms, row.device.clone(), row.address.clone()),
        );
        let session = row.into_row().into_session().expect("decodes");
        prop_assert_eq!(session.handle, SessionHandle::parse(&expected.0).expect("handle"));
        prop_assert_eq!(session.user_id, expected.1);
        prop_assert_eq!(session.company_name, expected.2);
        prop_assert_eq!(session.email, expected.3);
        prop_assert_eq!((session.is_root, session.remember_me), expected.4);
        prop_assert_eq!(session.attributes, attributes);
        let [created, seen, idle, absolute] = expected.5;
        prop_assert_eq!(session.created_at, at(created));
        prop_assert_eq!(session.last_seen_at, at(seen));
        prop_assert_eq!(session.idle_expires_at, at(idle));
        prop_assert_eq!(session.absolute_expires_at, at(absolute));
        prop_assert_eq!(Some(session.version), u64::try_from(expected.6).ok());
        let (authenticated, device, address) = expected.7;
        prop_assert_eq!(session.authenticated_at, at(authenticated));
        prop_assert_eq!(session.device, device);
        prop_assert_eq!(session.address.map(|a| a.to_string()), address);
    }

    #[test]
    fn an_address_that_is_no_ip_address_is_a_decode_error_naming_the_session(
        (mut row, _) in row(),
        text in prop_oneof![Just(String::new()), Just("203.0.113.7:80".to_owned()), Just("[::1]".to_owned()), any::<String>()],
    ) {
        prop_assume!(text.parse::<IpAddr>().is_err());
        let handle = SessionHandle::parse(&row.handle).expect("handle");
        row.address = Some(text);
        let result = row.into_row().into_session();
        prop_assert!(
            matches!(&result, Err(SessionError::Decode { handle: Some(h), reason, .. })
                if *h == handle && reason.contains("address")),
            "{result:?}"
        );
    }

    #[test]
    fn a_malformed_handle_is_a_decode_error_without_a_handle(
        (mut row, _) in row(),
        handle in any::<String>(),
    ) {
        prop_assume!(SessionHandle::parse(&handle).is_err());
        row.handle = handle;
        let result = row.into_row().into_session();
        prop_assert!(
            matches!(result, Err(SessionError::Decode { backend: "postgres", handle: None, .. })),
            "{result:?}"
        );
    }

    #[test]
    fn attributes_that_are_not_a_json_object_are_a_decode_error_naming_the_session(
        (mut row, _) in row(),
        text in prop_oneof![Just("[]".to_owned()), Just("null".to_owned()), Just("{".to_owned()), "[0-9]{1,5}", any::<String>()],
    ) {
        prop_assume!(serde_json::from_str::<Attributes>(&text).is_err());
        let handle = SessionHandle::parse(&row.handle).expect("handle");
        row.attributes = text;
        let result = row.into_row().into_session();
        prop_assert!(is_decode_error(&result), "{result:?}");
        prop_assert!(
            matches!(&result, Err(SessionError::Decode { handle: Some(h), .. }) if *h == handle),
            "{result:?}"
        );
    }

    #[test]
    fn any_row_decodes_or_fails_with_a_decode_error(
        handle in prop_oneof![handle(), any::<String>()],
        text in prop::collection::vec(any::<String>(), 3),
        flags in any::<(bool, bool)>(),
        attributes in prop_oneof![Just("{}".to_owned()), any::<String>()],
        numbers in any::<[i64; 6]>(),
        device in any::<String>(),
        address in proptest::option::of(any::<String>()),
    ) {
        let [user_id, company_name, email] = <[String; 3]>::try_from(text).expect("three");
        let row = Fields {
            handle,
            user_id,
            company_name,
            email,
            is_root: flags.0,
            remember_me: flags.1,
            attributes,
            created_at_ms: numbers[0],
            last_seen_at_ms: numbers[1],
            idle_expires_at_ms: numbers[2],
            absolute_expires_at_ms: numbers[3],
            version: numbers[4],
            authenticated_at_ms: numbers[5],
            device,
            address,
        };
        let result = row.into_row().into_session();
        prop_assert!(result.is_ok() || is_decode_error(&result), "{result:?}");
    }
}

/// A negative instant or version can only be a damaged row: a `Decode` error naming the field
/// (as the Redis store answers), not a session from 1970 or at version 0.
#[test]
fn negative_instants_and_versions_are_decode_errors() {
    for (field, version, created_at_ms, authenticated_at_ms) in [
        ("version", -1, 1_000, 1_000),
        ("created_at", 1, -5, 1_000),
        ("authenticated_at", 1, 1_000, -5),
    ] {
        let row = Fields {
            handle: SessionToken::generate()
                .unwrap()
                .handle()
                .as_str()
                .to_owned(),
            user_id: "u".to_owned(),
            company_name: String::new(),
            email: String::new(),
            is_root: false,
            remember_me: false,
            attributes: "{}".to_owned(),
            created_at_ms,
            last_seen_at_ms: 1_000,
            idle_expires_at_ms: 2_000,
            absolute_expires_at_ms: 3_000,
            version,
            authenticated_at_ms,
            device: String::new(),
            address: None,
        };
        match row.into_row().into_session() {
            Err(SessionError::Decode { reason, handle, .. }) => {
                assert!(reason.contains(field), "{reason}");
                assert!(handle.is_some());
            }
            other => panic!("{field}: {other:?}"),
        }
    }
}
