//! Lua scripts: each operation that must read-then-write is one `EVALSHA` (one round trip, atomic).
//!
//! Conventions shared by every script:
//! - `ARGV[1]` is the policy clock's "now" in epoch milliseconds: expiry is judged by the policy's
//!   clock as well as by Redis's own TTLs, so a session is never returned once the policy says it
//!   has expired, even before Redis deletes it.
//! - In the standard layout a user's keys share the hash tag `{tag}`: `base` is `<prefix>{tag}:`,
//!   session keys are `base .. 's:' .. <hash>`, the user index is `base .. 'u:' .. <user id>`, a
//!   sorted set of session hashes. Keys derived inside a script from `base` are in the same slot
//!   as `KEYS[1]` by construction.
//! - An empty `base` means the compatible layout: no index.
//! - On a Cluster every key a script touches is declared (ADR 0019): a script that needs the
//!   user's index and was not given it (`KEYS`) returns `{'index', user_id}` before any write, and
//!   the client calls it again with the index named; keys of other sessions are named by the
//!   client after reading the index's members (`ZRANGE`), each beside its member in `ARGV`. On one
//!   node (no slots to migrate) the scripts derive those keys themselves, saving the round trip.
//! - A session hash's bookkeeping fields may be absent in the compatible layout (a session written
//!   by another service); `PTTL` then stands in for the idle expiry.
//! - Sessions are read and returned as rows: `read(key)` is `HMGET key <FIELDS>`, the field list
//!   and positions generated from `codec::FIELDS` (see `codec::lua_fields`); each script declares
//!   only the fields and helpers it uses (`script_text`).
//! - The index (ADR 0020, 0031): a member's score is a lower bound of its session's idle expiry
//!   (create, rotate and a trim write the expiry; a touch leaves it). This code reads a score only
//!   as a hint: a member whose score has passed is removed only if its session is gone, else
//!   re-scored (`trim`), and `list_by_user` reads every member's session. The index's own TTL is
//!   raised with `PEXPIREAT … GT` to every idle expiry a create or touch writes, so it lives as
//!   long as its longest-lived session (after a delete, up to the deleted session's expiry). The
//!   previous release (ADR 0020) reads scores the same way, so it and this one share indexes.

use std::sync::LazyLock;

use redis::Script;

/// Shared Lua helpers, each prepended to the scripts that call it (directly or through another
/// helper), in this order: a definition runs on every call of the script, so a script carries
/// only what it uses. A helper may call only helpers before it.
const HELPERS: [(&str, &str); 7] = [
    (
        "expired",
        r"local function expired(now, ie, ae)
  return (ie ~= nil and now >= ie) or (ae ~= nil and now >= ae)
end",
    ),
    (
        "read",
        r"local function read(key)
  return redis.call('HMGET', key, unpack(FIELDS))
end",
    ),
    (
        "absent",
        r"-- Whether a row read from a key holds no field at all (the key is absent).
local function absent(row)
  for i = 1, #FIELDS do
    if row[i] then return false end
  end
  return true
end",
    ),
    (
        "extend_index",
        r"-- Raises the index's TTL to `at` (never lowers it); a new index has no TTL, which GT treats as
-- infinite, so it gets one with NX.
local function extend_index(idx, at)
  if redis.call('PEXPIREAT', idx, at, 'GT') == 0 then
    redis.call('PEXPIREAT', idx, at, 'NX')
  end
end",
    ),
    (
        "index_of",
        r"-- The user's index key: the one the caller declared, if it is the user's; else, when the caller
-- may not have the script touch undeclared keys (`strict`, on a Cluster), nil, for the script to
-- ask for it; else derived from the base.
local function index_of(declared, base, user, strict)
  local idx = base .. 'u:' .. user
  if declared then
    if declared == idx then return idx end
    return nil
  end
  if strict == 'Y' then return nil end
  return idx
end",
    ),
    (
        "members_at",
        r"-- The members to look at, from ARGV[first]: a count, then that many members whose session keys
-- are KEYS[key0 + 1 ..] (named by the caller); a count of -1 means none were named, and
-- `derive(base)` lists them here, their keys under `base`. Returns the members and a map from
-- member to session key.
local function members_at(first, key0, base, derive)
  local n = tonumber(ARGV[first])
  local members, keys = {}, {}
  if n >= 0 then
    for i = 1, n do
      members[i] = ARGV[first + i]
      keys[members[i]] = KEYS[key0 + i]
    end
  else
    members = derive()
    for _, m in ipairs(members) do keys[m] = base .. 's:' .. m end
  end
  return members, keys
end",
    ),
    (
        "trim",
        r"-- Of `members`, those still in the index with a score that has passed: removed if their session
-- is gone (expired, deleted, or unreadable), else re-scored with the session's idle expiry.
-- Returns how many were removed.
local function trim(idx, members, keys, now)
  local removed = 0
  for _, m in ipairs(members) do
    local score = redis.call('ZSCORE', idx, m)
    if score and tonumber(score) <= now then
      local f = redis.call('HMGET', keys[m], 'idle_expires_at', 'absolute_expires_at')
      local ie = tonumber(f[1])
      if ie and not expired(now, ie, tonumber(f[2])) then
        redis.call('ZADD', idx, ie, m)
        redis.call('PEXPIREAT', idx, ie, 'GT')
      else
        redis.call('DEL', keys[m])
        redis.call('ZREM', idx, m)
        removed = removed + 1
      end
    end
  end
  return removed
end",
    ),
];

