"""The end-to-end benchmark: telex beside a bare asyncio server, in one run.

    python bench/run.py            # about three minutes; --quick for a short run

Each server runs in its own process, pinned to the first CPU, and each load generator
in another, pinned to the second. Telex and its baseline run back to back, --repeat
times; the table shows the median of each figure and the median of the ratios of the
pairs (a single run on a shared machine can be off by half, and drifts affect both of a
pair alike). Nothing here is a test: no figure is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).parent


def pinned(cpu: int) -> Callable[[], None] | None:
    """Keep a child on one CPU, where there are two or more to share out."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


@contextmanager
def server(kind: str, uvloop: bool) -> Iterator[int]:
    command = [sys.executable, str(HERE / "servers.py"), kind, *(["--uvloop"] if uvloop else [])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, preexec_fn=pinned(0))
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.kill()
        process.wait()


def load(port: int, *args: str) -> dict[str, float]:
    command = [sys.executable, str(HERE / "load.py"), str(port), *args]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=True, preexec_fn=pinned(1)
    )
    return dict(json.loads(result.stdout))


def compare(
    runs_of: list[tuple[str, list[str]]], key: str, options: argparse.Namespace
) -> list[float]:
    """Each (kind, load arguments) run back to back, --repeat times. Returns the median of
    each one's figure, then the median of the ratios first / second within a round."""
    runs: list[list[float]] = [[] for _ in runs_of]
    ratios: list[float] = []
    for _ in range(options.repeat):
        for found, (kind, args) in zip(runs, runs_of, strict=True):
            with server(kind, options.uvloop) as port:
                found.append(load(port, *args)[key])
        if len(runs) > 1:
            ratios.append(runs[0][-1] / runs[1][-1])
    return [statistics.median(found) for found in runs] + [statistics.median(ratios or [1.0])]


def row(label: str, a: float, b: float, ratio: float, digits: int = 0) -> None:
    print(f"{label:<38} {a:>12,.{digits}f} {b:>12,.{digits}f} {ratio:>7.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages, 1 run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds a figure is the median of")
    parser.add_argument("--uvloop", action="store_true", help="run every server on uvloop")
    options = parser.parse_args()
    scale = 10 if options.quick else 1
    if options.quick:
        options.repeat = 1
    loop = "uvloop" if options.uvloop else "asyncio"
    print(f"servers on {loop}; window 1000; medians of {options.repeat} rounds\n")
    print(f"{'case':<38} {'telex':>12} {'bare':>12} {'ratio':>7}")
    cases = [
        ("pipelined 64 B, msg/s", "", ["--size", "64", "--count", str(1_000_000 // scale)]),
        ("pipelined 4 KiB, msg/s", "", ["--size", "4096", "--count", str(200_000 // scale)]),
        ("server pushes 64 B, msg/s", "-push", ["--push", "--count", str(500_000 // scale)]),
    ]
    for label, variant, args in cases:
        row(
            label,
            *compare([("telex" + variant, args), ("bare" + variant, args)], "per_second", options),
        )
    rounds = ["--size", "64", "--latency", str(20_000 // scale)]
    latencies = (("p50_us", "round trip 64 B, p50 µs"), ("p99_us", "round trip 64 B, p99 µs"))
    for key, label in latencies:
        row(label, *compare([("telex", rounds), ("bare", rounds)], key, options), digits=1)

    header = f"{'with a store, pipelined 64 B, msg/s':<38} {'stored':>12} {'no store':>12}"
    print(f"\n{header} {'ratio':>7}")
    args = ["--size", "64", "--count", str(300_000 // scale)]
    for label, kind, count in (
        ("--sync normal, group commit", "telex-normal", 300_000),
        ("--sync full, group commit", "telex-full", 300_000),
        ("a commit per message (sync normal)", "telex-commit-each", 30_000),  # it is slow
    ):
        args = ["--size", "64", "--count", str(count // scale)]
        row(label, *compare([(kind, args), ("telex", args)], "per_second", options))

    print(f"\n{'TLS, 64 B':<38} {'TLS':>12} {'plain TCP':>12} {'ratio':>7}")
    args = ["--size", "64", "--count", str(1_000_000 // scale)]
    row("pipelined, msg/s", *compare([("telex-tls", ["--tls", *args]), ("telex", args)],
                                     "per_second", options))  # fmt: skip
    for key, label in latencies:
        pair = [("telex-tls", ["--tls", *rounds]), ("telex", rounds)]
        row(label.replace("round trip 64 B", "round trip"), *compare(pair, key, options), digits=1)


if __name__ == "__main__":
    main()
