"""The cluster's fault test, for real: three `telex serve` on one PostgreSQL, a sender and
a receiver on each, every message routed to a client of another server. Mid-load one
server is killed with -9 (its clients fail over to the next address), then PostgreSQL
is stopped in immediate mode (a crash, for its clients) and started again.

Every acknowledged message must be stored once, every routed message delivered once,
every receipt must arrive, and every sender and receiver must exit 0 (the receivers
listen until they are stopped, after the senders had every receipt: a receiver's ack
that its server took to the grave comes again when the message is sent again).

    python -m tests.cluster.test_faults --runs 20     # the long run, with timings
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli.test_cli import TELEX, Serve
from tests.postgres import Cluster, start_cluster

LINES = 2_000  # each sender's
LEASE = "2s"
WAIT = float(os.environ.get("TELEX_FAULTS_WAIT", 180))  # seconds the clients may take


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[Cluster]:
    """A cluster of this module's own: the test restarts it."""
    yield from start_cluster()


def count_routed(url: str) -> tuple[int, int]:
    """Messages stored so far: all, and those of s0 (the killed server's sender)."""
    with psycopg.connect(url, connect_timeout=2) as db:
        row = db.execute(
            "SELECT count(*), count(*) FILTER (WHERE sender = 's0') FROM telex_messages"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def wait_for_names(url: str, names: set[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(url) as db:
            held = {name for (name,) in db.execute("SELECT name FROM telex_names").fetchall()}
        if names <= held:
            return
        assert time.monotonic() < deadline, f"{names - held} never joined"
        time.sleep(0.05)


def events(path: Path, kind: str) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    return [event for event in map(json.loads, lines) if event.get("event") == kind]


def run_once(postgres: Cluster, folder: Path, lines: int = LINES) -> dict[str, float]:
    """One run; returns its timings. Fails (AssertionError) on any broken promise."""
    url = postgres.create_database()
    started = time.monotonic()
    files = contextlib.ExitStack()  # each process's stdin, stdout and stderr
    servers = [
        Serve(
            subprocess.Popen(
                [*TELEX, "serve", "--db", url, "--port", "0", "--json", "-q", "--lease", LEASE],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=files.enter_context((folder / f"server{n}.err").open("wb")),
                text=True,
            )
        )
        for n in range(3)
    ]
    clients: dict[str, subprocess.Popen[bytes]] = {}
    timings: dict[str, float] = {}
    try:
        addresses = [server.address for server in servers]

        def around(first: int) -> str:  # this server first, then the others
            return ",".join(addresses[first:] + addresses[:first])

        def start(name: str, *args: str, stdin: Path | None = None) -> None:
            clients[name] = subprocess.Popen(
                [*TELEX, *args],
                stdin=subprocess.DEVNULL
                if stdin is None
                else files.enter_context(stdin.open("rb")),
                stdout=files.enter_context((folder / f"{name}.out").open("wb")),
                stderr=files.enter_context((folder / f"{name}.err").open("wb")),
            )

        for n in range(3):
            start(f"r{n}", "listen", around(n), "--name", f"r{n}", "--json")
        wait_for_names(url, {"r0", "r1", "r2"})
        for n in range(3):
            lines_file = folder / f"s{n}.txt"
            lines_file.write_text("".join(f"s{n} line {i}\n" for i in range(lines)))
            start(
                f"s{n}", "send", around(n), "--name", f"s{n}", "--to", f"r{(n + 1) % 3}",
                "--wait-delivery", "--json", "--timeout", "60", "--window", "200",
                stdin=lines_file,
            )  # fmt: skip
        total = 3 * lines
        killed = restarted = False
        senders = [clients[f"s{n}"] for n in range(3)]
        while any(sender.poll() is None for sender in senders):  # done: every receipt came
            assert time.monotonic() - started < WAIT, "the clients did not finish in time"
            stored, from_s0 = count_routed(url) if not restarted else (total, lines)
            if not killed and from_s0 >= lines // 3:
                servers[0].process.send_signal(signal.SIGKILL)  # r0 and s0 fail over
                killed = True
                timings["killed at"] = time.monotonic() - started
                assert from_s0 < lines, "s0 had sent everything before its server died"
            elif killed and not restarted and stored >= 2 * total // 3:
                postgres.stop("immediate")
                time.sleep(0.3)
                postgres.start()
                restarted = True
                timings["restarted at"] = time.monotonic() - started
            time.sleep(0.02)
        timings["finished at"] = time.monotonic() - started
        for n in range(3):  # the receivers run until told to stop, as a listener does
            clients[f"r{n}"].send_signal(signal.SIGTERM)
        for client in clients.values():
            client.wait(timeout=30)
        assert killed and restarted, "the load ended before both faults"
        for name, client in sorted(clients.items()):
            error = (folder / f"{name}.err").read_text()
            assert client.returncode == 0, f"{name} exited {client.returncode}: {error}"
        for n in range(3):
            receiver = f"r{(n + 1) % 3}"
            got = [event["text"] for event in events(folder / f"{receiver}.out", "message")]
            assert sorted(got) == sorted(f"s{n} line {i}" for i in range(lines)), receiver
            receipts = events(folder / f"s{n}.out", "receipt")
            assert sorted(r["id"] for r in receipts) == list(range(1, lines + 1)), f"s{n}"
            assert {r["status"] for r in receipts} == {"delivered"}
        with psycopg.connect(url) as db:
            row = db.execute(
                "SELECT count(*), count(DISTINCT (session, sender_id)), count(delivered) "
                "FROM telex_messages"
            ).fetchone()
        assert row == (total, total, total)  # stored once each, each delivered
    except AssertionError:
        with psycopg.connect(url) as db, (folder / "db.txt").open("w") as dump:
            for query in (
                "SELECT seq, sender, recipient, sender_id, delivered IS NOT NULL, owed "
                "FROM telex_messages WHERE delivered IS NULL OR owed ORDER BY seq",
                "SELECT * FROM telex_names",
                "SELECT id, lease_until > now() FROM telex_servers",
            ):
                print(query, *db.execute(query.encode()).fetchall(), sep="\n", file=dump)
        raise
    finally:
        for client in clients.values():
            if client.poll() is None:
                client.kill()
            client.wait(timeout=30)
        for server in servers:
            if server.process.poll() is None:
                server.process.kill()
            server.process.communicate(timeout=30)
        files.close()
    return timings


@pytest.mark.timeout(WAIT + 60)
def test_three_servers_one_killed_and_postgres_restarted_lose_nothing(
    own_postgres: Cluster, tmp_path: Path
) -> None:
    run_once(own_postgres, tmp_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--lines", type=int, default=LINES, help="each sender's")
    options = parser.parse_args()
    cluster = start_cluster()
    postgres = next(cluster)
    try:
        for number in range(1, options.runs + 1):
            folder = tempfile.mkdtemp(prefix="telex-faults-")
            try:
                timings = run_once(postgres, Path(folder), options.lines)
            except AssertionError:
                print(f"run {number}: FAILED; its outputs are in {folder}", flush=True)
                raise
            shutil.rmtree(folder)
            figures = ", ".join(f"{key} {value:.1f} s" for key, value in timings.items())
            print(f"run {number}: passed ({figures})", flush=True)
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