/// `body` behind the field declarations and helpers it uses (see [`HELPERS`]).
fn with_helpers(body: &str) -> Script {
    Script::new(&script_text(body))
}

fn script_text(body: &str) -> String {
    // Names are looked for in code, not comments: "the caller read them" calls no `read`. A
    // helper calls only helpers defined before it, so one pass from the last finds them all: the
    // code that needs a name is the body's and that of the helpers taken so far.
    let mut code = without_comments(body);
    let mut used = [false; HELPERS.len()];
    for (i, (name, helper)) in HELPERS.iter().enumerate().rev() {
        if crate::codec::mentions(&code, name) {
            used[i] = true;
            code.push_str(&without_comments(helper));
        }
    }
    let helpers: String = HELPERS
        .iter()
        .zip(used)
        .filter(|(_, on)| *on)
        .map(|((_, helper), _)| format!("{helper}\n"))
        .collect();
    let fields = crate::codec::lua_fields(&code);
    format!("{fields}{helpers}{body}")
}

/// `text` without its Lua line comments (`--` to the end of the line; the scripts' strings hold
/// no `--`).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.split_once("--").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// KEYS: session, [index, then the session keys of the members named]. ARGV: now, hash,
/// idle_expires_at, absolute_expires_at, cap, base, count of members named (-1: none, the script
/// reads them), the members, then field, value, ... Evicts the user's oldest live sessions beyond
/// `cap - 1` (cap 0: none); with a cap and members named, members added since are counted as
/// live and newest, and `'retry'` is returned (having dropped only gone sessions) if keeping the
/// cap would mean evicting one of them. Without a cap: `HSET`, `PEXPIREAT`, `ZADD`, `PEXPIREAT … GT`
/// (plus `NX` for a user's first session); about one create in 21, chosen by the new hash (by the
/// client on a Cluster, naming the due members), also trims the index.
pub(crate) static CREATE: LazyLock<Script> = LazyLock::new(|| {
    with_helpers(
        r"
local now = tonumber(ARGV[1])
local cap = tonumber(ARGV[5])
local named = tonumber(ARGV[7])
if KEYS[2] and cap > 0 then
  -- The cap counts live sessions: every member's session is looked at (scores are lower bounds),
  -- the gone ones are dropped and the oldest live ones beyond the cap evicted.
  local members, keys = members_at(7, 2, ARGV[6], function()
    return redis.call('ZRANGE', KEYS[2], 0, -1)
  end)
  -- Members added since the caller read the ones it named (sign-ins racing this one) are
  -- counted live and newest: their keys are not declared, so they are not read.
  local unnamed = 0
  if named >= 0 then
    local current = {}
    for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
      current[m] = true
      if not keys[m] then unnamed = unnamed + 1 end
    end
    -- Named members no longer in the index went another way (signed out, rotated, evicted).
    local still = {}
    for _, m in ipairs(members) do
      if current[m] then still[#still + 1] = m end
    end
    members = still
  end
  local live = {}
  for _, m in ipairs(members) do
    local f = redis.call('HMGET', keys[m], 'created_at', 'idle_expires_at', 'absolute_expires_at')
    if f[2] and not expired(now, tonumber(f[2]), tonumber(f[3])) then
      live[#live + 1] = {tonumber(f[1]) or 0, m}
    else
      redis.call('DEL', keys[m])
      redis.call('ZREM', KEYS[2], m)
    end
  end
  local excess = #live + unnamed + 1 - cap
  -- Keeping the cap would mean evicting a session this call may not touch: the caller reads the
  -- members again.
  if excess > #live then return 'retry' end
  if excess > 0 then
    table.sort(live, function(a, b)
      if a[1] == b[1] then return a[2] < b[2] end
      return a[1] < b[1]
    end)
    for i = 1, excess do
      redis.call('DEL', keys[live[i][2]])
      redis.call('ZREM', KEYS[2], live[i][2])
    end
  end
elseif KEYS[2] and (named > 0 or (named < 0 and string.byte(ARGV[2], 1) % 16 == 0)) then
  local members, keys = members_at(7, 2, ARGV[6], function()
    return redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 32)
  end)
  trim(KEYS[2], members, keys, now)
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8 + math.max(named, 0)))
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
if KEYS[2] then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
  extend_index(KEYS[2], ARGV[3])
end
return 1
",
    )
});

