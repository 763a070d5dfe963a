//! The Redis session-hash decoder (session-redis): an `HMGET key <SESSION_FIELDS>` reply as the
//! client parses it off the wire, to a `UserSession`, `None` or a `Decode` error; then the
//! update script's reply for that session. Input: a flags byte (bit 0: compatible layout, bit 1:
//! a PTTL follows), a little-endian i64 PTTL, then RESP bytes.
#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use session_core::clock::{from_millis_since_epoch, millis_since_epoch};
use session_core::{SessionError, SessionHandle, SessionPolicy, UserSession};
use session_redis::fuzzing::{decode_reply, updated_session};
use session_redis::redis::{Value, parse_redis_value};
use session_redis::{Layout, SESSION_FIELDS};

const HANDLE: &str = "k3f9.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const NOW_MS: u64 = 1_800_000_000_000;

/// The session's hash as `HMGET` returns it, every field a bulk string.
fn encode(session: &UserSession) -> Value {
    let flag = |b: bool| if b { "Y" } else { "N" }.to_owned();
    let ms = |t: SystemTime| millis_since_epoch(t).to_string();
    let fields = SESSION_FIELDS.iter().map(|field| {
        let text = match *field {
            "user_id" => session.user_id.clone(),
            "company_name" => session.company_name.clone(),
            "email" => session.email.clone(),
            "is_root" => flag(session.is_root),
            "remember_me" => flag(session.remember_me),
            "attributes" => serde_json::to_string(&session.attributes).expect("JSON"),
            "created_at" => ms(session.created_at),
            "last_seen_at" => ms(session.last_seen_at),
            "idle_expires_at" => ms(session.idle_expires_at),
            "absolute_expires_at" => ms(session.absolute_expires_at),
            "version" => session.version.to_string(),
            other => panic!("a field this target does not know: {other}"),
        };
        Value::BulkString(text.into_bytes())
    });
    Value::Array(fields.collect())
}

fn typed<T: std::fmt::Debug>(result: &session_core::Result<T>, handle: &SessionHandle) {
    match result {
        Ok(_) => {}
        Err(SessionError::Decode {
            backend: "redis",
            handle: Some(h),
            ..
        }) if h == handle => {}
        Err(other) => panic!("untyped error {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let layout = if flags & 1 == 1 {
        Layout::Compatible
    } else {
        Layout::Standard
    };
    let (pttl, resp) = match rest.split_first_chunk::<8>() {
        Some((ms, resp)) if flags & 2 == 2 => (Some(i64::from_le_bytes(*ms)), resp),
        _ => (None, rest),
    };
    let Ok(reply) = parse_redis_value(resp) else {
        return;
    };
    let handle = SessionHandle::parse(HANDLE).expect("a well-formed handle");
    let policy = SessionPolicy::default();
    let now = from_millis_since_epoch(NOW_MS);
    let decoded = decode_reply(&handle, reply.clone(), pttl, now, &policy, layout);
    typed(&decoded, &handle);
    let Ok(Some(session)) = decoded else {
        return;
    };
    assert_eq!(session.handle, handle);
    // What was decoded, stored again, decodes to itself, in either layout.
    let again = decode_reply(&handle, encode(&session), pttl, now, &policy, layout);
    assert_eq!(again.expect("re-decodes").as_ref(), Some(&session));

    // The update script answers with the row's bookkeeping fields.
    let Value::Array(items) = &reply else {
        return;
    };
    let at = |name: &str| {
        SESSION_FIELDS
            .iter()
            .position(|f| *f == name)
            .expect("a field")
    };
    let script_reply: Vec<Value> = [
        "last_seen_at",
        "idle_expires_at",
        "absolute_expires_at",
        "created_at",
        "remember_me",
    ]
    .iter()
    .map(|name| items[at(name)].clone())
    .collect();
    let updated = updated_session(&handle, &session, &script_reply);
    typed(&updated, &handle);
    if let Ok(updated) = updated {
        assert_eq!(updated.version, session.version + 1);
        assert_eq!(updated.user_id, session.user_id);
    }
});
