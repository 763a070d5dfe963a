//! Properties of the Redis session-hash decoder and of URL redaction, the same the `redis_row`
//! and `urls` fuzz targets check (fuzz/), run on stable in every test run without a server.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use session_core::clock::from_millis_since_epoch;
use session_core::{Attributes, SessionError, SessionHandle, SessionPolicy, UserSession};
use session_redis::fuzzing::{decode_reply, updated_session};
use session_redis::redis::Value;
use session_redis::{Layout, RedisConfig, SESSION_FIELDS, redact_url};

const HANDLE: &str = "k3f9.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const NOW_MS: u64 = 1_800_000_000_000;

fn handle() -> SessionHandle {
    SessionHandle::parse(HANDLE).expect("a well-formed handle")
}

fn now() -> SystemTime {
    from_millis_since_epoch(NOW_MS)
}

fn attributes() -> impl Strategy<Value = Attributes> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(2, 8, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(serde_json::Value::from)
    });
    prop::collection::btree_map(any::<String>(), value, 0..4)
}

/// Instants as epoch milliseconds, over the whole range a stored field can hold.
fn millis() -> impl Strategy<Value = u64> {
    prop_oneof![0..=4_000_000_000_000u64, any::<u64>(), Just(u64::MAX)]
}

prop_compose! {
    fn session()(
        user_id in any::<String>(),
        company_name in any::<String>(),
        email in any::<String>(),
        is_root in any::<bool>(),
        remember_me in any::<bool>(),
        attributes in attributes(),
        times in [millis(), millis(), millis(), millis(), millis()],
        version in prop_oneof![0..1000u64, any::<u64>(), Just(u64::MAX)],
        device in any::<String>(),
        address in proptest::option::of(any::<std::net::IpAddr>()),
    ) -> UserSession {
        UserSession {
            handle: handle(),
            user_id,
            company_name,
            email,
            is_root,
            remember_me,
            attributes,
            created_at: from_millis_since_epoch(times[0]),
            last_seen_at: from_millis_since_epoch(times[1]),
            idle_expires_at: from_millis_since_epoch(times[2]),
            absolute_expires_at: from_millis_since_epoch(times[3]),
            version,
            authenticated_at: from_millis_since_epoch(times[4]),
            device,
            address,
        }
    }
}

fn ms(t: SystemTime) -> u64 {
    session_core::clock::millis_since_epoch(t)
}

/// How a field's text may come back: a bulk string (`HMGET`), a status reply or an integer (a
/// script's reply).
#[derive(Clone, Copy, Debug)]
enum Kind {
    Bulk,
    Simple,
    Int,
}

fn encode(text: String, kind: Kind) -> Value {
    match kind {
        Kind::Int => match text.parse::<i64>() {
            Ok(n) => Value::Int(n),
            Err(_) => Value::BulkString(text.into_bytes()),
        },
        Kind::Simple => Value::SimpleString(text),
        Kind::Bulk => Value::BulkString(text.into_bytes()),
    }
}

/// The session's hash as `HMGET key <SESSION_FIELDS>` returns it.
fn row(session: &UserSession, kinds: &[Kind; FIELD_COUNT]) -> Vec<Value> {
    let flag = |b: bool| if b { "Y" } else { "N" }.to_owned();
    SESSION_FIELDS
        .iter()
        .zip(kinds)
        .map(|(field, kind)| {
            let text = match *field {
                "user_id" => session.user_id.clone(),
                "company_name" => session.company_name.clone(),
                "email" => session.email.clone(),
                "is_root" => flag(session.is_root),
                "remember_me" => flag(session.remember_me),
                "attributes" => serde_json::to_string(&session.attributes).expect("JSON"),
                "created_at" => ms(session.created_at).to_string(),
                "last_seen_at" => ms(session.last_seen_at).to_string(),
                "idle_expires_at" => ms(session.idle_expires_at).to_string(),
                "absolute_expires_at" => ms(session.absolute_expires_at).to_string(),
                "version" => session.version.to_string(),
                "authenticated_at" => ms(session.authenticated_at).to_string(),
                "device" => session.device.clone(),
                "address" => session.address.map(|a| a.to_string()).unwrap_or_default(),
                other => panic!("a field this test does not know: {other}"),
            };
            // Text fields stay bulk strings: a status reply cannot carry every byte.
            match *field {
                "user_id" | "company_name" | "email" | "attributes" | "device" => {
                    Value::BulkString(text.into_bytes())
                }
                _ => encode(text, *kind),
            }
        })
        .collect()
}

/// How many fields a session hash has.
const FIELD_COUNT: usize = SESSION_FIELDS.len();