/// KEYS: session, [the user's index]. ARGV: now, touch interval ms, idle ms, remember-me idle ms,
/// absolute ms, base, hash, strict ('Y': the index must be declared). Returns `{row, PTTL}` (PTTL
/// -3 when not needed), nil when absent or expired, or `{'index', user_id}` when a write is due
/// and the index, needed and not declared, must be. Writes
/// only when the interval has passed since `last_seen_at`: `PEXPIREAT … GT` of the index (and a
/// `ZSCORE` when that refuses), then `HSET` and `PEXPIREAT` of the session, after the `HMGET`.
pub(crate) static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    with_helpers(
        r"
local now = tonumber(ARGV[1])
local h = read(KEYS[1])
if absent(h) then return nil end
local ie = tonumber(h[IDLE_EXPIRES_AT])
local ae = tonumber(h[ABSOLUTE_EXPIRES_AT])
-- Only a session written by another service lacks the idle expiry; its TTL stands in.
local pttl = -3
if ie == nil then pttl = redis.call('PTTL', KEYS[1]) end
if expired(now, ie, ae) then return nil end
-- A row without its user is corrupt: returned unchanged for the client to report.
if not h[USER_ID] then return {h, pttl} end
local ls = tonumber(h[LAST_SEEN_AT])
if ls ~= nil and now - ls < tonumber(ARGV[2]) then return {h, pttl} end
local idx
if ARGV[6] ~= '' then
  idx = index_of(KEYS[2], ARGV[6], h[USER_ID], ARGV[8])
  if not idx then return {'index', h[USER_ID]} end
end
local idle = tonumber(ARGV[3])
if h[REMEMBER_ME] == 'Y' then idle = tonumber(ARGV[4]) end
if ae == nil then
  -- A session another service wrote: its absolute lifetime starts when this library first sees it.
  ae = now + tonumber(ARGV[5])
  redis.call('HSET', KEYS[1], 'absolute_expires_at', ae)
  h[ABSOLUTE_EXPIRES_AT] = tostring(ae)
  if not h[CREATED_AT] then
    redis.call('HSET', KEYS[1], 'created_at', now)
    h[CREATED_AT] = tostring(now)
  end
end
local nie = math.min(now + idle, ae)
-- The index first: on one node, where it is found from the row, if Redis refuses it
-- mid-migration of the slot, the script stops before writing the session.
if idx then
  -- The member's score is left as it is (a lower bound, ADR 0031); the index lives as long as
  -- this session. GT refuses on an index that is absent or already lives longer (another of the
  -- user's sessions expires later); only then is the member looked for.
  if redis.call('PEXPIREAT', idx, nie, 'GT') == 0
    and not redis.call('ZSCORE', idx, ARGV[7]) then
    -- The session is not in its index here (mid-migration of the slot, the index has not
    -- arrived): no write, so the session's activity never outruns what revocation can find.
    return {h, pttl}
  end
end
redis.call('HSET', KEYS[1], 'last_seen_at', now, 'idle_expires_at', nie)
redis.call('PEXPIREAT', KEYS[1], nie)
h[LAST_SEEN_AT] = tostring(now)
h[IDLE_EXPIRES_AT] = tostring(nie)
return {h, -3}
",
    )
});

