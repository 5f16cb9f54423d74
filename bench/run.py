"""The end-to-end benchmark: telex beside a bare asyncio server, in one run.

    python bench/run.py            # about two minutes; --quick for a short run

Each server runs in its own process and each load generator in another (the machine
has two cores: one each). For every case it prints both figures and the ratio
telex / bare. Nothing here is a test: no figure is asserted.
"""

from __future__ import annotations

import argparse
import json
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


def measure(kind: str, uvloop: bool, args: list[str]) -> dict[str, float]:
    with server(kind, uvloop) as port:
        return load(port, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages")
    parser.add_argument("--uvloop", action="store_true", help="run both servers on uvloop")
    options = parser.parse_args()
    scale = 10 if options.quick else 1
    loop = "uvloop" if options.uvloop else "asyncio"
    print(f"servers on {loop}; window 1000; each figure from its own server process\n")
    print(f"{'case':<36} {'telex':>12} {'bare':>12} {'ratio':>7}")
    cases = [
        ("pipelined 64 B, msg/s", "", ["--size", "64", "--count", str(1_000_000 // scale)]),
        ("pipelined 4 KiB, msg/s", "", ["--size", "4096", "--count", str(200_000 // scale)]),
        ("server pushes 64 B, msg/s", "-push", ["--push", "--count", str(500_000 // scale)]),
    ]
    for label, variant, args in cases:
        telex_result = measure("telex" + variant, options.uvloop, args)
        bare_result = measure("bare" + variant, options.uvloop, args)
        t, b = telex_result["per_second"], bare_result["per_second"]
        print(f"{label:<36} {t:>12,.0f} {b:>12,.0f} {t / b:>7.2f}", flush=True)
    print(
        f"\n{'with a store, pipelined 64 B, msg/s':<36} {'telex':>12} {'no store':>12} {'ratio':>7}"
    )
    args = ["--size", "64", "--count", str(300_000 // scale)]
    off = measure("telex", options.uvloop, args)["per_second"]
    for label, kind in (
        ("store, --sync normal, group commit", "telex-normal"),
        ("store, --sync full, group commit", "telex-full"),
        ("a commit per message (sync normal)", "telex-commit-each"),
    ):
        if kind == "telex-commit-each":
            args = ["--size", "64", "--count", str(30_000 // scale)]  # it is slow
        rate = measure(kind, options.uvloop, args)["per_second"]
        print(f"{label:<36} {rate:>12,.0f} {off:>12,.0f} {rate / off:>7.2f}", flush=True)
    print()
    rounds = str(20_000 // scale)
    telex_result = measure("telex", options.uvloop, ["--size", "64", "--latency", rounds])
    bare_result = measure("bare", options.uvloop, ["--size", "64", "--latency", rounds])
    for key, label in (
        ("p50_us", "round trip 64 B, p50 µs"),
        ("p99_us", "round trip 64 B, p99 µs"),
    ):
        t, b = telex_result[key], bare_result[key]
        print(f"{label:<36} {t:>12,.1f} {b:>12,.1f} {t / b:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