/// The fields of the first layout: every one of them is required in the standard layout. Those
/// after them came later and may be missing from a session written before them.
const FIRST_LAYOUT_FIELDS: usize = 11;

fn kinds() -> impl Strategy<Value = [Kind; FIELD_COUNT]> {
    let kind = prop_oneof![Just(Kind::Bulk), Just(Kind::Simple), Just(Kind::Int)];
    prop::array::uniform14(kind)
}

fn decode(
    reply: Value,
    pttl: Option<i64>,
    layout: Layout,
) -> session_core::Result<Option<UserSession>> {
    decode_reply(
        &handle(),
        reply,
        pttl,
        now(),
        &SessionPolicy::default(),
        layout,
    )
}

fn is_decode_error<T: std::fmt::Debug>(result: &session_core::Result<T>) -> bool {
    matches!(result, Err(SessionError::Decode { backend: "redis", handle: Some(h), .. }) if h.as_str() == HANDLE)
}

/// Any reply value the client can produce, nested a little.
fn reply_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        Just(Value::Okay),
        any::<i64>().prop_map(Value::Int),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Value::BulkString),
        prop_oneof!["[0-9]{1,20}", "[YN]", any::<String>()].prop_map(Value::SimpleString),
        any::<bool>().prop_map(Value::Boolean),
        any::<f64>().prop_map(Value::Double),
    ];
    leaf.prop_recursive(2, 24, 12, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..12).prop_map(Value::Array),
            prop::collection::vec(inner.clone(), FIELD_COUNT..=FIELD_COUNT).prop_map(Value::Array),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Set),
            prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
        ]
    })
}

/// A password alphabet whose letters appear nowhere else in the URLs built from it, so any of
/// them in the redacted text is a piece of the password.
const SECRET_LETTERS: &[char] = &['Q', 'W', 'X', 'Z', 'J', 'K'];

fn password() -> impl Strategy<Value = String> {
    "[QWXZJK0-9@:%/?#!$&'()*+,;= \\[\\]~._-]{1,24}"
        .prop_filter("has a letter to look for", |p| p.contains(SECRET_LETTERS))
}

fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn shows_secret(text: &str) -> bool {
    text.contains(SECRET_LETTERS)
}