/// KEYS: session, the session's key under a new token (same slot), the user's index.
/// ARGV: now, expected version, user_id, new hash, old hash, new is_root flag, new
/// authenticated_at, field, value, ...
/// Returns `{tag, last_seen_at, idle_expires_at, absolute_expires_at, created_at, remember_me}`
/// (what the caller's copy may lack) where `tag` is `'ok'`, or `'rotated'` when the write changed
/// `is_root` or `authenticated_at` (a re-authentication) and the session moved to the new key in
/// the same step; else `{'missing'}`, `{'user'}` or `{'conflict', version}`.
pub(crate) static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    with_helpers(
        r"
local now = tonumber(ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'user_id', 'version', 'idle_expires_at',
  'absolute_expires_at', 'last_seen_at', 'created_at', 'remember_me', 'is_root',
  'authenticated_at')
if not f[1] then return {'missing'} end
if expired(now, tonumber(f[3]), tonumber(f[4])) then return {'missing'} end
if f[1] ~= ARGV[3] then return {'user'} end
local v = tonumber(f[2]) or 0
if v ~= tonumber(ARGV[2]) then return {'conflict', tostring(v)} end
-- A session stored before `authenticated_at` existed was authenticated at its creation.
local moves = f[8] ~= ARGV[6] or (f[9] or f[6]) ~= ARGV[7]
local ie = tonumber(f[3])
-- Refused before any write: a move needs the idle expiry to score the index member with.
if moves and not ie then return redis.error_reply('ERR corrupt session: idle_expires_at') end
redis.call('HSET', KEYS[1], 'version', v + 1, unpack(ARGV, 8))
local tag = 'ok'
if moves then
  -- A privilege change or a re-authentication: the session moves to the new token's key (RENAME keeps the TTL), and
  -- the index follows, scored by the unchanged idle expiry (the new member before the old one
  -- goes; an index made here gets a TTL).
  redis.call('ZADD', KEYS[3], ie, ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[5])
  redis.call('PEXPIREAT', KEYS[3], ie, 'NX')
  redis.call('RENAME', KEYS[1], KEYS[2])
  tag = 'rotated'
end
return {tag, f[5], f[3], f[4], f[6], f[7]}
",
    )
});

/// KEYS: old session, new session, [the user's index]. ARGV: now, base, old hash, new hash,
/// strict ('Y': the index must be declared). Returns `{row, PTTL}` of the renamed session, nil, or
/// `{'index', user_id}` (nothing written) when the index must be declared. `RENAME` keeps the TTL.
pub(crate) static ROTATE: LazyLock<Script> = LazyLock::new(|| {
    with_helpers(
        r"
local now = tonumber(ARGV[1])
local h = read(KEYS[1])
if not h[USER_ID] then return nil end
local ie = h[IDLE_EXPIRES_AT]
if expired(now, tonumber(ie), tonumber(h[ABSOLUTE_EXPIRES_AT])) then return nil end
-- The index before the rename: on one node, where it is found from the row, if Redis refuses it
-- mid-migration of the slot, the script stops before writing anything.
if ARGV[2] ~= '' then
  local idx = index_of(KEYS[3], ARGV[2], h[USER_ID], ARGV[5])
  if not idx then return {'index', h[USER_ID]} end
  -- The new member is scored with the session's idle expiry now (ADR 0020); added before the
  -- old one goes (a corrupt expiry fails here, before any write); an index made here gets a TTL.
  redis.call('ZADD', idx, ie, ARGV[4])
  redis.call('ZREM', idx, ARGV[3])
  redis.call('PEXPIREAT', idx, ie, 'NX')
end
redis.call('RENAME', KEYS[1], KEYS[2])
local pttl = -3
if not ie then pttl = redis.call('PTTL', KEYS[2]) end
return {h, pttl}
",
    )
});

