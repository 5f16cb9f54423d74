"""telex log on real store files, as a user runs it: -n from the end, filters, --follow."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from telex.core.records import Batch, Envelope, Inbound
from telex.store import SQLiteStore

from ..conftest import TIMEOUT
from ..store.test_store import downgrade_to_3
from .test_cli import TELEX, read_line, records, serve, telex, temp_db


def fill(path: Path) -> SQLiteStore:
    """An hour of talk ending now: alice and bob to the server (segments of three) and to
    each other (message rows), interleaved, oldest ten minutes apart. Left open."""
    store = SQLiteStore(path)
    now = time.time()
    for turn, ago in enumerate([3600, 3000, 2400, 1800, 1200, 600, 20]):
        sender, other = ("alice", "bob") if turn % 2 == 0 else ("bob", "alice")
        items = [(turn * 10 + i, f"{sender} to server {turn}.{i}", "received") for i in range(3)]
        envelope = Envelope(other, f"{sender} to {other} {turn}", sender, sender, turn * 10 + 5)
        store.commit(Batch([Inbound(sender, sender, items)], [envelope]), now - ago)
    return store


def log(path: Path, *options: str) -> list[tuple[int, str]]:
    """(seq, text) of what ``telex log --json`` prints."""
    result = telex("log", "--db", str(path), "--json", *options)
    assert result.returncode == 0, result.stderr
    return [(int(r["seq"]), str(r["text"])) for r in records(result.stdout)]  # type: ignore[call-overload]


def test_n_is_the_last_n_of_both_tables_in_order(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    fill(path).close()
    everything = log(path)
    assert [seq for seq, _ in everything] == list(range(1, 29))
    assert log(path, "-n", "2") == [(27, "alice to server 6.2"), (28, "alice to bob 6")]
    assert log(path, "-n", "5") == everything[-5:]  # a message row, a segment, a message row
    assert log(path, "-n", "7") == everything[-7:]  # and part of a segment
    assert log(path, "-n", "100") == everything


def test_n_with_from_to_and_since(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    fill(path).close()
    assert log(path, "--from", "bob", "-n", "2") == [
        (23, "bob to server 5.2"),
        (24, "bob to alice 5"),
    ]
    assert log(path, "--to", "bob", "-n", "2") == [(20, "alice to bob 4"), (28, "alice to bob 6")]
    assert log(path, "--to", "server", "-n", "4") == [
        (23, "bob to server 5.2"),
        (25, "alice to server 6.0"),
        (26, "alice to server 6.1"),
        (27, "alice to server 6.2"),
    ]
    assert [text for _, text in log(path, "--since", "15m")] == [
        "bob to server 5.0",
        "bob to server 5.1",
        "bob to server 5.2",
        "bob to alice 5",
        "alice to server 6.0",
        "alice to server 6.1",
        "alice to server 6.2",
        "alice to bob 6",
    ]
    assert log(path, "--since", "15m", "--from", "bob", "-n", "3") == [
        (22, "bob to server 5.1"),
        (23, "bob to server 5.2"),
        (24, "bob to alice 5"),
    ]
    assert log(path, "--since", "15m", "--to", "alice", "-n", "3") == [(24, "bob to alice 5")]
    assert log(path, "--since", "1m", "--from", "bob") == []


def test_n_on_a_store_no_server_has_migrated(tmp_path: Path) -> None:
    """The log cannot migrate a store (it only reads): without the indexes it still works."""
    path = tmp_path / "t.db"
    fill(path).close()
    everything = log(path)
    downgrade_to_3(path)
    assert log(path, "-n", "3") == everything[-3:]
    assert log(path, "--from", "bob", "--since", "15m", "-n", "1") == [(24, "bob to alice 5")]


@contextmanager
def following(path: Path, *options: str) -> Iterator[subprocess.Popen[str]]:
    """``telex log --follow`` running; killed if the test did not ``stop`` it."""
    process = subprocess.Popen(
        [*TELEX, "log", "--db", str(path), "--json", "--follow", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=TIMEOUT)


def stop(follower: subprocess.Popen[str]) -> str:
    """Ctrl-C, as a user stops it; what it printed that was not read yet."""
    follower.send_signal(signal.SIGINT)
    out, err = follower.communicate(timeout=TIMEOUT)
    assert follower.returncode == 0, err
    return out


def text(line: str) -> str:
    return str(json.loads(line)["text"])


def until_printed(follower: subprocess.Popen[str], store_one: Callable[[int], object]) -> str:
    """Store a new message every half second until the follower prints a line, and give
    its text: it shows only what is stored after it read the end of the store, and
    nothing tells when it has."""
    assert follower.stdout is not None
    stdout = follower.stdout
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.append(stdout.readline()), daemon=True)
    reader.start()
    deadline = time.monotonic() + TIMEOUT
    number = 0
    while not printed and time.monotonic() < deadline:
        number += 1
        store_one(number)
        reader.join(0.5)
    assert printed, "the follower printed nothing in time"
    return text(printed[0])


def commit_new(store: SQLiteStore) -> Callable[[int], object]:
    return lambda number: store.commit(
        Batch(envelopes=[Envelope("bob", f"new {number}")]), time.time()
    )


def test_follow_prints_nothing_old_then_what_is_stored_after_it(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = fill(path)
    try:
        with following(path) as follower:
            assert until_printed(follower, commit_new(store)).startswith("new ")
            store.commit(Batch(envelopes=[Envelope("bob", "one more")]), time.time())
            assert follower.stdout is not None
            line = text(read_line(follower.stdout))
            while line != "one more":  # after any other new one stored before it
                assert line.startswith("new "), line
                line = text(read_line(follower.stdout))
            assert stop(follower) == ""
    finally:
        store.close()


def test_follow_with_n_shows_the_last_n_first(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = fill(path)
    try:
        with following(path, "-n", "2", "--to", "bob") as follower:
            assert follower.stdout is not None
            assert text(read_line(follower.stdout)) == "alice to bob 4"
            assert text(read_line(follower.stdout)) == "alice to bob 6"
            assert until_printed(follower, commit_new(store)).startswith("new ")
            stop(follower)
    finally:
        store.close()


def test_follow_what_a_running_server_stores() -> None:
    db = Path(temp_db())
    with serve("--quiet", "--db", str(db)) as server:
        assert telex("send", server.address, "before").returncode == 0
        with following(db) as follower:

            def send(number: int) -> None:
                assert telex("send", server.address, f"new {number}").returncode == 0

            assert until_printed(follower, send).startswith("new ")
            assert "before" not in stop(follower)
