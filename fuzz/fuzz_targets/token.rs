//! `SessionToken::parse` and `SessionHandle::parse` on any text: a typed error or a value that
//! round-trips, and nothing that prints a token shows its secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_core::{SessionError, SessionHandle, SessionToken};

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    match SessionToken::parse(&input) {
        Ok(token) => {
            assert_eq!(token.expose_secret(), input);
            assert!((32..=128).contains(&input.len()));
            let again = SessionToken::parse(token.expose_secret()).expect("parses again");
            assert_eq!(again.handle(), token.handle());
            let handle = SessionHandle::parse(token.handle().as_str()).expect("its handle parses");
            assert_eq!(&handle, token.handle());
            assert_eq!(handle.routing_tag(), token.routing_tag());
            assert_eq!(handle.hash().len(), 43);
            let shown = format!("{token:?} {token} {handle:?} {handle}");
            assert!(!shown.contains(token.expose_secret()), "{shown}");
        }
        Err(SessionError::InvalidToken { .. }) => {}
        Err(other) => panic!("untyped error {other:?}"),
    }
    match SessionHandle::parse(&input) {
        Ok(handle) => {
            assert_eq!(handle.as_str(), input);
            assert_eq!(handle.hash().len(), 43);
            assert_eq!(handle.fingerprint().len(), 8);
            let back = SessionHandle::try_from(String::from(handle.clone())).expect("round trip");
            assert_eq!(back, handle);
        }
        Err(SessionError::InvalidInput { .. }) => {}
        Err(other) => panic!("untyped error {other:?}"),
    }
});
