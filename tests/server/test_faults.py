"""kill -9, for real: of the server under load from several senders, and of a sender."""

from __future__ import annotations

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from telex.store import Record, SQLiteStore

from ..cli.test_cli import closed_port, wait_listening
from ..conftest import TIMEOUT

TELEX = [sys.executable, "-m", "telex"]
SENDERS = 4
LINES = 20_000


def start_server(port: int, db: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [*TELEX, "serve", "--port", str(port), "--db", str(db), "--quiet"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port)
    return process


def stored_count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=TIMEOUT) as conn:
            return int(conn.execute("SELECT COALESCE(SUM(count), 0) FROM segments").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def stored_records(db: Path) -> list[Record]:
    reader = SQLiteStore(db, readonly=True)
    try:
        assert reader.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return list(reader.records())
    finally:
        reader.close()


def wait_for(condition: Callable[[], bool], what: str = "the condition") -> None:
    deadline = time.monotonic() + TIMEOUT * 3
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} never came")
        time.sleep(0.002)


def wait_for_rows(db: Path, count: int) -> None:
    wait_for(lambda: stored_count(db) >= count, f"{count} stored messages")


def sender(port: int, lines: Path) -> subprocess.Popen[bytes]:
    """``telex send`` of a file's lines; its acks go to a file beside it (a pipe nobody
    reads would fill and stop it)."""
    with lines.open("rb") as stdin, lines.with_suffix(".acks").open("wb") as stdout:
        return subprocess.Popen(
            [*TELEX, "send", f"127.0.0.1:{port}", "-", "--retries", "60"],
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
        )


def acks_of(lines: Path) -> list[bytes]:
    return lines.with_suffix(".acks").read_bytes().splitlines()


def lines_file(tmp_path: Path, tag: str, count: int) -> Path:
    path = tmp_path / f"{tag}.txt"
    path.write_text("".join(f"{tag}-{i}\n" for i in range(count)))
    return path


@pytest.mark.parametrize("kill_at", [0.1, 0.5, 0.9])
def test_kill_9_of_the_server_under_load_loses_and_doubles_nothing(
    tmp_path: Path, kill_at: float
) -> None:
    port = closed_port()
    db = tmp_path / "telex.db"
    server = start_server(port, db)
    inputs = [lines_file(tmp_path, f"s{k}", LINES) for k in range(SENDERS)]
    senders = [sender(port, lines) for lines in inputs]
    try:
        for lines in inputs:  # each sender is connected (a first connect is not retried)
            wait_for(lambda lines=lines: lines.with_suffix(".acks").stat().st_size > 0)
        wait_for_rows(db, int(SENDERS * LINES * kill_at))
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=TIMEOUT)
        server = start_server(port, db)  # the same port and store
        errors = [process.communicate(timeout=TIMEOUT * 6)[1] for process in senders]
    finally:
        for process in [server, *senders]:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=TIMEOUT)
    for process, err, lines in zip(senders, errors, inputs, strict=True):
        assert process.returncode == 0, err.decode()
        assert len(acks_of(lines)) == LINES  # every line acknowledged
    counts = collections.Counter(record.body for record in stored_records(db))
    expected = {f"s{k}-{i}" for k in range(SENDERS) for i in range(LINES)}
    assert set(counts) == expected  # nothing lost
    assert set(counts.values()) == {1}  # nothing twice


@pytest.mark.parametrize("kill_at", [1000, 10_000])
def test_kill_9_of_a_sender_leaves_what_was_acknowledged_stored_once(
    tmp_path: Path, kill_at: int
) -> None:
    port = closed_port()
    db = tmp_path / "telex.db"
    server = start_server(port, db)
    lines = lines_file(tmp_path, "c", 50_000)
    try:
        process = sender(port, lines)
        wait_for_rows(db, kill_at)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=TIMEOUT)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=TIMEOUT)
    complete = [line for line in acks_of(lines) if line.endswith(b")")]  # not one cut short
    acked = {int(line.split()[1].rstrip(b":")) for line in complete}
    stored = [(record.sender_id, record.body) for record in stored_records(db)]
    ids = [sender_id for sender_id, _ in stored]
    assert len(ids) == len(set(ids))  # nothing twice
    assert acked <= set(ids)  # everything it saw acknowledged is there
    assert all(body == f"c-{sender_id - 1}" for sender_id, body in stored)  # nothing torn
    assert os.path.getsize(db) > 0