proptest! {
    #[test]
    fn stored_sessions_decode_back_in_both_layouts(
        session in session(),
        kinds in kinds(),
        pttl in proptest::option::of(any::<i64>()),
    ) {
        for layout in [Layout::Standard, Layout::Compatible] {
            let decoded = decode(Value::Array(row(&session, &kinds)), pttl, layout);
            prop_assert_eq!(decoded.expect("decodes"), Some(session.clone()));
        }
    }

    #[test]
    fn an_absent_key_is_none(pttl in proptest::option::of(any::<i64>()), all_nil in any::<bool>()) {
        let reply = if all_nil { Value::Array(vec![Value::Nil; FIELD_COUNT]) } else { Value::Nil };
        for layout in [Layout::Standard, Layout::Compatible] {
            prop_assert_eq!(decode(reply.clone(), pttl, layout).expect("absent"), None);
        }
    }

    #[test]
    fn any_reply_decodes_or_fails_with_a_decode_error_naming_the_session(
        reply in reply_value(),
        pttl in proptest::option::of(any::<i64>()),
        compatible in any::<bool>(),
    ) {
        let layout = if compatible { Layout::Compatible } else { Layout::Standard };
        let result = decode(reply, pttl, layout);
        prop_assert!(result.is_ok() || is_decode_error(&result), "{result:?}");
    }

    #[test]
    fn the_standard_layout_requires_every_field(
        session in session(),
        kinds in kinds(),
        missing in 0..FIRST_LAYOUT_FIELDS,
    ) {
        let mut fields = row(&session, &kinds);
        fields[missing] = Value::Nil;
        let result = decode(Value::Array(fields), None, Layout::Standard);
        prop_assert!(is_decode_error(&result), "{result:?}");
        let reason = result.expect_err("missing").to_string();
        prop_assert!(reason.contains(SESSION_FIELDS[missing]), "{reason}");
    }

    #[test]
    fn the_compatible_layout_needs_only_the_user_id_and_dates_the_rest_from_now(
        session in session(),
        kinds in kinds(),
        present in prop::collection::vec(any::<bool>(), FIELD_COUNT),
        pttl in proptest::option::of(any::<i64>()),
    ) {
        let mut fields = row(&session, &kinds);
        for (field, keep) in fields.iter_mut().zip(&present).skip(1) {
            if !keep {
                *field = Value::Nil;
            }
        }
        let decoded = decode(Value::Array(fields), pttl, Layout::Compatible)
            .expect("decodes")
            .expect("present");
        let has = |name: &str| present[SESSION_FIELDS.iter().position(|f| *f == name).expect("a field")];
        let policy = SessionPolicy::default();
        let idle = if has("idle_expires_at") {
            session.idle_expires_at
        } else {
            match pttl {
                Some(ms) if ms > 0 => now() + Duration::from_millis(ms.unsigned_abs()),
                _ => now() + policy.idle_timeout,
            }
        };
        let created = if has("created_at") { session.created_at } else { now() };
        prop_assert_eq!(&decoded.user_id, &session.user_id);
        prop_assert_eq!(decoded.idle_expires_at, idle);
        prop_assert_eq!(decoded.created_at, created);
        prop_assert_eq!(decoded.last_seen_at, if has("last_seen_at") { session.last_seen_at } else { created });
        prop_assert_eq!(decoded.absolute_expires_at, if has("absolute_expires_at") { session.absolute_expires_at } else { idle });
        prop_assert_eq!(decoded.version, if has("version") { session.version } else { 0 });
        prop_assert_eq!(decoded.is_root, has("is_root") && session.is_root);
        prop_assert_eq!(decoded.remember_me, has("remember_me") && session.remember_me);
        let email = if has("email") { session.email.clone() } else { String::new() };
        prop_assert_eq!(decoded.email, email);
        prop_assert_eq!(decoded.authenticated_at, if has("authenticated_at") { session.authenticated_at } else { created });
    }

    #[test]
    fn a_session_written_before_the_metadata_fields_reads_as_authenticated_at_creation(
        session in session(),
        kinds in kinds(),
        compatible in any::<bool>(),
    ) {
        let mut fields = row(&session, &kinds);
        for field in &mut fields[FIRST_LAYOUT_FIELDS..] {
            *field = Value::Nil;
        }
        let layout = if compatible { Layout::Compatible } else { Layout::Standard };
        let decoded = decode(Value::Array(fields), None, layout).expect("decodes").expect("present");
        prop_assert_eq!(decoded.authenticated_at, session.created_at);
        prop_assert_eq!(decoded.device, "");
        prop_assert_eq!(decoded.address, None);
        prop_assert_eq!(decoded.attributes, session.attributes);
    }

    #[test]
    fn a_malformed_field_is_a_decode_error(
        session in session(),
        kinds in kinds(),
        field in prop_oneof![Just("is_root"), Just("remember_me"), Just("attributes"), Just("created_at"), Just("idle_expires_at"), Just("version"), Just("authenticated_at"), Just("address")],
        text in prop_oneof![Just("-1".to_owned()), Just("y".to_owned()), Just("[]".to_owned()), Just("18446744073709551616".to_owned()), "[^0-9]{1,8}"],
        compatible in any::<bool>(),
    ) {
        let at = SESSION_FIELDS.iter().position(|f| *f == field).expect("a field");
        let mut fields = row(&session, &kinds);
        fields[at] = Value::BulkString(text.clone().into_bytes());
        let valid = match field {
            "is_root" | "remember_me" => text == "Y" || text == "N",
            "attributes" => serde_json::from_str::<Attributes>(&text).is_ok(),
            "address" => text.parse::<std::net::IpAddr>().is_ok(),
            _ => text.parse::<u64>().is_ok(),
        };
        let layout = if compatible { Layout::Compatible } else { Layout::Standard };
        let result = decode(Value::Array(fields), None, layout);
        prop_assert_eq!(result.is_ok(), valid, "{:?}", result);
        if !valid {
            prop_assert!(is_decode_error(&result), "{result:?}");
        }
    }

    #[test]
    fn an_update_reply_sets_the_bookkeeping_fields_and_bumps_the_version(
        session in session(),
        stored in session(),
    ) {
        let text = |t: SystemTime| Value::BulkString(ms(t).to_string().into_bytes());
        let reply = [
            text(stored.last_seen_at),
            text(stored.idle_expires_at),
            text(stored.absolute_expires_at),
            text(stored.created_at),
            Value::SimpleString(if stored.remember_me { "Y" } else { "N" }.to_owned()),
        ];
        match updated_session(&handle(), &session, &reply) {
            Ok(updated) => {
                prop_assert_eq!(updated.version, session.version + 1);
                prop_assert_eq!(updated.last_seen_at, stored.last_seen_at);
                prop_assert_eq!(updated.idle_expires_at, stored.idle_expires_at);
                prop_assert_eq!(updated.absolute_expires_at, stored.absolute_expires_at);
                prop_assert_eq!(updated.created_at, stored.created_at);
                prop_assert_eq!(updated.remember_me, stored.remember_me);
                prop_assert_eq!(&updated.attributes, &session.attributes);
            }
            Err(err) => {
                // The one refusal: a version with no successor.
                prop_assert_eq!(session.version, u64::MAX, "{:?}", err);
                let result: session_core::Result<()> = Err(err);
                prop_assert!(is_decode_error(&result), "{result:?}");
            }
        }
    }

    #[test]
    fn any_update_reply_is_read_or_fails_with_a_decode_error(
        session in session(),
        reply in prop::collection::vec(reply_value(), 0..7),
    ) {
        let result = updated_session(&handle(), &session, &reply);
        prop_assert!(result.is_ok() || is_decode_error(&result), "{result:?}");
    }

    #[test]
    fn redaction_never_shows_a_password_with_url_delimiters(
        password in password(),
        user in prop_oneof![Just(""), Just("app"), Just("default")],
        tail in prop_oneof![Just(""), Just("/0"), Just(":6379/2"), Just("?db=1")],
    ) {
        let url = format!("redis://{user}:{password}@cache.internal{tail}");
        let shown = redact_url(&url);
        prop_assert!(!shows_secret(&shown), "{url} -> {shown}");
        let config = RedisConfig::new(url.clone());
        prop_assert!(!shows_secret(&format!("{config:?}")), "{url} -> {config:?}");
        if let Err(err) = config.validate() {
            prop_assert!(!shows_secret(&err.to_string()), "{url} -> {err}");
        }
    }

    #[test]
    fn percent_encoded_passwords_are_redacted_and_the_host_kept(
        password in password(),
        user in prop_oneof![Just(""), Just("app")],
    ) {
        let url = format!("redis://{user}:{}@cache.internal:6379/0", percent_encoded(&password));
        let shown = redact_url(&url);
        prop_assert_eq!(shown, format!("redis://{user}:***@cache.internal:6379/0"));
        RedisConfig::new(url).validate().expect("a valid URL");
    }

    #[test]
    fn a_lone_user_name_and_query_credentials_are_redacted(
        secret in password(),
        db in 0..16u8,
    ) {
        let lone = format!("redis://{}@cache.internal/{db}", percent_encoded(&secret));
        prop_assert_eq!(redact_url(&lone), format!("redis://***@cache.internal/{db}"));
        let socket = format!(
            "redis+unix:///run/redis.sock?db={db}&user={0}&pass={0}",
            percent_encoded(&secret)
        );
        let shown = redact_url(&socket);
        prop_assert!(!shows_secret(&shown) && shown.contains(&format!("db={db}")), "{shown}");
    }

    #[test]
    fn any_text_is_redacted_without_panicking(url in any::<String>()) {
        let _ = redact_url(&url);
        let _ = RedisConfig::new(url).validate();
    }
}

