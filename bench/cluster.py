"""Several telex servers sharing one PostgreSQL database (a cluster), in one run.

    python bench/cluster.py            # starts its own PostgreSQL (initdb, pg_ctl); about 80 s
    python bench/cluster.py --quick    # small counts, one round: well under a minute
    python bench/cluster.py --url postgresql://USER@HOST/DB   # or uses that database

What the table shows:

1. One server on PostgreSQL beside the same server on SQLite --sync normal: pipelined
   64 B messages to the server, msg/s, with bench/run.py's server and load helpers as
   bench/postgres.py uses them (server on the first CPU, load on the second). Ratio:
   PostgreSQL / SQLite.
2. Two and three servers sharing one database, one load client each, all at once: the
   total msg/s of the servers (the sum of the clients'). Ratio: / one server on
   PostgreSQL. Server i runs on CPU i mod n, its load client on the next CPU. On a
   machine with fewer CPUs than processes (2 here: servers, load clients and PostgreSQL
   all share them) this shows what sharing the database costs, not how a cluster scales.
3. Round trip to another client: alice sends 64 B to bob (to="bob"), bob's client
   answers, the RECEIPT reaches alice; one message at a time, the time from send to
   receipt, p50 and p99 in ms. With alice and bob on two servers (bob's server is woken
   by NOTIFY, then alice's, for the receipt), and on one. Ratio: two servers / one.
   The target is a p50 under 2 ms on loopback.

PostgreSQL runs with its defaults for durability (fsync on, synchronous_commit on). Every
cluster gets a new database (with --url, all use that one). Each figure is the median of
--repeat rounds, each ratio the median of the ratios within a round. Nothing here is a
test: no figure is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from run import HERE, load, pinned, server

from telex import AsyncClient
from telex.core.events import Receipt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/postgres.py

CPUS = os.cpu_count() or 1
TIMEOUT = 600.0  # seconds any one wait may take (a start, a load run, a receipt: far less)


@contextmanager
def cluster(url: str, count: int) -> Iterator[list[int]]:
    """``count`` servers on one database, server i on CPU i mod n; their ports."""
    with ExitStack() as stack:
        yield [stack.enter_context(started(url, i % CPUS)) for i in range(count)]


@contextmanager
def started(url: str, cpu: int) -> Iterator[int]:
    """A server of bench/servers.py on PostgreSQL, pinned to ``cpu``; its port."""
    command = [sys.executable, str(HERE / "servers.py"), "telex-postgres"]
    env = {**os.environ, "TELEX_BENCH_POSTGRES": url}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env=env, preexec_fn=pinned(cpu)
    )
    try:
        assert process.stdout is not None
        if not select.select([process.stdout], [], [], 30)[0]:
            raise SystemExit("a server did not start within 30 s")
        yield int(process.stdout.readline())
    finally:
        process.kill()
        process.wait(timeout=10)


def together(ports: list[int], *args: str) -> float:
    """One load client per server, all at once, client i on the CPU after server i's;
    the sum of their msg/s."""
    processes = [
        subprocess.Popen(
            [sys.executable, str(HERE / "load.py"), str(port), *args],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pinned((i + 1) % CPUS),
        )
        for i, port in enumerate(ports)
    ]
    try:
        total = 0.0
        for process in processes:
            out, _ = process.communicate(timeout=TIMEOUT)
            if process.returncode:
                raise SystemExit(f"a load client failed (exit status {process.returncode})")
            total += json.loads(out)["per_second"]
        return total
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


async def round_trips(alice_port: int, bob_port: int, count: int) -> list[float]:
    """Seconds from send to receipt of each of ``count`` messages from alice to bob, one
    at a time, after a tenth as many to warm up."""
    tag = secrets.token_hex(3)  # names of their own: on a --url database, those of a
    alice_name, bob_name = f"alice-{tag}", f"bob-{tag}"  # killed server stay held a while
    loop = asyncio.get_running_loop()
    waiting: dict[int, asyncio.Future[float]] = {}

    def arrived(receipt: Receipt) -> None:
        future = waiting.pop(receipt.id, None)
        if future is not None and not future.done():
            future.set_result(time.perf_counter())

    fail_fast: dict[str, Any] = {"timeout": 10, "reconnect": False}
    body = b"x" * 64
    warmup = max(count // 10, 20)
    samples = []
    async with (
        AsyncClient("127.0.0.1", bob_port, name=bob_name, handler=lambda m: "ok", **fail_fast),
        AsyncClient(
            "127.0.0.1", alice_port, name=alice_name, on_receipt=arrived, **fail_fast
        ) as alice,
    ):
        for _ in range(warmup + count):
            receipt = waiting[alice.next_id] = loop.create_future()
            start = time.perf_counter()
            ack = await alice.send(body, to=bob_name, timeout=10)
            if not ack.stored:
                raise SystemExit(f"expected a message stored for {bob_name}, got {ack}")
            async with asyncio.timeout(10):
                samples.append(await receipt - start)
    return samples[warmup:]


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99, in ms."""
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1e3, cuts[98] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="a PostgreSQL database to use (default: start one)")
    parser.add_argument("--count", type=int, default=300_000, help="messages a load client")
    parser.add_argument("--trips", type=int, default=2_000, help="round trips timed")
    parser.add_argument("--repeat", type=int, default=3, help="rounds a figure is the median of")
    parser.add_argument(
        "--quick", action="store_true", help="a tenth of the messages, 500 round trips, 1 round"
    )
    options = parser.parse_args()
    if options.quick:
        options.count, options.trips, options.repeat = options.count // 10, 500, 1
    if options.url:
        run(options, lambda: options.url)
        return
    from tests.postgres import start_cluster

    with contextmanager(start_cluster)(durable=True) as postgres:  # stopped at the end
        run(options, postgres.create_database)


