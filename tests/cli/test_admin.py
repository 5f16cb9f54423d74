"""telex user and the users file, through the real command."""

from __future__ import annotations

from pathlib import Path

from .test_cli import one_clear_line, serve, telex


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
