//! The session hash: field names and encodings, shared by both layouts.
//!
//! Field names are the compatible layout's (`user_id`, `company_name`, `email`, `is_root` as
//! `"Y"`/`"N"`) plus bookkeeping fields, so one decoder serves both layouts. Instants are epoch
//! milliseconds; `attributes` is JSON.
//!
//! Sessions are read positionally (`HMGET key <FIELDS>`, and scripts return the same array), not
//! with `HGETALL`: the reply carries 14 values instead of 28 names and values, and decoding indexes
//! an array instead of building a map. Profiling the 32-task `get` showed the client's RESP parsing
//! and per-value allocations as its largest cost (docs/adr/0009).

use std::time::{Duration, SystemTime};

use redis::Value;
use session_core::clock::{from_millis_since_epoch, millis_since_epoch};
use session_core::{Result, SessionHandle, SessionPolicy, UserSession};

use crate::config::Layout;
use crate::error::decode;

/// Every field of a session hash, in the order `get` asks for them (`HMGET key <FIELDS>`) and the
/// scripts return them. Another service reading sessions can ask for the same list.
///
/// The last three (`authenticated_at`, `device`, `address`) came later: a session written before
/// them reads as authenticated at its creation, with no device metadata (an `HMGET` of a field a
/// hash lacks answers nil), so no stored session needs rewriting.
pub const FIELDS: [&str; 14] = [
    "user_id",
    "company_name",
    "email",
    "is_root",
    "remember_me",
    "attributes",
    "created_at",
    "last_seen_at",
    "idle_expires_at",
    "absolute_expires_at",
    "version",
    "authenticated_at",
    "device",
    "address",
];

