//! Properties of how a request's headers present a session token (cookie or bearer), the same the
//! `headers` fuzz target checks (fuzz/), run on stable in every test run.

use axum::http::header::{AUTHORIZATION, COOKIE, HeaderName};
use axum::http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use session_axum::Transport;
use session_axum::fuzzing::presented;

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{32,64}"
}

fn cookie_name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z][a-z0-9_]{0,11}", "__Host-[a-z][a-z0-9_]{0,11}"]
}

/// A cookie value as browsers send them (RFC 6265 cookie-octets: no space, `"`, `,`, `;`, `\`).
fn cookie_value() -> impl Strategy<Value = String> {
    "[!#-+\\--:<-\\[\\]-~]{0,24}"
}

/// `scheme` with each letter's case picked by `mask`.
fn with_case(scheme: &str, mask: u64) -> String {
    scheme
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// One `name=value` pair of a Cookie header: the session's, or another cookie.
#[derive(Clone, Debug)]
enum Pair {
    Session { value: String, quoted: bool },
    Other { name: String, value: String },
}

fn pair() -> impl Strategy<Value = Pair> {
    prop_oneof![
        (token(), any::<bool>()).prop_map(|(value, quoted)| Pair::Session { value, quoted }),
        ("[a-z][a-z0-9_]{0,8}", cookie_value())
            .prop_map(|(name, value)| Pair::Other { name, value }),
    ]
}

/// Cookie headers (each a list of pairs) and the session cookie's values in the order sent.
fn cookie_headers(name: &str, headers: &[Vec<Pair>], spaces: &[bool]) -> (HeaderMap, Vec<String>) {
    let mut map = HeaderMap::new();
    let mut expected = Vec::new();
    for (i, pairs) in headers.iter().enumerate() {
        let separator = if spaces.get(i).copied().unwrap_or(true) {
            "; "
        } else {
            ";"
        };
        let text: Vec<String> = pairs
            .iter()
            .map(|pair| match pair {
                Pair::Session { value, quoted } => {
                    expected.push(value.clone());
                    if *quoted {
                        format!("{name}=\"{value}\"")
                    } else {
                        format!("{name}={value}")
                    }
                }
                // Never the session's name: a longer or shorter name must not match it.
                Pair::Other { name: other, value } if other == name => format!("{other}x={value}"),
                Pair::Other { name: other, value } => format!("{other}={value}"),
            })
            .collect();
        map.append(
            COOKIE,
            HeaderValue::from_str(&text.join(separator)).expect("cookie-octets"),
        );
    }
    (map, expected)
}

fn header_name(kind: u8) -> HeaderName {
    match kind % 3 {
        0 => AUTHORIZATION,
        1 => COOKIE,
        _ => HeaderName::from_static("x-other"),
    }
}

proptest! {
    #[test]
    fn arbitrary_headers_never_panic_and_give_a_consistent_answer(
        name in cookie_name(),
        headers in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..80)), 0..6),
    ) {
        let mut map = HeaderMap::new();
        for (kind, bytes) in headers {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                map.append(header_name(kind), value);
            }
        }
        match presented(&map, &name) {
            Some((values, Transport::Bearer)) => {
                prop_assert_eq!(values.len(), 1);
                let first = map.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
                prop_assert!(first.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("bearer ")), "{first:?}");
            }
            Some((values, _)) => {
                prop_assert!(!values.is_empty());
                prop_assert!(values.iter().all(|v| !v.contains(';')));
            }
            None => {}
        }
    }

    #[test]
    fn a_bearer_token_in_any_case_wins_over_cookies(
        name in cookie_name(),
        token in token(),
        mask in any::<u64>(),
        pairs in prop::collection::vec(pair(), 0..4),
    ) {
        let (mut map, _) = cookie_headers(&name, &[pairs], &[]);
        let value = format!("{} {token}", with_case("bearer", mask));
        map.insert(AUTHORIZATION, HeaderValue::from_str(&value).expect("visible ASCII"));
        prop_assert_eq!(presented(&map, &name), Some((vec![token], Transport::Bearer)));
    }

    #[test]
    fn a_non_bearer_authorization_does_not_hide_the_cookie(
        name in cookie_name(),
        token in token(),
        scheme in prop_oneof![
            Just("Basic".to_owned()),
            Just("Digest".to_owned()),
            Just("Bearer".to_owned()),
            "[A-Za-z]{1,10}",
        ],
        mask in any::<u64>(),
        credentials in "[A-Za-z0-9+/=]{0,30}",
        separator in prop_oneof![Just(""), Just("\t"), Just(","), Just(" ")],
    ) {
        let scheme = with_case(&scheme, mask);
        prop_assume!(!(scheme.eq_ignore_ascii_case("bearer") && separator == " "));
        let (mut map, expected) = cookie_headers(
            &name,
            &[vec![Pair::Session { value: token, quoted: false }]],
            &[],
        );
        let value = format!("{scheme}{separator}{credentials}");
        map.insert(AUTHORIZATION, HeaderValue::from_str(&value).expect("visible ASCII"));
        prop_assert_eq!(presented(&map, &name), Some((expected, Transport::Cookie)));
    }

    #[test]
    fn every_session_cookie_value_is_found_in_the_order_sent(
        name in cookie_name(),
        headers in prop::collection::vec(prop::collection::vec(pair(), 0..5), 0..4),
        spaces in prop::collection::vec(any::<bool>(), 4),
    ) {
        let (map, expected) = cookie_headers(&name, &headers, &spaces);
        let found = presented(&map, &name);
        if expected.is_empty() {
            prop_assert_eq!(found, None);
        } else {
            prop_assert_eq!(found, Some((expected, Transport::Cookie)));
        }
    }
}
