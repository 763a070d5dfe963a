//! Properties of token and handle parsing, the same the `token` fuzz target checks (fuzz/), run
//! on stable in every test run: any input gives a typed answer, well-formed tokens round-trip,
//! and nothing that prints a token shows its secret.

use proptest::prelude::*;
use session_core::{SessionError, SessionHandle, SessionToken};

/// `[A-Za-z0-9_-]`, the token alphabet.
const ALPHABET: &str = "[A-Za-z0-9_-]";

fn token_chars(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("{ALPHABET}{{{},{}}}", len.start(), len.end()))
        .expect("valid regex")
}

fn routing_tag() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(token_chars(1..=16))
}

fn rejected(parsed: &Result<SessionToken, SessionError>) -> bool {
    matches!(parsed, Err(SessionError::InvalidToken { .. }))
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

proptest! {
    #[test]
    fn any_text_parses_or_fails_with_invalid_token(input in any::<String>()) {
        match SessionToken::parse(&input) {
            Ok(token) => {
                prop_assert_eq!(token.expose_secret(), input.as_str());
                prop_assert!((32..=128).contains(&input.len()));
            }
            Err(SessionError::InvalidToken { .. }) => {}
            Err(other) => prop_assert!(false, "untyped error {other:?}"),
        }
    }

    #[test]
    fn any_text_is_a_handle_or_fails_with_invalid_input(input in any::<String>()) {
        match SessionHandle::parse(&input) {
            Ok(handle) => {
                prop_assert_eq!(handle.as_str(), input.as_str());
                prop_assert_eq!(handle.hash().len(), 43);
                prop_assert_eq!(handle.fingerprint().len(), 8);
            }
            Err(SessionError::InvalidInput { .. }) => {}
            Err(other) => prop_assert!(false, "untyped error {other:?}"),
        }
    }

    #[test]
    fn well_formed_tokens_round_trip_with_their_routing_tag(
        tag in routing_tag(),
        body in token_chars(1..=127),
    ) {
        let input = match &tag {
            Some(tag) => format!("{tag}.{body}"),
            None => body.clone(),
        };
        let parsed = SessionToken::parse(&input);
        if !(32..=128).contains(&input.len()) {
            prop_assert!(rejected(&parsed), "{parsed:?}");
            return Ok(());
        }
        let token = parsed.expect("a well-formed token parses");
        prop_assert_eq!(token.expose_secret(), input.as_str());
        prop_assert_eq!(token.routing_tag(), tag.as_deref());
        let handle = token.handle();
        prop_assert_eq!(handle.routing_tag(), tag.as_deref());
        prop_assert_eq!(handle.hash().len(), 43);
        prop_assert_ne!(handle.as_str(), input.as_str());
        prop_assert_eq!(&SessionHandle::parse(handle.as_str()).expect("its handle parses"), handle);
        let again = SessionToken::parse(token.expose_secret()).expect("parses again");
        prop_assert_eq!(again.handle(), handle);
    }

    #[test]
    fn a_length_outside_32_to_128_is_rejected(
        body in prop_oneof![token_chars(0..=31), token_chars(129..=300)],
    ) {
        let reason = match SessionToken::parse(&body) {
            Err(SessionError::InvalidToken { reason }) => reason,
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        let expected = if body.len() < 32 { "too short" } else { "too long" };
        prop_assert_eq!(reason, expected);
    }

    #[test]
    fn one_character_outside_the_alphabet_is_rejected(
        body in token_chars(40..=100),
        at in any::<prop::sample::Index>(),
        bad in any::<char>().prop_filter("outside the alphabet", |c| !is_token_char(*c) && *c != '.'),
    ) {
        let mut input = body;
        let at = at.index(input.len() + 1);
        input.insert(at, bad);
        prop_assume!(input.len() <= 128);
        prop_assert!(rejected(&SessionToken::parse(&input)), "accepted {input:?}");
    }

    #[test]
    fn a_malformed_routing_tag_is_rejected(
        tag in prop_oneof![Just(String::new()), token_chars(17..=40)],
        body in token_chars(43..=43),
        second_dot in any::<bool>(),
    ) {
        let input = if second_dot && !tag.is_empty() {
            format!("{tag}.x.{body}")
        } else {
            format!("{tag}.{body}")
        };
        prop_assume!(input.len() <= 128);
        prop_assert!(rejected(&SessionToken::parse(&input)), "accepted {input:?}");
    }

    #[test]
    fn generated_tokens_parse_back_to_the_same_handle(tag in routing_tag()) {
        let token = SessionToken::generate_tagged(tag.as_deref()).expect("generated");
        let parsed = SessionToken::parse(token.expose_secret()).expect("parses");
        prop_assert_eq!(parsed.handle(), token.handle());
        prop_assert_eq!(parsed.routing_tag(), tag.as_deref());
    }

    #[test]
    fn debug_and_display_never_show_the_secret(tag in routing_tag(), body in token_chars(43..=43)) {
        let input = match tag {
            Some(tag) => format!("{tag}.{body}"),
            None => body,
        };
        let token = SessionToken::parse(&input).expect("well-formed");
        let shown = format!("{token:?} {token} {:?} {}", token.handle(), token.handle());
        prop_assert!(!shown.contains(&input));
        prop_assert!(!shown.contains(&input[input.len() - 32..]));
    }

    #[test]
    fn handles_round_trip_through_text_and_serde(tag in routing_tag(), hash in token_chars(43..=43)) {
        let text = match tag {
            Some(tag) => format!("{tag}.{hash}"),
            None => hash,
        };
        let handle = SessionHandle::parse(&text).expect("well-formed");
        prop_assert_eq!(String::from(handle.clone()), text.clone());
        let json = serde_json::to_string(&handle).expect("serializes");
        let back: SessionHandle = serde_json::from_str(&json).expect("deserializes");
        prop_assert_eq!(back, handle);
    }
}
