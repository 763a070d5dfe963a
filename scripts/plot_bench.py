#!/usr/bin/env python3
"""Plots ops/s per operation for each backend and tower-sessions peer from a `session-bench peers`
results file (bench-results/results.json after `cargo run --release --manifest-path crates/session-bench/Cargo.toml -- peers`).

    python3 scripts/plot_bench.py bench-results/peers.json docs/bench-peers.png

Needs matplotlib (pip install matplotlib); only the benchmark docs use it, never the tests.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OPS = ["get", "touch", "create", "update", "rotate", "create+delete"]
# (results backend, ours label, peer label)
PAIRS = [
    ("memory/ts-mem", "ours: memory", "tower-sessions MemoryStore"),
    ("memory/ts-moka", None, "tower-sessions MokaStore"),
    ("redis/ts-redis", "ours: Redis", "tower-sessions RedisStore (fred)"),
    ("postgres/ts-sqlx", "ours: PostgreSQL", "tower-sessions PostgresStore (sqlx)"),
]
COLORS = {
    "ours: memory": "#1b5e20",
    "tower-sessions MemoryStore": "#a5d6a7",
    "tower-sessions MokaStore": "#c8e6c9",
    "ours: Redis": "#b71c1c",
    "tower-sessions RedisStore (fred)": "#ef9a9a",
    "ours: PostgreSQL": "#0d47a1",
    "tower-sessions PostgresStore (sqlx)": "#90caf9",
}


def series(rows, tasks):
    out = {}
    for backend, ours, peer in PAIRS:
        for row in rows:
            if row["backend"] != backend or row["tasks"] != tasks or row["op"] not in OPS:
                continue
            if ours:
                out.setdefault(ours, {})[row["op"]] = row["ops_per_sec"]
            out.setdefault(peer, {})[row["op"]] = row["baseline"]["ops_per_sec"]
    return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    rows = json.load(open(src))
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), sharey=True)
    for ax, tasks in zip(axes, (1, 32)):
        data = series(rows, tasks)
        names = list(data)
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(OPS))]
            ys = [data[name].get(op, 0) for op in OPS]
            ax.bar(xs, ys, width, label=name, color=COLORS.get(name))
        ax.set_xticks(range(len(OPS)))
        ax.set_xticklabels(OPS)
        ax.set_yscale("log")
        ax.set_title(f"{tasks} concurrent task{'s' if tasks > 1 else ''}")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("operations per second (log scale)")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9)
    fig.suptitle("User-session stores against tower-sessions 0.14, same run, 2-core machine")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main()