// Regressions the properties above found, pinned.

#[test]
fn a_password_cut_short_by_a_question_mark_or_slash_is_not_shown() {
    for url in [
        "redis://app:?QX@cache.internal",
        "redis://app:12/QX@cache.internal/0",
        "redis://:#QX@cache.internal:6379",
        "redis://app:Q@X/Z@cache.internal",
    ] {
        let shown = redact_url(url);
        assert_eq!(shown, "redis://*** (unparseable)", "{url}");
        let debug = format!("{:?}", RedisConfig::new(url));
        assert!(!shows_secret(&debug), "{debug}");
    }
}

#[test]
fn an_update_of_a_session_at_the_largest_version_is_a_decode_error_not_an_overflow() {
    let mut session = UserSession {
        handle: handle(),
        user_id: "u-1".to_owned(),
        company_name: String::new(),
        email: String::new(),
        is_root: false,
        remember_me: false,
        attributes: Attributes::new(),
        created_at: now(),
        last_seen_at: now(),
        idle_expires_at: now(),
        absolute_expires_at: now(),
        version: u64::MAX,
        authenticated_at: now(),
        device: String::new(),
        address: None,
    };
    let ms = Value::BulkString(NOW_MS.to_string().into_bytes());
    let reply = [
        ms.clone(),
        ms.clone(),
        ms.clone(),
        ms,
        Value::SimpleString("N".to_owned()),
    ];
    let result = updated_session(&handle(), &session, &reply);
    assert!(is_decode_error(&result), "{result:?}");
    session.version = u64::MAX - 1;
    assert_eq!(
        updated_session(&handle(), &session, &reply)
            .expect("updated")
            .version,
        u64::MAX
    );
}
