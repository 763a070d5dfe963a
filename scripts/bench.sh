#!/usr/bin/env bash
# The full benchmark run: the session stores against their baselines (session-bench), then the
# servers' own ceilings for the same work, measured on the same machine right after:
#   redis-benchmark on HMGET of the session fields (what `get` sends), an EVALSHA of a script reading
#   them, HSET, DEL and RENAME;
#   pgbench -S (select-only, keyed by primary key) in a database of its own.
# Results: bench-results/results.json and bench-results/ceilings.txt (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_ROW=${SECONDS_PER_ROW:-2}
REDIS_PORT=${REDIS_PORT:-6379}
PG_URL_BASE=${PG_URL_BASE:-postgres://postgres@127.0.0.1:5432}
mkdir -p bench-results

# `--ceilings-only` skips the session benchmarks (e.g. right after a `session-bench` run of its own).
if [ "${1:-}" = "--ceilings-only" ]; then
    shift
else
    # session-bench is a workspace of its own (its own Cargo.lock and target directory).
    cargo run --release --manifest-path crates/session-bench/Cargo.toml -- --seconds "$SECONDS_PER_ROW" "$@"
fi

out=bench-results/ceilings.txt
: > "$out"
key="bench:ceiling:{tag}:s:hash"
redis-cli -p "$REDIS_PORT" HSET "$key" user_id u company_name Acme email a@example.com is_root N \
    remember_me N attributes '{}' created_at 1 last_seen_at 1 idle_expires_at 99999999999999 \
    absolute_expires_at 99999999999999 version 1 > /dev/null
# The field list of session_redis::SESSION_FIELDS, in its order.
fields="user_id company_name email is_root remember_me attributes created_at last_seen_at idle_expires_at absolute_expires_at version"
sha=$(redis-cli -p "$REDIS_PORT" SCRIPT LOAD "return redis.call('HMGET', KEYS[1], unpack(ARGV))")
for clients in 1 32; do
    # HMGET: what `get` sends; EVALSHA: a script reading the same (the scripted operations' floor);
    # HSET and DEL: the single writes nearest to `update`/`create` and `delete`; RENAME (onto
    # itself, so the key stays): `rotate`'s.
    for cmd in "HMGET $key $fields" "EVALSHA $sha 1 $key $fields" "HSET $key version 2" "DEL bench:ceiling:{tag}:absent" "RENAME $key $key"; do
        rps=$(redis-benchmark -p "$REDIS_PORT" -c "$clients" -n 200000 -q $cmd | grep -Eo '[0-9.]+ requests per second' | cut -d' ' -f1)
        echo "redis-benchmark clients=$clients ${cmd%% *}: $rps requests/s" | tee -a "$out"
    done
done
redis-cli -p "$REDIS_PORT" DEL "$key" > /dev/null

db=session_pgbench_$$
psql "$PG_URL_BASE/postgres" -qc "CREATE DATABASE $db"
trap 'psql "$PG_URL_BASE/postgres" -qc "DROP DATABASE IF EXISTS $db"' EXIT
pgbench -q -i -s 1 "$PG_URL_BASE/$db" > /dev/null 2>&1
for clients in 1 32; do
    tps=$(pgbench -S -c "$clients" -j 2 -T "$SECONDS_PER_ROW" "$PG_URL_BASE/$db" 2>/dev/null | grep -Eo 'tps = [0-9.]+' | head -1 | cut -d' ' -f3)
    echo "pgbench -S clients=$clients: $tps transactions/s" | tee -a "$out"
done
