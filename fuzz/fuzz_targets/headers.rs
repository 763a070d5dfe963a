//! `presented` (session-axum): the token(s) a request's `Authorization` and `Cookie` headers
//! present. Input: the cookie name on the first line, then one header a line: `A…` an
//! `Authorization` value, `C…` a `Cookie` value, anything else another header.
#![no_main]

use http::header::{AUTHORIZATION, COOKIE, HeaderName};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use session_axum::Transport;
use session_axum::fuzzing::presented;
use session_core::SessionToken;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let name = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((kind, value)) = line.split_first() else {
            continue;
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let header = match kind {
            b'A' => AUTHORIZATION,
            b'C' => COOKIE,
            _ => HeaderName::from_static("x-other"),
        };
        headers.append(header, value);
    }

    let found = presented(&headers, &name);
    let mut without_authorization = headers.clone();
    without_authorization.remove(AUTHORIZATION);
    let cookies_only = presented(&without_authorization, &name);
    match &found {
        Some((values, Transport::Bearer)) => {
            let first = headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .expect("a bearer token comes from the first Authorization header");
            let (scheme, rest) = first.split_once(' ').expect("scheme and token");
            assert!(scheme.eq_ignore_ascii_case("bearer"), "{first:?}");
            assert_eq!(values.as_slice(), [rest.trim()]);
        }
        // A non-bearer Authorization header never hides the cookie.
        _ => assert_eq!(found, cookies_only),
    }
    if let Some((values, Transport::Cookie)) = &found {
        assert!(!values.is_empty());
        for value in values {
            assert!(!value.contains(';') && !value.starts_with('"') && !value.ends_with('"'));
        }
    }
    // What the layer does next: parse each value, a malformed one counting as absent.
    for value in found.iter().flat_map(|(values, _)| values) {
        if let Ok(token) = SessionToken::parse(value) {
            assert_eq!(token.expose_secret(), value);
        }
    }
});