ROWS = {  # label: what its ratio is, in the order printed
    "one server, SQLite --sync normal, msg/s": "",
    "one server, PostgreSQL, msg/s": "PostgreSQL / SQLite",
    "two servers, one PostgreSQL, total msg/s": "/ one server on PostgreSQL",
    "three servers, one PostgreSQL, total msg/s": "/ one server on PostgreSQL",
    "round trip, two servers, p50 ms": "two servers / one",
    "round trip, two servers, p99 ms": "two servers / one",
    "round trip, one server, p50 ms": "",
    "round trip, one server, p99 ms": "",
}


def run(options: argparse.Namespace, database: Callable[[], str]) -> None:
    args = ["--size", "64", "--count", str(options.count)]
    figures: dict[str, list[float]] = {label: [] for label in ROWS}
    ratios: dict[str, list[float]] = {label: [] for label in ROWS}
    for _ in range(options.repeat):
        with server("telex-normal", False) as port:
            sqlite = load(port, *args)["per_second"]
        os.environ["TELEX_BENCH_POSTGRES"] = database()  # read by bench/servers.py
        with server("telex-postgres", False) as port:
            one = load(port, *args)["per_second"]
        figures["one server, SQLite --sync normal, msg/s"].append(sqlite)
        figures["one server, PostgreSQL, msg/s"].append(one)
        ratios["one server, PostgreSQL, msg/s"].append(one / sqlite)
        for count, label in ((2, "two"), (3, "three")):
            with cluster(database(), count) as ports:
                total = together(ports, *args)
            figures[f"{label} servers, one PostgreSQL, total msg/s"].append(total)
            ratios[f"{label} servers, one PostgreSQL, total msg/s"].append(total / one)
        with cluster(database(), 2) as (a, b):
            apart = percentiles(asyncio.run(round_trips(a, b, options.trips)))
        with cluster(database(), 1) as (a,):
            beside = percentiles(asyncio.run(round_trips(a, a, options.trips)))
        for key, two, one_server in zip(("p50", "p99"), apart, beside, strict=True):
            figures[f"round trip, two servers, {key} ms"].append(two)
            ratios[f"round trip, two servers, {key} ms"].append(two / one_server)
            figures[f"round trip, one server, {key} ms"].append(one_server)

    print(f"\n{CPUS} CPUs, shared by the servers, the load clients and PostgreSQL; PostgreSQL "
          "with fsync and synchronous_commit on")  # fmt: skip
    print(f"pipelined 64 B: {options.count:,} messages a load client; round trips: "
          f"{options.trips:,} one at a time; medians of {options.repeat} rounds\n")  # fmt: skip
    print(f"{'case':<44} {'figure':>10} {'ratio':>7}  ratio of")
    for label, of in ROWS.items():
        digits = 2 if label.endswith(" ms") else 0
        line = f"{label:<44} {statistics.median(figures[label]):>10,.{digits}f}"
        if of:
            line += f" {statistics.median(ratios[label]):>7.2f}  {of}"
        print(line)


if __name__ == "__main__":
    main()
