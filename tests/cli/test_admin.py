"""telex user and the users file, through the real command."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..conftest import TIMEOUT
from .test_cli import TELEX, one_clear_line, serve, telex


def test_user_add_saves_before_it_shows_and_refuses_to_replace(tmp_path: Path) -> None:
    users = tmp_path / "users"
    first = telex("user", "add", "alice", "--users", str(users))
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    assert token and "alice " in users.read_text()
    again = telex("user", "add", "alice", "--users", str(users))
    one_clear_line(again, 2, "alice is in")
    assert again.stdout == ""  # no new token shown: the old one still holds
    forced = telex("user", "add", "alice", "--users", str(users), "--force")
    assert forced.returncode == 0 and forced.stdout.strip() != token


def test_user_add_to_a_folder_that_is_not_there_shows_no_token(tmp_path: Path) -> None:
    result = telex("user", "add", "alice", "--users", str(tmp_path / "missing" / "users"))
    one_clear_line(result, 2, "cannot write")
    assert result.stdout == ""  # a token shown once must be one that was saved


def test_serve_with_a_users_file_that_is_not_there_refuses_to_start(tmp_path: Path) -> None:
    result = telex("serve", "--port", "0", "--users", str(tmp_path / "mistyped"))
    one_clear_line(result, 2, "does not exist")


def test_a_second_server_on_one_store_refuses_naming_the_first(tmp_path: Path) -> None:
    db = str(tmp_path / "telex.db")
    with serve("--db", db) as first:
        second = telex("serve", "--port", "0", "--db", db)
        one_clear_line(second, 3, f"in use by another telex server (pid {first.process.pid})")
        log = telex("log", "--db", db)  # reading while it runs is fine
        assert log.returncode == 0, log.stderr


def test_bad_input_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    one_clear_line(telex("cert", "--out", str(tmp_path / "missing" / "x")), 2, "cannot write")
    with serve("--quiet", "--no-store") as server:
        one_clear_line(
            telex("send", server.address, "--tls", "--cafile", str(garbage), "x"),
            2,
            "cannot use --cafile",
        )


def test_a_message_argument_that_is_not_utf8_is_sent_as_bytes() -> None:
    with serve("--quiet", "--no-store") as server:
        result = subprocess.run(
            [*TELEX, "send", server.address, b"caf\xe9"],
            capture_output=True,
            timeout=TIMEOUT * 3,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ack 1: received (4 bytes)\n"


def test_addresses_are_checked_before_any_connection() -> None:
    for bad in ("http://127.0.0.1:7777", "host:0", "[::1", "a b:1"):
        result = telex("send", bad, "x")  # click's usage error: exit 2, no traceback
        assert result.returncode == 2 and "Traceback" not in result.stderr, result
        assert "HOST:PORT" in result.stderr.splitlines()[-1]


def test_address_forms() -> None:
    from telex.cli.common import parse_address

    assert parse_address("example.org") == ("example.org", 7777)
    assert parse_address("::1") == ("::1", 7777)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    assert parse_address("8000") == ("127.0.0.1", 8000)
    assert parse_address(":8000") == ("127.0.0.1", 8000)
