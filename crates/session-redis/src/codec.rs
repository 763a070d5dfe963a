//! The session hash: field names and encodings, shared by both layouts.
//!
//! Field names are the compatible layout's (`user_id`, `company_name`, `email`, `is_root` as
//! `"Y"`/`"N"`) plus bookkeeping fields, so one decoder serves both layouts. Instants are epoch
//! milliseconds; `attributes` is JSON.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use redis::Value;
use session_core::clock::{from_millis_since_epoch, millis_since_epoch};
use session_core::{Result, SessionHandle, SessionPolicy, UserSession};

use crate::config::Layout;
use crate::error::decode;

fn flag(b: bool) -> &'static str {
    if b { "Y" } else { "N" }
}

/// The editable fields, as `field, value` pairs for `HSET`.
pub(crate) fn editable_fields(session: &UserSession) -> Result<Vec<String>> {
    Ok(vec![
        "company_name".into(),
        session.company_name.clone(),
        "email".into(),
        session.email.clone(),
        "is_root".into(),
        flag(session.is_root).into(),
        "attributes".into(),
        session.attributes_json()?,
    ])
}

/// Every field, as `field, value` pairs for `HSET` on create.
pub(crate) fn all_fields(session: &UserSession) -> Result<Vec<String>> {
    let mut fields = vec![
        "user_id".into(),
        session.user_id.clone(),
        "remember_me".into(),
        flag(session.remember_me).into(),
        "created_at".into(),
        millis_since_epoch(session.created_at).to_string(),
        "last_seen_at".into(),
        millis_since_epoch(session.last_seen_at).to_string(),
        "idle_expires_at".into(),
        millis_since_epoch(session.idle_expires_at).to_string(),
        "absolute_expires_at".into(),
        millis_since_epoch(session.absolute_expires_at).to_string(),
        "version".into(),
        session.version.to_string(),
    ];
    fields.extend(editable_fields(session)?);
    Ok(fields)
}

fn text(handle: &SessionHandle, value: &Value) -> Result<String> {
    match value {
        Value::BulkString(bytes) => {
            String::from_utf8(bytes.clone()).map_err(|_| decode(handle, "a field is not UTF-8"))
        }
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(n) => Ok(n.to_string()),
        other => Err(decode(handle, format!("unexpected field value {other:?}"))),
    }
}

/// The field map of an `HGETALL` reply (RESP2 array or RESP3 map). Empty when the key is absent.
pub(crate) fn hash_fields(
    handle: &SessionHandle,
    value: &Value,
) -> Result<HashMap<String, String>> {
    let mut map = HashMap::new();
    match value {
        Value::Nil => {}
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(decode(handle, "odd-length hash reply"));
            }
            for pair in items.chunks_exact(2) {
                map.insert(text(handle, &pair[0])?, text(handle, &pair[1])?);
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                map.insert(text(handle, k)?, text(handle, v)?);
            }
        }
        other => return Err(decode(handle, format!("expected a hash, got {other:?}"))),
    }
    Ok(map)
}

fn required<'a>(
    handle: &SessionHandle,
    fields: &'a HashMap<String, String>,
    name: &str,
) -> Result<&'a str> {
    fields
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| decode(handle, format!("missing field `{name}`")))
}

fn yes_no(handle: &SessionHandle, name: &str, value: &str) -> Result<bool> {
    match value {
        "Y" => Ok(true),
        "N" => Ok(false),
        other => Err(decode(
            handle,
            format!("`{name}` is {other:?}, expected \"Y\" or \"N\""),
        )),
    }
}

fn instant(handle: &SessionHandle, name: &str, value: &str) -> Result<SystemTime> {
    value
        .parse::<u64>()
        .map(from_millis_since_epoch)
        .map_err(|_| decode(handle, format!("`{name}` is not epoch milliseconds")))
}

/// Decodes a session hash. `pttl` (milliseconds, negative if none) stands in for a missing idle
/// expiry in the compatible layout, where another service may have written only the four shared
/// fields. Returns `None` for an absent key.
pub(crate) fn decode_session(
    handle: &SessionHandle,
    fields: &HashMap<String, String>,
    pttl: Option<i64>,
    policy: &SessionPolicy,
    layout: Layout,
) -> Result<Option<UserSession>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let lenient = layout == Layout::Compatible;
    let optional = |name: &str| -> Result<Option<&str>> {
        if lenient {
            Ok(fields.get(name).map(String::as_str))
        } else {
            required(handle, fields, name).map(Some)
        }
    };
    let now = policy.now();
    let idle_expires_at = match optional("idle_expires_at")? {
        Some(v) => instant(handle, "idle_expires_at", v)?,
        None => match pttl {
            Some(ms) if ms > 0 => now + Duration::from_millis(ms.unsigned_abs()),
            // No TTL at all: the other service keeps it forever; treat it as freshly active.
            _ => now + policy.idle_timeout,
        },
    };
    let created_at = optional("created_at")?
        .map(|v| instant(handle, "created_at", v))
        .transpose()?
        .unwrap_or(now);
    let last_seen_at = optional("last_seen_at")?
        .map(|v| instant(handle, "last_seen_at", v))
        .transpose()?
        .unwrap_or(created_at);
    let absolute_expires_at = optional("absolute_expires_at")?
        .map(|v| instant(handle, "absolute_expires_at", v))
        .transpose()?
        .unwrap_or(idle_expires_at);
    let version = optional("version")?
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| decode(handle, "`version` is not a number"))
        })
        .transpose()?
        .unwrap_or(0);
    let remember_me = optional("remember_me")?
        .map(|v| yes_no(handle, "remember_me", v))
        .transpose()?
        .unwrap_or(false);
    let attributes = match optional("attributes")? {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| decode(handle, format!("`attributes` is not a JSON object: {e}")))?,
        None => session_core::Attributes::new(),
    };
    let text_field = |name: &str| -> Result<String> {
        if lenient {
            Ok(fields.get(name).cloned().unwrap_or_default())
        } else {
            required(handle, fields, name).map(str::to_owned)
        }
    };
    let is_root = match fields.get("is_root") {
        Some(v) => yes_no(handle, "is_root", v)?,
        None if lenient => false,
        None => return Err(decode(handle, "missing field `is_root`")),
    };
    let session = UserSession {
        handle: handle.clone(),
        user_id: required(handle, fields, "user_id")?.to_owned(),
        company_name: text_field("company_name")?,
        email: text_field("email")?,
        is_root,
        remember_me,
        attributes,
        created_at,
        last_seen_at,
        idle_expires_at,
        absolute_expires_at,
        version,
    };
    Ok(Some(session))
}