/// KEYS: session, its tombstone, [the user's index]. ARGV: now, base, hash, strict ('Y': the index
/// must be declared), until (epoch ms; `0`: no tombstone). Returns 1 if a live session was
/// removed, else 0, or `{'index', user_id}` (nothing written) when the index must be declared.
/// `HMGET`, `ZREM`, `DEL`. With `until`, it also leaves the tombstone that makes `IMPORT` answer
/// `'ended'` until then (a later instant already there is kept): one step, so an import of the
/// handle runs wholly before (and its copy is removed) or wholly after (and is refused).
pub(crate) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    with_helpers(
        r"
local now = tonumber(ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'user_id', 'idle_expires_at', 'absolute_expires_at')
-- The index first, as in touch and rotate. It keeps its TTL: at most until this session would
-- have expired (ADR 0020).
if f[1] and ARGV[2] ~= '' then
  local idx = index_of(KEYS[3], ARGV[2], f[1], ARGV[4])
  if not idx then return {'index', f[1]} end
  redis.call('ZREM', idx, ARGV[3])
end
local u = tonumber(ARGV[5])
if u > 0 and u > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], ARGV[5], 'PXAT', ARGV[5])
end
if not (f[1] or f[2]) then return 0 end
redis.call('DEL', KEYS[1])
if not f[1] or expired(now, tonumber(f[2]), tonumber(f[3])) then return 0 end
return 1
",
    )
});

/// KEYS: index, then the session keys of the members named. ARGV: base, count of members named
/// (-1: none, the script reads them), the members. Returns `{hash, row, hash, row, ...}` of the
/// sessions there; the client drops expired rows (scores are lower bounds, ADR 0020, so every
/// member is read). With members named (a Cluster, where every key read is declared), returns
/// `'retry'` unless they are still exactly the index's members: a rotation in between would
/// otherwise leave its session out.
pub(crate) static LIST: LazyLock<Script> = LazyLock::new(|| {
    with_helpers(
        r"
local members, keys = members_at(2, 1, ARGV[1], function()
  return redis.call('ZRANGE', KEYS[1], 0, -1)
end)
if tonumber(ARGV[2]) >= 0 then
  local current = redis.call('ZRANGE', KEYS[1], 0, -1)
  if #current ~= #members then return 'retry' end
  for _, m in ipairs(current) do
    if not keys[m] then return 'retry' end
  end
end
local out = {}
for _, m in ipairs(members) do
  local h = read(keys[m])
  if not absent(h) then
    out[#out + 1] = m
    out[#out + 1] = h
  end
end
return out
",
    )
});

/// KEYS: index, then the session key of every member the caller read from it. ARGV: now, hash to
/// keep ('' for none), then the members, in the order of their keys. Returns how many live
/// sessions went, or `'retry'` if the index no longer holds exactly those members. Every key it
/// touches is declared: during a slot migration Redis answers `TRYAGAIN` rather than letting it
/// run on a node that holds only part of the user's keys.
pub(crate) static DELETE_BY_USER: LazyLock<Script> = LazyLock::new(|| {
    with_helpers(
        r"
local now = tonumber(ARGV[1])
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
if #members ~= #KEYS - 1 then return 'retry' end
local declared = {}
for i = 2, #KEYS do declared[ARGV[i + 1]] = KEYS[i] end
for _, m in ipairs(members) do
  if not declared[m] then return 'retry' end
end
local n = 0
for _, m in ipairs(members) do
  if m ~= ARGV[2] then
    local key = declared[m]
    local f = redis.call('HMGET', key, 'idle_expires_at', 'absolute_expires_at')
    if f[1] and not expired(now, tonumber(f[1]), tonumber(f[2])) then n = n + 1 end
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], m)
  end
end
return n
",
    )
});

/// KEYS: index, then the session keys of the members named. ARGV: now, count of members named,
/// the members (the caller read them as due: score not after now). Removes those whose sessions
/// are gone (and any such session key left), re-scoring the live ones; returns how many were
/// removed.
pub(crate) static PURGE_INDEX: LazyLock<Script> = LazyLock::new(|| {
    with_helpers(
        r"
local members, keys = members_at(2, 1, '', function() return {} end)
return trim(KEYS[1], members, keys, tonumber(ARGV[1]))
",
    )
});

