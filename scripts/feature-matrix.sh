#!/usr/bin/env bash
# Feature matrix: every backend feature of session-manager alone, all of them together, and
# session-axum on its default features, each linted as a library on its own (clippy, -D warnings),
# then its dependency graph checked: a feature turns on its driver and nothing else's.
#   tokio-postgres   only with `postgres`
#   libsqlite3-sys  only with `sqlite`
#   mysql_async     only with `mysql`
#   redis           only with `redis`
#   session-memory  only with `memory`
# (judged from the session-manager features the build actually resolves, so session-axum's row
# holds whatever features it passes on).
#
# Usage: scripts/feature-matrix.sh            (CI runs it after the workspace clippy)
# MATRIX_TARGET_DIR=dir puts the matrix builds in a target directory of their own; by default they
# share the workspace's (the all-features clippy has already built most dependencies there).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if [ -n "${MATRIX_TARGET_DIR:-}" ]; then export CARGO_TARGET_DIR=$MATRIX_TARGET_DIR; fi

# label | package | feature arguments
rows=(
    "none|session-manager|--no-default-features"
    "memory|session-manager|--no-default-features --features memory"
    "redis|session-manager|--no-default-features --features redis"
    "postgres|session-manager|--no-default-features --features postgres"
    "sqlite|session-manager|--no-default-features --features sqlite"
    "mysql|session-manager|--no-default-features --features mysql"
    "all features|session-manager|--all-features"
    "default|session-axum|"
)

# A driver and the session-manager feature that alone may bring it in.
drivers=(
    "tokio-postgres|postgres"
    "libsqlite3-sys|sqlite"
    "mysql_async|mysql"
    "redis|redis"
    "session-memory|memory"
)

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
table=()
failures=0
total_start=$(date +%s)

for row in "${rows[@]}"; do
    IFS='|' read -r label pkg args <<<"$row"
    # shellcheck disable=SC2206 # the feature arguments are words
    feature_args=($args)
    name="$pkg ${args:-(default features)}"
    log="$logs/$pkg-${label// /-}.log"
    printf '\n== %s\n' "$name"

    start=$(date +%s.%N)
    if cargo clippy -p "$pkg" "${feature_args[@]}" --lib -- -D warnings >"$log" 2>&1; then
        check=ok
    else
        check=FAIL
        failures=$((failures + 1))
        grep -E '^(error|warning)|^ *--> ' "$log" | awk '!seen[$0]++' | head -n 40 || true
    fi
    secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    echo "clippy: $check (${secs}s)"

    # The resolved graph, normal edges only: one line per package, with the features it gets.
    tree=$(cargo tree -p "$pkg" "${feature_args[@]}" -e normal --prefix none -f '{p} {f}')
    if awk '$1 == "session-manager" { f = 1 } END { exit !f }' <<<"$tree"; then
        features=$(awk '$1 == "session-manager" { print $NF; exit }' <<<"$tree")
        case "$features" in "(/"*) features="" ;; esac # no features: {f} printed nothing
        features=$(tr ',' '\n' <<<"$features" | grep -vx default | paste -sd, -) || true
        shown=${features:-none}
    else
        features="" # not in the graph: no feature on, so no driver may be
        shown="(no dep)"
    fi
    found=()
    graph=ok
    for d in "${drivers[@]}"; do
        IFS='|' read -r crate feature <<<"$d"
        if awk -v c="$crate" '$1 == c { f = 1 } END { exit !f }' <<<"$tree"; then present=1; else present=0; fi
        if [[ ",$features," == *",$feature,"* ]]; then wanted=1; else wanted=0; fi
        [ "$present" = 1 ] && found+=("$crate")
        if [ "$present" != "$wanted" ]; then
            graph=FAIL
            if [ "$present" = 1 ]; then
                echo "graph: $crate is compiled although session-manager's '$feature' feature is off"
            else
                echo "graph: session-manager's '$feature' feature is on but $crate is not in the graph"
            fi
        fi
    done
    [ "$graph" = ok ] || failures=$((failures + 1))
    echo "session-manager features: $shown; drivers: ${found[*]:-none}; graph: $graph"
    table+=("$(printf '%-16s %-42s %-6s %7s  %-6s %-29s %s' "$pkg" "${args:-(default features)}" \
        "$check" "${secs}s" "$graph" "$shown" "${found[*]:-none}")")
done

printf '\n== feature matrix (%ss in all)\n' "$(($(date +%s) - total_start))"
printf '%-16s %-42s %-6s %7s  %-6s %-29s %s\n' crate "feature arguments" clippy time graph \
    "session-manager features" "drivers found"
printf '%s\n' "${table[@]}"
if [ "$failures" -gt 0 ]; then
    echo "feature matrix: $failures failure(s)"
    exit 1
fi
echo "feature matrix: all ok"
