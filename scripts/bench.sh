#!/usr/bin/env bash
# The full benchmark run: the session stores against their baselines (session-bench), then the
# servers' own ceilings for the same work, measured on the same machine right after:
#   redis-benchmark replaying what each side sends (session-bench's `redis-ceilings`);
#   pgbench -S (select-only, keyed by primary key) in a database of its own.
# Results: bench-results/results.json and bench-results/ceilings.txt (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_ROW=${SECONDS_PER_ROW:-2}
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
# redis-benchmark replaying, on a private redis-server, the exact commands each side sends
# (captured with MONITOR from real operations: ours HMGET and the touch and create scripts' EVALSHA,
# tower-sessions' GET and SET … EXAT); see crates/session-bench/src/ceilings.rs.
cargo run --release --manifest-path crates/session-bench/Cargo.toml -- redis-ceilings | grep '^redis-ceiling' | tee -a "$out"

db=session_pgbench_$$
psql "$PG_URL_BASE/postgres" -qc "CREATE DATABASE $db"
trap 'psql "$PG_URL_BASE/postgres" -qc "DROP DATABASE IF EXISTS $db"' EXIT
pgbench -q -i -s 1 "$PG_URL_BASE/$db" > /dev/null 2>&1
for clients in 1 32; do
    tps=$(pgbench -S -c "$clients" -j 2 -T "$SECONDS_PER_ROW" "$PG_URL_BASE/$db" 2>/dev/null | grep -Eo 'tps = [0-9.]+' | head -1 | cut -d' ' -f3)
    echo "pgbench -S clients=$clients: $tps transactions/s" | tee -a "$out"
done
