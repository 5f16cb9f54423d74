"""telex send --session: a sender killed and run again sends nothing twice; Ctrl-C
says what was acknowledged and exits 130."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from telex.store import SQLiteStore

from ..conftest import TIMEOUT
from .test_cli import TELEX, read_line, serve, telex, temp_db

LINES = 30_000


def stored_bodies(db: str) -> list[object]:
    store = SQLiteStore(db, readonly=True)
    try:
        return [record.body for record in store.records()]
    finally:
        store.close()


def test_a_killed_sender_run_again_with_its_session_stores_nothing_twice(tmp_path: Path) -> None:
    data = tmp_path / "lines"
    data.write_text("".join(f"line {i}\n" for i in range(1, LINES + 1)))
    session = tmp_path / "sender.json"
    db = temp_db()
    with serve("--db", db, "--quiet") as server, data.open() as stdin:
        sender = subprocess.Popen(
            [*TELEX, "send", server.address, "-", "--session", str(session)],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert sender.stdout is not None
        for _ in range(3000):  # well into the run, with thousands in flight
            assert read_line(sender.stdout).startswith("ack ")
        sender.kill()
        sender.communicate(timeout=TIMEOUT)
        assert json.loads(session.read_text())["finished"] is False

        again = telex(
            "send", server.address, "-", "--session", str(session), stdin=data.read_text()
        )
        assert again.returncode == 0, again.stderr
        assert "resuming session" in again.stderr
        skipped = json.loads(session.read_text())
        assert skipped["finished"] is True
        server.stop()
    bodies = stored_bodies(db)
    assert len(bodies) == LINES  # every line stored, none twice
    assert sorted(bodies) == sorted(f"line {i}" for i in range(1, LINES + 1))


def test_a_finished_session_goes_on_with_new_messages(tmp_path: Path) -> None:
    session = tmp_path / "sender.json"
    db = temp_db()
    with serve("--db", db, "--quiet") as server:
        first = telex("send", server.address, "a", "b", "--session", str(session))
        second = telex("send", server.address, "c", "--session", str(session))
        assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
        assert second.stdout.startswith("ack 3: ")  # the same session, numbered on
        server.stop()
    assert stored_bodies(db) == ["a", "b", "c"]


def test_without_a_session_a_rerun_is_a_new_session() -> None:
    db = temp_db()
    with serve("--db", db, "--quiet") as server:
        for _ in range(2):
            assert telex("send", server.address, "same").returncode == 0
        server.stop()
    assert stored_bodies(db) == ["same", "same"]  # as the README says


def test_a_bad_session_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\xff not json")
    missing_dir = tmp_path / "no" / "such" / "file.json"
    for path in (garbage, missing_dir):
        result = telex("send", "127.0.0.1:9", "hi", "--session", str(path))
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1 and "session file" in result.stderr


def test_ctrl_c_exits_130_and_counts_what_was_acknowledged() -> None:
    with serve("--quiet") as server:
        sender = subprocess.Popen(
            [*TELEX, "send", server.address, "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert sender.stdin is not None and sender.stdout is not None
        sender.stdin.write("".join(f"{i}\n" for i in range(100)))
        sender.stdin.flush()
        for _ in range(100):
            read_line(sender.stdout)
        sender.send_signal(signal.SIGINT)  # stdin still open: the sender was waiting
        _, err = sender.communicate(timeout=TIMEOUT)
        sender.stdin = None
        assert sender.returncode == 130
        assert err == (
            "telex: interrupted: 100 messages answered (0 of them rejected), "
            "0 sent and not acknowledged\n"
        )
