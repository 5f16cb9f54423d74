"""One telex server on PostgreSQL beside the same server on SQLite, in one run.

    python bench/postgres.py              # starts its own PostgreSQL (initdb, pg_ctl)
    python bench/postgres.py --url postgresql://USER@HOST/DB   # or uses that one

Pipelined 64 B messages, group commit, each server in its own process pinned to the
first CPU and the load generator pinned to the second (as bench/run.py). PostgreSQL
runs with its defaults for durability (fsync on, synchronous_commit on: a commit is
on disk when acknowledged, as SQLite's --sync full); SQLite is shown at both its sync
levels. Each figure is the median of --repeat rounds, and each ratio the median of the
ratios within a round. Nothing here is a test: no figure is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from run import load, server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/postgres.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="a PostgreSQL database to use (default: start one)")
    parser.add_argument("--count", type=int, default=300_000, help="messages a run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds a figure is the median of")
    parser.add_argument("--uvloop", action="store_true", help="run every server on uvloop")
    options = parser.parse_args()
    if options.url:
        run(options, lambda: options.url)
        return
    from tests.postgres import start_cluster

    cluster = start_cluster(durable=True)
    running = next(cluster)
    try:
        run(options, running.create_database)
    finally:
        cluster.close()


def run(options: argparse.Namespace, database: object) -> None:
    args = ["--size", "64", "--count", str(options.count)]
    runs = {  # label: (server kind, PGOPTIONS)
        "PostgreSQL, synchronous_commit on": ("telex-postgres", ""),
        "PostgreSQL, synchronous_commit off": ("telex-postgres", "-c synchronous_commit=off"),
        "SQLite --sync normal": ("telex-normal", ""),
        "SQLite --sync full": ("telex-full", ""),
    }
    figures: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(options.repeat):
        for label, (kind, pgoptions) in runs.items():
            os.environ["PGOPTIONS"] = pgoptions  # read by libpq in the server's process
            if kind == "telex-postgres":
                os.environ["TELEX_BENCH_POSTGRES"] = database()  # type: ignore[operator]
            with server(kind, options.uvloop) as port:
                figures[label].append(load(port, *args)["per_second"])
    print(f"one server, pipelined 64 B, group commit, {options.count:,} messages, "
          f"medians of {options.repeat} rounds; ratios: PostgreSQL (on) / SQLite\n")  # fmt: skip
    pg = figures["PostgreSQL, synchronous_commit on"]
    print(f"{'store':<40} {'msg/s':>12} {'ratio':>8}")
    for label, found in figures.items():
        ratio = statistics.median(p / s for p, s in zip(pg, found, strict=True))
        shown = f"{ratio:>8.2f}" if label.startswith("SQLite") else ""
        print(f"{label:<40} {statistics.median(found):>12,.0f} {shown}")


if __name__ == "__main__":
    main()
