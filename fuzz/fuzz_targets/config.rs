//! Configuration parsing (session-manager): a TOML document and environment variables, as
//! `SessionConfig::from_sources` reads them (defaults, then the file, then the variables,
//! validated once), and each alone. Input: the TOML text, a NUL byte, then `NAME=value` lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_core::SessionError;
use session_manager::SessionConfig;

fn typed(result: &Result<SessionConfig, SessionError>) {
    match result {
        Ok(config) => config.validate().expect("what was accepted validates"),
        Err(SessionError::Config { key, reason }) => assert!(
            key == "config file"
                || (!key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))),
            "{key:?}: {reason}"
        ),
        Err(other) => panic!("untyped error {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (toml_text, env) = text.split_once('\0').unwrap_or((&text, ""));
    let vars: Vec<(String, String)> = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();

    typed(&SessionConfig::from_toml_str(toml_text));
    typed(&SessionConfig::from_sources(None, vars.clone()));
    // `from_sources` with a file: the file's settings (parsed, not yet validated), then the
    // variables, validated once.
    if let Ok(from_file) = toml::from_str::<SessionConfig>(toml_text) {
        typed(&from_file.with_vars(vars));
    }
});
