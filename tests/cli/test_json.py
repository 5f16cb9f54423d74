"""Every command's --json output against docs/json.md, read from the document itself:
an event or a field the document does not list, a wrong type, or a missing "always"
field fails here."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ..conftest import TIMEOUT
from .test_cli import TELEX, Serve, closed_port, listening, read_line, telex, temp_db

DOC = Path(__file__).parents[2] / "docs" / "json.md"

Field = tuple[str, bool]  # type, always present
Schema = dict[str, dict[str, Field]]


def schema() -> Schema:
    """The events and their fields, from the tables of docs/json.md."""
    events: Schema = {}
    names: list[str] = []
    for line in DOC.read_text().splitlines():
        heading = re.match(r"### ([a-z_, ]+?) —", line)
        if heading:
            names = [name.strip() for name in heading.group(1).split(",")]
            for name in names:
                events[name] = {}
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if not names or len(cells) != 4 or cells[0] in ("field", "---"):
            continue
        field, kind, present = cells[0], cells[1].replace("\\|", "|"), cells[2]
        for name in names:
            events[name][field] = (kind, present == "always")
    return events


def is_time(value: object) -> bool:
    if not isinstance(value, str):
        return False
    moment = datetime.fromisoformat(value)
    return moment.tzinfo is not None


TYPES = {
    "int": lambda v: type(v) is int,
    "str": lambda v: type(v) is str,
    "bool": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "time": is_time,
    "object": lambda v: type(v) is dict,
    "list": lambda v: type(v) is list,
    "number": lambda v: type(v) in (int, float),
}


def check(record: dict[str, Any], events: Schema) -> None:
    event = record.get("event")
    assert event in events, f"event {event!r} is not in docs/json.md: {record}"
    fields = events[event]
    for key, value in record.items():
        if key == "event":
            continue
        assert key in fields, f"{event}.{key} is not in docs/json.md: {record}"
        kinds = fields[key][0].split("|")
        assert any(TYPES[kind](value) for kind in kinds), f"{event}.{key}: {value!r}"
    missing = [key for key, (_, always) in fields.items() if always and key not in record]
    assert not missing, f"{event} without {missing}: {record}"
    for body in ("text", "reply", "answer"):  # never both forms of one body
        assert not (body in record and f"{body}_base64" in record), record


def lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_the_document_parses() -> None:
    events = schema()
    assert {"ack", "receipt", "message", "listening", "stopped", "error"} <= set(events)
    assert events["ack"]["id"] == ("int", True)
    assert events["message"]["delivered"] == ("time|null", False)
    good = {"event": "error", "message": "no", "exit": 3}
    check(good, events)
    for bad in ({**good, "extra": 1}, {**good, "exit": "3"}, {"event": "error", "exit": 3}):
        with pytest.raises(AssertionError):
            check(bad, events)


def test_every_commands_json_is_what_the_document_says(tmp_path: Path) -> None:
    events = schema()
    seen: list[dict[str, Any]] = []
    db = temp_db()
    process = subprocess.Popen(
        [*TELEX, "serve", "--port", "0", "--json", "--db", db],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    first = json.loads(read_line(process.stdout))
    seen.append(first)
    address = f"127.0.0.1:{first['port']}"
    try:
        with listening(address, "--name", "bot") as bot:
            assert bot.stdout is not None
            process.stdin.write("@bot from the console\n/who\n/stats\n")
            process.stdin.flush()
            seen.append(json.loads(read_line(bot.stdout)))
            sent = telex("send", address, "--json", "hi", "\udcff")  # text, bytes
            to_bot = telex("send", address, "--json", "--to", "bot", "--wait-delivery", "x")
            seen.append(json.loads(read_line(bot.stdout)))
            text = telex("send", address, "--text", "--json", "plain line")
            pinged = telex("ping", address, "-c", "1", "--json")
            benched = telex("bench", address, "--messages", "10", "--warmup", "0", "--json")
            figures = telex("stats", address, "--json")
            chat = subprocess.run(
                [*TELEX, "chat", address, "--json", "--name", "carol"],
                input="to the server\n@bot to bot\n@ nobody\n",
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            seen.append(json.loads(read_line(bot.stdout)))
        process.stdin.write("@bot you are away now\n")
        process.stdin.close()
        process.stdin = None
        time.sleep(0.5)  # the console has read its last line
        process.send_signal(signal.SIGTERM)
        serve_out, _ = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    refused = telex("send", f"127.0.0.1:{closed_port()}", "--json", "hi")
    gone = telex("send", address, "--json", "x")  # the server has stopped
    logged = telex("log", "--db", db, "--json")
    settings = telex("config", "show", "--json", "--", "--metrics", "127.0.0.1:9000")
    for result in (sent, to_bot, text, pinged, benched, figures, chat, logged, settings):
        assert result.returncode == 0, result.stderr
        seen.extend(lines(result.stdout))
    for result in (refused, gone):
        assert result.returncode == 3
        (error,) = lines(result.stdout)
        assert error["event"] == "error" and error["exit"] == 3
        assert result.stderr == f"telex: {error['message']}\n"
        seen.append(error)
    seen.extend(lines(serve_out))
    for record in seen:
        check(record, events)
    kinds = {record["event"] for record in seen}
    # Not produced here: a chat's dropped connection (test_terminal.py covers it).
    assert set(events) - kinds == {"disconnected", "reconnected"}, set(events) - kinds
    bodies = [r for r in seen if r["event"] == "message" and "text_base64" in r]
    assert bodies, "a bytes message is shown as text_base64"


def test_a_rejection_is_an_ack_with_its_code_and_reason() -> None:
    events = schema()
    with_server = subprocess.Popen(
        [*TELEX, "serve", "--port", "0", "--json", "--no-store", "--max-message-size", "4"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Serve(with_server)
    try:
        result = telex("send", server.address, "--json", "far too long")
    finally:
        server.stop()
    assert result.returncode == 1
    (ack,) = lines(result.stdout)
    check(ack, events)
    assert (ack["status"], ack["outcome"], ack["code"]) == ("rejected", "rejected", 1)


@pytest.mark.parametrize("command", ["listen", "chat"])
def test_a_client_that_cannot_connect_says_so_in_json(command: str) -> None:
    result = telex(command, f"127.0.0.1:{closed_port()}", "--json")
    assert result.returncode == 3
    (error,) = lines(result.stdout)
    check(error, schema())