/// The position of `name` in [`FIELDS`]; a compile error for an unknown name.
const fn at(name: &str) -> usize {
    let mut i = 0;
    while i < FIELDS.len() {
        if str_eq(FIELDS[i], name) {
            return i;
        }
        i += 1;
    }
    panic!("not a session field")
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const USER_ID: usize = at("user_id");
const COMPANY_NAME: usize = at("company_name");
const EMAIL: usize = at("email");
const IS_ROOT: usize = at("is_root");
const REMEMBER_ME: usize = at("remember_me");
const ATTRIBUTES: usize = at("attributes");
const CREATED_AT: usize = at("created_at");
const LAST_SEEN_AT: usize = at("last_seen_at");
const IDLE_EXPIRES_AT: usize = at("idle_expires_at");
const ABSOLUTE_EXPIRES_AT: usize = at("absolute_expires_at");
const VERSION: usize = at("version");
const AUTHENTICATED_AT: usize = at("authenticated_at");
const DEVICE: usize = at("device");
const ADDRESS: usize = at("address");

/// Lua declarations of [`FIELDS`] and of each field's (1-based) position, for a script whose
/// text is `uses`: only the names it mentions, since every declaration runs on every call.
pub(crate) fn lua_fields(uses: &str) -> String {
    let mut lua = String::new();
    if mentions(uses, "FIELDS") {
        let names: Vec<String> = FIELDS.iter().map(|f| format!("'{f}'")).collect();
        lua.push_str(&format!("local FIELDS = {{{}}}\n", names.join(", ")));
    }
    for (i, name) in FIELDS.iter().enumerate() {
        let constant = name.to_uppercase();
        if mentions(uses, &constant) {
            lua.push_str(&format!("local {constant} = {}\n", i + 1));
        }
    }
    lua
}

/// Whether `text` holds `name` as a whole Lua identifier.
pub(crate) fn mentions(text: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

pub(crate) fn flag(b: bool) -> &'static str {
    if b { "Y" } else { "N" }
}

/// Appends the editable fields as `field, value` pairs for `HSET`.
pub(crate) fn push_editable_fields(
    invocation: &mut redis::ScriptInvocation<'_>,
    session: &UserSession,
) -> Result<()> {
    invocation
        .arg(FIELDS[COMPANY_NAME])
        .arg(&session.company_name)
        .arg(FIELDS[EMAIL])
        .arg(&session.email)
        .arg(FIELDS[IS_ROOT])
        .arg(flag(session.is_root))
        .arg(FIELDS[ATTRIBUTES])
        .arg(session.attributes_json()?)
        .arg(FIELDS[AUTHENTICATED_AT])
        .arg(millis_since_epoch(session.authenticated_at))
        .arg(FIELDS[DEVICE])
        .arg(&session.device)
        .arg(FIELDS[ADDRESS])
        .arg(session.address.map(|a| a.to_string()).unwrap_or_default());
    Ok(())
}

/// Appends every field as `field, value` pairs for `HSET` on create.
pub(crate) fn push_all_fields(
    invocation: &mut redis::ScriptInvocation<'_>,
    session: &UserSession,
) -> Result<()> {
    invocation
        .arg(FIELDS[USER_ID])
        .arg(&session.user_id)
        .arg(FIELDS[REMEMBER_ME])
        .arg(flag(session.remember_me))
        .arg(FIELDS[CREATED_AT])
        .arg(millis_since_epoch(session.created_at))
        .arg(FIELDS[LAST_SEEN_AT])
        .arg(millis_since_epoch(session.last_seen_at))
        .arg(FIELDS[IDLE_EXPIRES_AT])
        .arg(millis_since_epoch(session.idle_expires_at))
        .arg(FIELDS[ABSOLUTE_EXPIRES_AT])
        .arg(millis_since_epoch(session.absolute_expires_at))
        .arg(FIELDS[VERSION])
        .arg(session.version);
    push_editable_fields(invocation, session)
}

/// One session hash as read: each of [`FIELDS`] present or not.
pub(crate) struct Row([Option<Vec<u8>>; FIELDS.len()]);

impl Row {
    /// The row of an `HMGET <FIELDS>` reply (or of a script returning one); `None` when the key
    /// is absent, i.e. every field is missing.
    pub(crate) fn from_reply(handle: &SessionHandle, reply: Value) -> Result<Option<Self>> {
        let items = match reply {
            Value::Nil => return Ok(None),
            Value::Array(items) if items.len() == FIELDS.len() => items,
            other => {
                return Err(decode(
                    handle,
                    format!("expected {} fields, got {other:?}", FIELDS.len()),
                ));
            }
        };
        let mut row: [Option<Vec<u8>>; FIELDS.len()] = Default::default();
        for (slot, item) in row.iter_mut().zip(items) {
            *slot = match item {
                Value::Nil => None,
                Value::BulkString(bytes) => Some(bytes),
                Value::SimpleString(s) => Some(s.into_bytes()),
                Value::Int(n) => Some(n.to_string().into_bytes()),
                other => return Err(decode(handle, format!("unexpected field value {other:?}"))),
            };
        }
        Ok(row.iter().any(Option::is_some).then_some(Self(row)))
    }

    fn str(&self, handle: &SessionHandle, field: usize) -> Result<Option<&str>> {
        self.0[field]
            .as_deref()
            .map(|bytes| std::str::from_utf8(bytes).map_err(|_| not_utf8(handle, field)))
            .transpose()
    }

    fn take_string(&mut self, handle: &SessionHandle, field: usize) -> Result<Option<String>> {
        self.0[field]
            .take()
            .map(|bytes| String::from_utf8(bytes).map_err(|_| not_utf8(handle, field)))
            .transpose()
    }
}

/// The bytes of a text reply value (bulk or simple string); `None` for any other kind.
pub(crate) fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn not_utf8(handle: &SessionHandle, field: usize) -> session_core::SessionError {
    decode(handle, format!("`{}` is not UTF-8", FIELDS[field]))
}

fn missing(handle: &SessionHandle, field: usize) -> session_core::SessionError {
    decode(handle, format!("missing field `{}`", FIELDS[field]))
}

fn yes_no(handle: &SessionHandle, field: usize, value: &str) -> Result<bool> {
    match value {
        "Y" => Ok(true),
        "N" => Ok(false),
        other => Err(decode(
            handle,
            format!("`{}` is {other:?}, expected \"Y\" or \"N\"", FIELDS[field]),
        )),
    }
}

fn instant(handle: &SessionHandle, field: usize, value: &str) -> Result<SystemTime> {
    value
        .parse::<u64>()
        .map(from_millis_since_epoch)
        .map_err(|_| {
            decode(
                handle,
                format!("`{}` is not epoch milliseconds", FIELDS[field]),
            )
        })
}

/// Decodes a session row. `pttl` (milliseconds, negative if none) stands in for a missing idle
/// expiry in the compatible layout, where another service may have written only the four shared
/// fields; there, every field but `user_id` may be missing, and `now` dates what is absent. In
/// the standard layout every field is required.
pub(crate) fn decode_session(
    handle: &SessionHandle,
    mut row: Row,
    pttl: Option<i64>,
    now: SystemTime,
    policy: &SessionPolicy,
    layout: Layout,
) -> Result<UserSession> {
    let lenient = layout == Layout::Compatible;
    let instant_field = |row: &Row, field: usize| -> Result<Option<SystemTime>> {
        match row.str(handle, field)? {
            Some(v) => instant(handle, field, v).map(Some),
            None if lenient => Ok(None),
            None => Err(missing(handle, field)),
        }
    };
    let flag_field = |row: &Row, field: usize| -> Result<bool> {
        match row.str(handle, field)? {
            Some(v) => yes_no(handle, field, v),
            None if lenient => Ok(false),
            None => Err(missing(handle, field)),
        }
    };
    let idle_expires_at = match instant_field(&row, IDLE_EXPIRES_AT)? {
        Some(at) => at,
        None => match pttl {
            Some(ms) if ms > 0 => now + Duration::from_millis(ms.unsigned_abs()),
            // No TTL at all: the other service keeps it forever; treat it as freshly active.
            _ => now + policy.idle_timeout,
        },
    };
    let created_at = instant_field(&row, CREATED_AT)?.unwrap_or(now);
    let last_seen_at = instant_field(&row, LAST_SEEN_AT)?.unwrap_or(created_at);
    let absolute_expires_at = instant_field(&row, ABSOLUTE_EXPIRES_AT)?.unwrap_or(idle_expires_at);
    let version = match row.str(handle, VERSION)? {
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| decode(handle, "`version` is not a number"))?,
        None if lenient => 0,
        None => return Err(missing(handle, VERSION)),
    };
    let remember_me = flag_field(&row, REMEMBER_ME)?;
    let is_root = flag_field(&row, IS_ROOT)?;
    let attributes = match row.str(handle, ATTRIBUTES)? {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| decode(handle, format!("`attributes` is not a JSON object: {e}")))?,
        None if lenient => session_core::Attributes::new(),
        None => return Err(missing(handle, ATTRIBUTES)),
    };
    // Text fields are moved out of the reply rather than copied.
    let mut text = |field: usize| -> Result<String> {
        match row.take_string(handle, field)? {
            Some(v) => Ok(v),
            None if lenient => Ok(String::new()),
            None => Err(missing(handle, field)),
        }
    };
    let company_name = text(COMPANY_NAME)?;
    let email = text(EMAIL)?;
    // Fields added after the first layout: absent from sessions written before them, in either
    // layout.
    let authenticated_at = match row.str(handle, AUTHENTICATED_AT)? {
        Some(v) => instant(handle, AUTHENTICATED_AT, v)?,
        None => created_at,
    };
    let address = match row.str(handle, ADDRESS)? {
        None | Some("") => None,
        Some(v) => Some(
            v.parse()
                .map_err(|_| decode(handle, "`address` is not an IP address"))?,
        ),
    };
    let device = row.take_string(handle, DEVICE)?.unwrap_or_default();
    let user_id = row
        .take_string(handle, USER_ID)?
        .ok_or_else(|| missing(handle, USER_ID))?;
    Ok(UserSession {
        handle: handle.clone(),
        user_id,
        company_name,
        email,
        is_root,
        remember_me,
        attributes,
        created_at,
        last_seen_at,
        idle_expires_at,
        absolute_expires_at,
        version,
        authenticated_at,
        device,
        address,
    })
}

