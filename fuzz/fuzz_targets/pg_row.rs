//! The PostgreSQL row decoder (session-diesel): a `user_sessions` row, instants as epoch
//! milliseconds, to a `UserSession`, or a `Decode` error. Input: `handle`, `user_id`,
//! `company_name`, `email`, `attributes`, `device` and `address` (no line: `NULL`) on one line
//! each, a NUL byte, then a flags byte (`is_root`, `remember_me`) and six little-endian i64 (four
//! instants, the version, `authenticated_at`; a negative one is a `Decode` error).
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use session_core::clock::from_millis_since_epoch;
use session_core::{Attributes, SessionError, SessionHandle};
use session_diesel::fuzzing::PgRow;

/// The instant a stored epoch-millisecond value stands for (never negative in a decoded row).
fn instant(ms: i64) -> std::time::SystemTime {
    from_millis_since_epoch(u64::try_from(ms).expect("a negative instant was decoded"))
}

fuzz_target!(|data: &[u8]| {
    let (text, binary) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let mut fields = text.split('\n').map(str::to_owned);
    let mut field = || fields.next().unwrap_or_default();
    let (handle, user_id, company_name, email, attributes, device) =
        (field(), field(), field(), field(), field(), field());
    let address = fields.next();
    let flags = binary.first().copied().unwrap_or(0);
    let mut numbers = [0i64; 6];
    for (n, chunk) in numbers
        .iter_mut()
        .zip(binary.get(1..).unwrap_or_default().chunks(8))
    {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        *n = i64::from_le_bytes(bytes);
    }
    let row = PgRow {
        handle: handle.clone(),
        user_id: user_id.clone(),
        company_name: company_name.clone(),
        email: email.clone(),
        is_root: flags & 1 == 1,
        remember_me: flags & 2 == 2,
        attributes: attributes.clone(),
        created_at_ms: numbers[0],
        last_seen_at_ms: numbers[1],
        idle_expires_at_ms: numbers[2],
        absolute_expires_at_ms: numbers[3],
        version: numbers[4],
        authenticated_at_ms: numbers[5],
        device: device.clone(),
        address: address.clone(),
    };
    let parsed_handle = SessionHandle::parse(&handle);
    let parsed_attributes = serde_json::from_str::<Attributes>(&attributes);
    let parsed_address = address.as_deref().map(str::parse::<IpAddr>).transpose();
    match row.into_session() {
        Ok(session) => {
            assert_eq!(Some(&session.handle), parsed_handle.as_ref().ok());
            assert_eq!(Some(&session.attributes), parsed_attributes.as_ref().ok());
            assert_eq!(
                (session.user_id, session.company_name, session.email),
                (user_id, company_name, email)
            );
            assert_eq!(
                (session.is_root, session.remember_me),
                (flags & 1 == 1, flags & 2 == 2)
            );
            assert_eq!(session.created_at, instant(numbers[0]));
            assert_eq!(session.last_seen_at, instant(numbers[1]));
            assert_eq!(session.idle_expires_at, instant(numbers[2]));
            assert_eq!(session.absolute_expires_at, instant(numbers[3]));
            assert_eq!(Ok(session.version), u64::try_from(numbers[4]));
            assert_eq!(session.authenticated_at, instant(numbers[5]));
            assert_eq!(session.device, device);
            assert_eq!(Ok(session.address), parsed_address);
        }
        Err(SessionError::Decode {
            backend: "postgres",
            handle: None,
            ..
        }) => {
            assert!(parsed_handle.is_err());
        }
        Err(SessionError::Decode {
            backend: "postgres",
            handle: Some(h),
            ..
        }) => {
            assert_eq!(Some(&h), parsed_handle.as_ref().ok());
            // Bad attributes or address, or a negative instant or version: a damaged row, never
            // 1970 or 0.
            assert!(
                parsed_attributes.is_err()
                    || parsed_address.is_err()
                    || numbers.iter().any(|n| *n < 0)
            );
        }
        Err(other) => panic!("untyped error {other:?}"),
    }
});
