"""The end-to-end benchmark: telex beside a bare asyncio server, in one run.

    python bench/run.py            # about three minutes; --quick for a short run

Each server runs in its own process and each load generator in another (the machine
has two cores: one each). Every figure is the median of --repeat runs, telex and its
baseline taking turns, since a single run on a shared machine can be off by half. It
prints both figures and the ratio. Nothing here is a test: no figure is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).parent


@contextmanager
def server(kind: str, uvloop: bool) -> Iterator[int]:
    command = [sys.executable, str(HERE / "servers.py"), kind, *(["--uvloop"] if uvloop else [])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.kill()
        process.wait()


def load(port: int, *args: str) -> dict[str, float]:
    command = [sys.executable, str(HERE / "load.py"), str(port), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    return dict(json.loads(result.stdout))


def medians(
    kinds: list[str], args: list[str], key: str, options: argparse.Namespace
) -> list[float]:
    """The median of ``key`` for each kind, the kinds taking turns run after run."""
    runs: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(options.repeat):
        for kind in kinds:
            with server(kind, options.uvloop) as port:
                runs[kind].append(load(port, *args)[key])
    return [statistics.median(runs[kind]) for kind in kinds]


def medians_pair(
    kind_a: str,
    args_a: list[str],
    kind_b: str,
    args_b: list[str],
    options: argparse.Namespace,
    key: str = "per_second",
) -> tuple[float, float]:
    """As ``medians``, for two kinds that need different load arguments."""
    runs: tuple[list[float], list[float]] = ([], [])
    for _ in range(options.repeat):
        for kind, args, found in ((kind_a, args_a, runs[0]), (kind_b, args_b, runs[1])):
            with server(kind, options.uvloop) as port:
                found.append(load(port, *args)[key])
    return statistics.median(runs[0]), statistics.median(runs[1])


def row(label: str, a: float, b: float, digits: int = 0) -> None:
    print(f"{label:<38} {a:>12,.{digits}f} {b:>12,.{digits}f} {a / b:>7.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages, 1 run")
    parser.add_argument("--repeat", type=int, default=3, help="runs a figure is the median of")
    parser.add_argument("--uvloop", action="store_true", help="run every server on uvloop")
    options = parser.parse_args()
    scale = 10 if options.quick else 1
    if options.quick:
        options.repeat = 1
    loop = "uvloop" if options.uvloop else "asyncio"
    print(f"servers on {loop}; window 1000; medians of {options.repeat} runs\n")
    print(f"{'case':<38} {'telex':>12} {'bare':>12} {'ratio':>7}")
    cases = [
        ("pipelined 64 B, msg/s", "", ["--size", "64", "--count", str(1_000_000 // scale)]),
        ("pipelined 4 KiB, msg/s", "", ["--size", "4096", "--count", str(200_000 // scale)]),
        ("server pushes 64 B, msg/s", "-push", ["--push", "--count", str(500_000 // scale)]),
    ]
    for label, variant, args in cases:
        telex, bare = medians(["telex" + variant, "bare" + variant], args, "per_second", options)
        row(label, telex, bare)
    rounds = ["--size", "64", "--latency", str(20_000 // scale)]
    latencies = (("p50_us", "round trip 64 B, p50 µs"), ("p99_us", "round trip 64 B, p99 µs"))
    for key, label in latencies:
        telex, bare = medians(["telex", "bare"], rounds, key, options)
        row(label, telex, bare, digits=1)

    header = f"{'with a store, pipelined 64 B, msg/s':<38} {'stored':>12} {'no store':>12}"
    print(f"\n{header} {'ratio':>7}")
    args = ["--size", "64", "--count", str(300_000 // scale)]
    kinds = ["telex", "telex-normal", "telex-full"]
    off, normal, full = medians(kinds, args, "per_second", options)
    row("--sync normal, group commit", normal, off)
    row("--sync full, group commit", full, off)
    each = medians(["telex-commit-each"], ["--size", "64", "--count", str(30_000 // scale)],
                   "per_second", options)[0]  # fmt: skip
    row("a commit per message (sync normal)", each, off)

    print(f"\n{'TLS, 64 B':<38} {'TLS':>12} {'plain TCP':>12} {'ratio':>7}")
    args = ["--size", "64", "--count", str(1_000_000 // scale)]
    tls, plain = medians_pair("telex-tls", ["--tls", *args], "telex", args, options)
    row("pipelined, msg/s", tls, plain)
    rounds = ["--size", "64", "--latency", str(20_000 // scale)]
    for key, label in latencies:
        tls, plain = medians_pair("telex-tls", ["--tls", *rounds], "telex", rounds, options, key)
        row(label.replace("round trip 64 B", "round trip"), tls, plain, digits=1)


if __name__ == "__main__":
    main()