/// KEYS: session, its tombstone, the user's index, [the index of another user whose expired
/// session is at the key]. ARGV: now, member, idle_expires_at, base, strict ('Y': the index must
/// be declared), user id, then field, value, ... Stores the session unless its tombstone stands
/// (`'ended'`) or a session is at the key that has not expired (or cannot be judged: no idle
/// expiry), returning `'stored'` or `'present'`; or
/// `{'index', user_id}` (nothing written) when an expired session of another user is there and
/// that user's index must be declared to remove its member. `HSET`, `PEXPIREAT`, `ZADD`, then
/// the index's `PEXPIREAT … GT`, as a create writes them.
pub(crate) static IMPORT: LazyLock<Script> = LazyLock::new(|| {
    with_helpers(
        r"
local now = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[2]) or '0') > now then return 'ended' end
local f = redis.call('HMGET', KEYS[1], 'user_id', 'idle_expires_at', 'absolute_expires_at')
if f[1] or f[2] then
  local ie = tonumber(f[2])
  if not ie or not expired(now, ie, tonumber(f[3])) then return 'present' end
  if f[1] and f[1] ~= ARGV[6] then
    local old = index_of(KEYS[4], ARGV[4], f[1], ARGV[5])
    if not old then return {'index', f[1]} end
    redis.call('ZREM', old, ARGV[2])
  end
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
extend_index(KEYS[3], ARGV[3])
return 'stored'
",
    )
});

/// KEYS: the alias of a handle without this store's tag, the handle's tombstone beside it (both
/// in the slot of the handle's hash). ARGV: now, the user's tag, until (epoch ms). Written before
/// an import stores the session under its user's tag: `'ended'` if the tombstone stands (nothing
/// written), else the alias is set and `'ok'`.
pub(crate) static CLAIM_ALIAS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if tonumber(redis.call('GET', KEYS[2]) or '0') > tonumber(ARGV[1]) then return 'ended' end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
return 'ok'
",
    )
});

/// KEYS: as `CLAIM_ALIAS`. ARGV: until (epoch ms). Leaves the handle's tombstone (a later instant
/// already there is kept) and returns the alias's tag, or nil: an import that claimed the alias
/// first is then ended under its user's tag, and one that comes after is refused here.
pub(crate) static END_ALIAS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local u = tonumber(ARGV[1])
if u > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], ARGV[1], 'PXAT', ARGV[1])
end
return redis.call('GET', KEYS[1])
",
    )
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::mentions;

    #[test]
    fn a_script_declares_only_the_helpers_and_fields_it_uses() {
        let text = script_text("local idx = index_of(KEYS[3], ARGV[2], 'u', 'N')\nreturn idx");
        assert!(text.contains("local function index_of("), "{text}");
        assert!(!text.contains("local FIELDS"), "{text}");
        assert!(!text.contains("local function read("), "{text}");
        assert!(!text.contains("local USER_ID"), "{text}");
    }

    #[test]
    fn a_helper_brings_the_helpers_it_calls_before_it() {
        let text = script_text("return trim(KEYS[1], {}, {}, 0)");
        let expired = text.find("local function expired(").expect(&text);
        let trim = text.find("local function trim(").expect(&text);
        assert!(expired < trim, "{text}");
        assert!(!text.contains("local function members_at("), "{text}");
    }

    #[test]
    fn field_positions_are_declared_when_named() {
        let text = script_text("local h = read(KEYS[1])\nreturn h[IDLE_EXPIRES_AT]");
        assert!(text.starts_with("local FIELDS = {'user_id', "), "{text}");
        assert!(text.contains("local IDLE_EXPIRES_AT = 9\n"), "{text}");
        assert!(!text.contains("local USER_ID"), "{text}");
    }

    #[test]
    fn a_name_in_a_comment_brings_nothing() {
        let text = script_text("-- the caller read them\nreturn 1");
        assert!(!text.contains("local function read("), "{text}");
        assert!(!text.contains("local FIELDS"), "{text}");
    }

    #[test]
    fn mentions_matches_whole_identifiers_only() {
        assert!(mentions("x = read(k)", "read"));
        assert!(!mentions("the script reads them", "read"));
        assert!(!mentions("h[USER_ID_X]", "USER_ID"));
        assert!(mentions("h[USER_ID]", "USER_ID"));
    }
}
