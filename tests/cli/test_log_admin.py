"""telex log prune, export and import on real store files, as a user runs them, beside
a real telex serve; and the bad input they refuse with one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from telex.core.records import Batch, Envelope, Inbound
from telex.store import SQLiteStore

from ..conftest import TIMEOUT
from .test_cli import TELEX, one_clear_line, serve, telex

DAY = 86400.0


def fill(path: Path, now: float) -> None:
    """Ten days ago: bob to the server (text and bytes), a plain-text peer's line, bob to
    carol (delivered) and to dave (waiting); today: bob to the server again."""
    store = SQLiteStore(path)
    old = now - 10 * DAY
    items = [(1, "one", "received"), (2, b"\x00\xff", b"ok")]
    store.commit(Batch(inbound=[Inbound("s1", "bob", items)]), old)
    store.commit(Batch(inbound=[Inbound(None, None, [(1, "a line", "got it")])]), old)
    sent = store.commit(
        Batch(
            envelopes=[
                Envelope("carol", "hi", "bob", "s1", 3),
                Envelope("dave", "yo", "bob", "s1", 4),
            ]
        ),
        old + 1,
    )
    taken = sent.envelopes[0]
    store.commit(Batch(delivered=[taken], answers={taken: (0, "", "thanks")}), old + 2)
    store.commit(Batch(inbound=[Inbound("s1", "bob", [(5, "five", "received")])]), now)
    store.close()


def export(path: Path, *options: str) -> list[dict[str, object]]:
    result = telex("log", "export", "--db", str(path), *options)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return [json.loads(line) for line in result.stdout.splitlines()]


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment).astimezone().isoformat(timespec="microseconds")


# -- export --------------------------------------------------------------------------------


def test_export_prints_every_field_of_every_message(tmp_path: Path) -> None:
    now = time.time()
    fill(tmp_path / "t.db", now)
    old = now - 10 * DAY
    lines = export(tmp_path / "t.db")
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[1] == {
        "seq": 2, "session": "s1", "sender_id": 2, "sender": "bob", "recipient": None,
        "text_base64": "AP8=", "reply_base64": "b2s=", "received": iso(old),
        "delivered": iso(old), "status": 0, "reason": None,
    }  # fmt: skip
    assert lines[3] == {
        "seq": 4, "session": "s1", "sender_id": 3, "sender": "bob", "recipient": "carol",
        "text": "hi", "reply": "thanks", "received": iso(old + 1), "delivered": iso(old + 2),
        "status": 0, "reason": "",
    }  # fmt: skip
    assert lines[4]["delivered"] is None and lines[4]["reply"] is None  # dave's, waiting
    assert list(lines[0]) == [
        "seq", "session", "sender_id", "sender", "recipient", "text", "reply", "received",
        "delivered", "status", "reason",
    ]  # fmt: skip
    assert [line["seq"] for line in export(tmp_path / "t.db", "--since", "1d")] == [6]
    assert [line["seq"] for line in export(tmp_path / "t.db", "--to", "dave")] == [5]
    assert [line["seq"] for line in export(tmp_path / "t.db", "--from", "server")] == [3]


def test_export_into_a_reader_that_goes_away_is_no_error(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    items = [(i, "x" * 200, "received") for i in range(1, 5001)]
    store.commit(Batch(inbound=[Inbound("s", "bob", items)]), time.time())
    store.close()
    process = subprocess.Popen(
        [*TELEX, "log", "export", "--db", str(tmp_path / "t.db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    assert json.loads(process.stdout.readline())["seq"] == 1  # then | head closes the pipe
    process.stdout.close()
    assert process.wait(timeout=TIMEOUT) == 0
    assert process.stderr.read() == b""
    process.stderr.close()


# -- import --------------------------------------------------------------------------------


def test_export_import_export_gives_the_same_lines(tmp_path: Path) -> None:
    fill(tmp_path / "a.db", time.time())
    first = telex("log", "export", "--db", str(tmp_path / "a.db")).stdout
    (tmp_path / "a.jsonl").write_text(first)
    result = telex("log", "import", str(tmp_path / "a.jsonl"), "--db", str(tmp_path / "b.db"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"imported 6 messages into {tmp_path / 'b.db'}\n"
    assert telex("log", "export", "--db", str(tmp_path / "b.db")).stdout == first
    again = telex("log", "--db", str(tmp_path / "b.db"), "import", "-", stdin=first)  # stdin
    assert (
        again.stdout == f"imported 0 messages into {tmp_path / 'b.db'} (6 already there, skipped)\n"
    )
    assert telex("log", "export", "--db", str(tmp_path / "b.db")).stdout == first


def test_an_imported_store_serves_its_outbox(tmp_path: Path) -> None:
    fill(tmp_path / "a.db", time.time())
    lines = telex("log", "export", "--db", str(tmp_path / "a.db")).stdout
    db = tmp_path / "b.db"
    assert telex("log", "import", "-", "--db", str(db), stdin=lines).returncode == 0
    with serve("--db", str(db), "--quiet") as server:
        result = telex("listen", server.address, "--name", "dave", "--json", "--count", "1")
        assert result.returncode == 0, result.stderr
        assert [json.loads(line).get("text") for line in result.stdout.splitlines()] == ["yo"]


def test_import_refuses_a_store_a_server_is_running_on(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    fill(db, time.time())
    lines = telex("log", "export", "--db", str(db)).stdout
    with serve("--db", str(db), "--quiet"):
        result = telex("log", "import", "-", "--db", str(db), stdin=lines)
    one_clear_line(result, 2, "in use by another telex server (pid")
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("not json", "line 3: not a JSON object"),
        ("[1, 2]", "line 3: not a JSON object"),
        ('{"seq": 9, "received": "2025-01-01T00:00:00+00:00"}', "text or text_base64 is missing"),
        ('{"seq": true, "text": "x", "received": "2025-01-01T00:00:00"}', "seq must be a number"),
        ('{"seq": 9, "text": "x", "received": "yesterday"}', "received is not an ISO 8601 time"),
        ('{"seq": 9, "text_base64": "@@", "received": "2025-01-01T00:00:00"}', "not base64"),
        ('{"seq": 9, "text": "x", "text_base64": "", "received": "2025-01-01T00:00"}', "both"),
        ('{"seq": 9, "text": "x", "received": "2025-01-01T00:00", "colour": 1}', "'colour'"),
    ],
)
def test_a_bad_line_is_named_and_nothing_is_imported(tmp_path: Path, line: str, says: str) -> None:
    good = '{"seq": 1, "sender_id": 1, "text": "a", "received": "2025-01-01T00:00:00+00:00"}\n'
    (tmp_path / "in.jsonl").write_text(good + "\n" + line + "\n" + good)
    db = tmp_path / "t.db"
    result = telex("log", "import", str(tmp_path / "in.jsonl"), "--db", str(db))
    one_clear_line(result, 2, says)
    assert f"{tmp_path / 'in.jsonl'}, line 3: " in result.stderr
    assert "nothing imported" in result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "in.jsonl"]  # no store made
    fill(db, time.time())
    before = export(db)
    one_clear_line(telex("log", "import", str(tmp_path / "in.jsonl"), "--db", str(db)), 2, says)
    assert export(db) == before  # nothing imported into a store that was there


def test_a_line_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(b'{"seq": 1, "text": "caf\xe9"}\n')
    result = telex("log", "import", str(tmp_path / "in.jsonl"), "--db", str(tmp_path / "t.db"))
    one_clear_line(result, 2, "line 1: not a JSON object")


# -- prune ---------------------------------------------------------------------------------


def test_prune_while_a_server_runs_and_takes_messages(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    fill(db, time.time())
    with serve("--db", str(db), "--quiet") as server:
        dry = telex("log", "prune", "--db", str(db), "--before", "7d", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.startswith("4 delivered messages stored before ")
        assert dry.stdout.endswith(" would be deleted\n")
        assert len(export(db)) == 6
        pruned = telex("log", "--db", str(db), "prune", "--before", "7d")
        assert pruned.returncode == 0, pruned.stderr
        assert pruned.stdout.startswith("deleted 4 delivered messages stored before ")
        sent = telex("send", server.address, "after")
        assert sent.returncode == 0, sent.stderr
        when = datetime.fromtimestamp(time.time()).isoformat()
        assert telex("log", "prune", "--db", str(db), "--before", when).stdout.startswith(
            "deleted 1 "  # today's message from bob; the one just sent is the newest
        )
    left = export(db)
    assert [(line["recipient"], line.get("text")) for line in left] == [
        ("dave", "yo"),  # waiting: never pruned
        (None, "after"),
    ]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("log", "prune", "--db", "{db}"), "Missing option '--before'"),
        (("log", "prune", "--db", "{db}", "--before", "soon"), "is not 30s, 15m, 1h, 2d"),
        (("log", "prune", "--db", "{tmp}/none.db", "--before", "1d"), "no store at"),
        (("log", "export", "--db", "{tmp}/none.db"), "no store at"),
        (("log", "--follow", "--db", "{db}", "prune", "--before", "1d"), "takes its own options"),
        (("log", "--db", "{db}", "frobnicate"), "No such command"),
        (("log", "import", "{tmp}/missing.jsonl", "--db", "{db}"), "missing.jsonl"),
        (("serve", "--no-store", "--port", "0", "--keep", "0s"), "is not a duration"),
        (("serve", "--no-store", "--port", "0", "--keep", "7 days"), "is not a duration"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    fill(tmp_path / "t.db", time.time())
    filled = [arg.format(tmp=tmp_path, db=tmp_path / "t.db") for arg in args]
    result = telex(*filled)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
