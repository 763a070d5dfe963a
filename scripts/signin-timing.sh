#!/usr/bin/env bash
# Times the demo's sign-in answers for an unknown account, a wrong password, a locked account and
# the right password (30 accounts; each attempt from its own 127.0.x.y source address so that the
# per-address limit stays out of the way). Usage: scripts/signin-timing.sh [debug|release]
# On an SQLite file by default; SIGNIN_DATABASE_URL=postgres://… (an empty database or schema,
# e.g. with `?options=-csearch_path%3Dtiming`) measures on PostgreSQL.
set -euo pipefail
profile=${1:-release}
flag=$([ "$profile" = release ] && echo --release || true)
cargo build -q -p session-demo $flag
bin=target/$profile/session-demo
dir=$(mktemp -d)
trap 'kill $demo 2>/dev/null || true; rm -rf "$dir"' EXIT
export DATABASE_URL="${SIGNIN_DATABASE_URL:-sqlite://$dir/demo.db}"
for i in $(seq 1 30); do
    echo "a long enough password" | "$bin" add-user "u$i@t.test" >/dev/null 2>&1
done
DEMO_ADDR=127.0.0.1:${DEMO_PORT:-18082} "$bin" >/dev/null 2>&1 &
demo=$!
sleep 2
python3 scripts/signin-timing.py
