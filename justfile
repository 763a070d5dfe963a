# Recipes for the sessions workspace. `just --list` shows them.

# Run the demo service on the embedded defaults (memory sessions, SQLite).
run:
    cargo run -p session-demo

# Run the whole test suite (needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 for the server-backed tests).
test:
    cargo test --workspace --all-features

# Format check and clippy, as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --all-features -- -D warnings

# Release-mode benchmarks against their baselines, then redis-benchmark and pgbench ceilings.
# (crates/session-bench is a workspace of its own: `--manifest-path crates/session-bench/Cargo.toml`.)
bench *ARGS:
    scripts/bench.sh {{ARGS}}

# Lint the benchmark crate (outside the workspace, so `just lint` does not build its peers).
bench-check:
    cargo clippy --manifest-path crates/session-bench/Cargo.toml --all-targets -- -D warnings

# Each session-manager backend feature alone, all together, and session-axum: lint, and check that a
# feature compiles its own driver and no other.
features:
    scripts/feature-matrix.sh

# Start the local services the tests use, if they are not running.
services:
    redis-cli -h 127.0.0.1 ping || redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    pg_isready -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start
    mysql -h 127.0.0.1 -u root -e 'SELECT 1' || service mariadb start
    command -v chromedriver || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)

# Everything CI runs.
ci:
    bash .ci/run

# The soak: the release demo on Redis + PostgreSQL at a fixed rate for MINUTES (default 30), sampled
# every minute; writes docs/soak/soak.md (table) and docs/soak/soak.svg (plot).
soak MINUTES="30" RATE="100":
    cargo build --release -p session-demo --bin session-demo --example soak
    target/release/examples/soak {{MINUTES}} {{RATE}} docs/soak

# Fuzz the parsers (fuzz/, cargo-fuzz on nightly; docs/fuzzing.md), one target after another, each
# for SECONDS, or with RUNS > 0 until that many executions (`just fuzz 0 10000000`, the campaign).
fuzz SECONDS="60" RUNS="0":
    #!/usr/bin/env bash
    set -euo pipefail
    cd fuzz
    for spec in token:256 headers:1024 redis_row:1024 pg_row:1024 config:1024 urls:512; do
        target="${spec%%:*}"
        if [ "{{RUNS}}" -gt 0 ]; then limit="-runs={{RUNS}}"; else limit="-max_total_time={{SECONDS}}"; fi
        dict=(); if [ -f "$target.dict" ]; then dict=("-dict=$target.dict"); fi
        nice -n 10 cargo +nightly fuzz run --sanitizer none "$target" -- "$limit" \
            -max_len="${spec##*:}" "${dict[@]}" -print_final_stats=1
    done