/// The session `update` stored: `session` with its version bumped and the bookkeeping fields a
/// concurrent `touch` may have moved (or a caller may have edited, though they are not editable)
/// taken from the script's reply `[last_seen_at, idle_expires_at, absolute_expires_at,
/// created_at, remember_me]`. Returning these five instead of the whole row spares a reply and a
/// decode of the attributes the caller just sent.
pub(crate) fn updated_session(
    handle: &SessionHandle,
    session: &UserSession,
    reply: &[Value],
) -> Result<UserSession> {
    let text = |i: usize, field: usize| -> Result<&str> {
        let value = reply
            .get(i)
            .and_then(bytes)
            .ok_or_else(|| missing(handle, field))?;
        std::str::from_utf8(value).map_err(|_| not_utf8(handle, field))
    };
    let mut stored = session.clone();
    // A stored version has no successor only if another writer put it there; refuse, not wrap.
    stored.version = session
        .version
        .checked_add(1)
        .ok_or_else(|| decode(handle, "`version` is at its maximum"))?;
    stored.last_seen_at = instant(handle, LAST_SEEN_AT, text(0, LAST_SEEN_AT)?)?;
    stored.idle_expires_at = instant(handle, IDLE_EXPIRES_AT, text(1, IDLE_EXPIRES_AT)?)?;
    stored.absolute_expires_at =
        instant(handle, ABSOLUTE_EXPIRES_AT, text(2, ABSOLUTE_EXPIRES_AT)?)?;
    stored.created_at = instant(handle, CREATED_AT, text(3, CREATED_AT)?)?;
    stored.remember_me = yes_no(handle, REMEMBER_ME, text(4, REMEMBER_ME)?)?;
    Ok(stored)
}
