"""telex user and the users file, through the real command."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..conftest import TIMEOUT
from .test_cli import TELEX, closed_port, one_clear_line, serve, telex


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


def test_user_list_and_remove(tmp_path: Path) -> None:
    users = tmp_path / "users"
    for name in ("bob", "alice"):
        assert telex("user", "add", name, "--users", str(users)).returncode == 0
    listed = telex("user", "list", "--users", str(users))
    assert (listed.returncode, listed.stdout) == (0, "alice\nbob\n")
    removed = telex("user", "remove", "bob", "--users", str(users))
    assert removed.returncode == 0, removed.stderr
    assert telex("user", "list", "--users", str(users)).stdout == "alice\n"
    one_clear_line(telex("user", "remove", "bob", "--users", str(users)), 2, "bob is not in")
    one_clear_line(telex("user", "list", "--users", str(tmp_path / "none")), 2, "no users file")
    (tmp_path / "garbage").write_text("this is not a users file\n")
    one_clear_line(telex("user", "list", "--users", str(tmp_path / "garbage")), 2, "cannot read")


def _user(users: Path, name: str, tmp_path: Path) -> Path:
    token = tmp_path / f"{name}.token"
    token.write_text(f"{name}'s secret\n")
    added = telex("user", "add", name, "--users", str(users), "--token-file", str(token))
    assert added.returncode == 0, added.stderr
    return token


def test_a_users_file_lists_who_may_log_in_and_changes_hold_at_once(tmp_path: Path) -> None:
    """With --users alone, only listed names log in (an allow list, as a user expects of a
    list of users); with --token-file too, other names log in with the shared token."""
    users = tmp_path / "users"
    alice, bob = _user(users, "alice", tmp_path), _user(users, "bob", tmp_path)
    with serve("--quiet", "--no-store", "--users", str(users)) as server:

        def send_as(name: str, token: Path) -> subprocess.CompletedProcess[str]:
            return telex("send", server.address, "--name", name, "--token-file", str(token), "x")

        assert send_as("alice", alice).returncode == 0
        assert send_as("bob", bob).returncode == 0
        one_clear_line(send_as("carol", bob), 6, "refused")  # unlisted: refused
        one_clear_line(send_as("alice", bob), 6, "refused")  # listed: only its own token
        assert telex("user", "remove", "bob", "--users", str(users)).returncode == 0
        one_clear_line(send_as("bob", bob), 6, "refused")  # from the next login on
        carol = _user(users, "carol", tmp_path)
        assert send_as("carol", carol).returncode == 0
    shared = tmp_path / "shared.token"
    shared.write_text("everyone's secret\n")
    with serve(
        "--quiet", "--no-store", "--users", str(users), "--token-file", str(shared)
    ) as server:
        anyone = telex("send", server.address, "--name", "dave", "--token-file", str(shared), "x")
        assert anyone.returncode == 0, anyone.stderr
        taken = telex("send", server.address, "--name", "alice", "--token-file", str(shared), "x")
        one_clear_line(taken, 6, "refused")  # a listed name still needs its own token


def test_invalid_and_reserved_names_are_usage_errors_before_any_connection() -> None:
    port = closed_port()  # nothing listens: a connection tried would be exit 3
    for name in ("server", "You", "a b", "x" * 33):
        result = telex("send", f"127.0.0.1:{port}", "--name", name, "hi")
        assert result.returncode == 2 and "--name" in result.stderr, result
    one_clear_line(telex("user", "add", "everyone", "--users", "/tmp/unused"), 2, "reserved")


def test_an_ipv6_address_is_printed_as_it_is_typed() -> None:
    port = closed_port()
    result = telex("send", f"[::1]:{port}", "hi")
    assert result.returncode == 3
    assert f"[::1]:{port}" in result.stderr and f" ::1:{port}" not in result.stderr
