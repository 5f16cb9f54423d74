"""telex serve's settings from a real TOML file, TELEX_* variables and flags, run as a user
runs them: which one wins, what ``telex config show`` says about each, and a bad file or
variable as one line and exit 2 (docs/operations.md)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ..conftest import TIMEOUT
from .test_cli import TELEX, read_line

LATIN1 = os.fsdecode(b"caf\xe9")  # not UTF-8: not a host


def environment(**more: str) -> dict[str, str]:
    """This process's environment without any TELEX_* setting, and ``more``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEX_")}
    if "TELEX_TEST_TIMEOUT" in os.environ:
        env["TELEX_TEST_TIMEOUT"] = os.environ["TELEX_TEST_TIMEOUT"]
    env.update(more)
    return env


def run(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TELEX, *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        env=environment(**(env or {})),
        cwd=cwd,
    )


class Started:
    """A ``telex serve`` child and the first line it printed (parsed, if JSON)."""

    def __init__(self, process: subprocess.Popen[str], first: str) -> None:
        self.process = process
        self.first = first
        self.stdout = ""
        self.stderr = ""

    @property
    def listening(self) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(self.first)
        assert record["event"] == "listening", record
        return record

    def stop(self) -> int:
        """SIGTERM, as ``systemctl stop`` sends it; the exit code, within the timeout."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.stdout, self.stderr = self.process.communicate(timeout=TIMEOUT)
        return self.process.returncode


@contextmanager
def started(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[Started]:
    """``telex serve ARGS`` until its first line of output; stopped when done."""
    process = subprocess.Popen(
        [*TELEX, "serve", *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(**(env or {})),
        cwd=cwd,
    )
    assert process.stdout is not None
    try:
        first = read_line(process.stdout)
        if not first:  # it ended instead: say why
            process.wait(timeout=TIMEOUT)
            assert process.stderr is not None
            pytest.fail(f"serve exited {process.returncode}: {process.stderr.read()}")
        server = Started(process, first)
        yield server
        if process.returncode is None:
            assert server.stop() == 0, server.stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=TIMEOUT)


def one_line(result: subprocess.CompletedProcess[str], *says: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr that says all of ``says``."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("telex: "), lines
    for text in says:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something already listens on: a server given it cannot start."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield int(busy.getsockname()[1])


def settings(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    """``telex config show --json``'s lines, by key."""
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(row["event"] == "setting" for row in rows)
    return {row["key"]: row for row in rows}


# -- precedence, with a real server -------------------------------------------------------


def test_a_flag_beats_the_file_which_beats_the_environment_which_beats_the_default(
    tmp_path: Path, busy_port: int
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    config = folder / "telex.toml"
    config.write_text('port = 0\njson = true\nquiet = true\ndb = "file.db"\n')
    elsewhere = tmp_path / "elsewhere"  # the server's working folder: not the file's
    elsewhere.mkdir()
    env = {"TELEX_PORT": str(busy_port), "TELEX_DB": str(tmp_path / "env.db")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")  # where the default store would be

    # A flag beats the file: --db.
    with started("--config", config, "--db", tmp_path / "flag.db", env=env, cwd=elsewhere) as s:
        assert s.listening["store"] == str(tmp_path / "flag.db")
    # The file beats the environment: port 0, not TELEX_PORT's busy one; its db, relative
    # to the file's folder, not TELEX_DB.
    with started("--config", config, env=env, cwd=elsewhere) as server:
        assert server.listening["port"] not in (busy_port, 0)
        assert server.listening["store"] == str(folder / "file.db")
    # The environment beats the default: TELEX_PORT is the busy port.
    result = run("serve", "--json", "--no-store", env=env)
    assert result.returncode == 3, result.stderr
    assert f"cannot listen on 127.0.0.1:{busy_port}" in result.stderr
    with started("--json", "--port", "0", env=env) as server:
        assert server.listening["store"] == str(tmp_path / "env.db")
    # The default, with none of them.
    with started("--json", "--port", "0", env={"XDG_DATA_HOME": env["XDG_DATA_HOME"]}) as server:
        assert server.listening["store"] == str(tmp_path / "data" / "telex" / "telex.db")
        assert server.listening["host"] == "127.0.0.1"


def test_the_file_may_come_from_telex_config_and_keys_take_either_spelling(
    tmp_path: Path,
) -> None:
    config = tmp_path / "telex.toml"
    config.write_text(
        "# a comment\nport = 0\njson = true\nno_store = true\nmax-message-size = 8\n"
        'text_pause = 0.5\nlog-level = "info"\n'
    )
    with started(env={"TELEX_CONFIG": str(config)}) as server:
        assert server.listening["store"] is None  # no_store
        result = run("send", f"127.0.0.1:{server.listening['port']}", "short", "far too long")
        assert result.returncode == 1  # the second is over max-message-size
        assert "over the limit of 8" in result.stdout
        assert server.stop() == 0
    assert "listening on" in server.stderr  # log-level info


# -- telex config show --------------------------------------------------------------------


def test_config_show_says_where_each_setting_came_from(tmp_path: Path) -> None:
    config = tmp_path / "telex.toml"
    config.write_text('sync = "normal"\nidle_timeout = 7.5\nno-store = true\ndb = "x.db"\n')
    env = {
        "TELEX_MAX_MESSAGE_SIZE": "2048",
        "TELEX_SYNC": "full",
        "TELEX_IDLE_TIMEOUT": "5",
        "TELEX_QUIET": "1",
    }
    args = ("config", "show", "--config", config, "--json", "--", "--idle-timeout", "9", "-q")
    rows = settings(run(*args, env=env))
    assert rows["max-message-size"] == {
        "event": "setting",
        "key": "max-message-size",
        "value": 2048,
        "source": "env",
        "origin": "TELEX_MAX_MESSAGE_SIZE",
    }
    assert (rows["sync"]["value"], rows["sync"]["source"]) == ("normal", "file")
    assert rows["sync"]["origin"] == str(config)
    assert rows["db"]["value"] == str(tmp_path / "x.db")
    assert rows["no-store"]["value"] is True
    assert (rows["idle-timeout"]["value"], rows["idle-timeout"]["source"]) == (9.0, "flag")
    assert rows["idle-timeout"]["origin"] == "--idle-timeout"
    assert (rows["quiet"]["value"], rows["quiet"]["source"]) == (True, "flag")
    assert rows["port"] == {
        "event": "setting",
        "key": "port",
        "value": 7777,
        "source": "default",
        "origin": None,
    }
    assert rows["tls"]["value"] is None
    # Every flag of serve is there, spelled as the flag.
    help_text = run("serve", "--help").stdout
    for key in rows:
        assert f"--{key}" in help_text

    # The same as lines a config file could hold, each with where it came from.
    text = run("config", "show", "--config", config, env=env).stdout.splitlines()
    assert text[0] == f"# config file {config}"
    lines = {line.split()[0 if not line.startswith("# ") else 1]: line for line in text[1:]}
    assert lines["port"].split("#")[0].strip() == "port = 7777"
    assert lines["port"].endswith("# default")
    assert lines["sync"].split("#")[0].strip() == 'sync = "normal"'
    assert lines["sync"].endswith(f"# file {config}")
    assert lines["max-message-size"].endswith("# env TELEX_MAX_MESSAGE_SIZE")
    assert lines["tls"].startswith("# tls (not set)")


def test_config_show_without_a_file_and_from_telex_config(tmp_path: Path) -> None:
    result = run("config", "show")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "# no config file (--config FILE or TELEX_CONFIG)"
    config = tmp_path / "telex.toml"
    config.write_text("port = 9000\n")
    result = run("config", "show", env={"TELEX_CONFIG": str(config)})
    assert result.stdout.splitlines()[0] == f"# config file {config} (from TELEX_CONFIG)"
    assert re.search(rf"^port = 9000 +# file {re.escape(str(config))}$", result.stdout, re.M)


# -- a bad file, a bad variable -----------------------------------------------------------


BAD_FILES = [
    pytest.param("prot = 7777\n", ("unknown key 'prot'", "did you mean 'port'"), id="unknown-key"),
    pytest.param('port = "7777"\n', ("port: expected an integer",), id="string-for-integer"),
    pytest.param("max-connections = true\n", ("max-connections:",), id="boolean-for-integer"),
    pytest.param('quiet = "yes"\n', ("quiet: expected true or false",), id="string-for-switch"),
    pytest.param("idle-timeout = [1]\n", ("idle-timeout: expected a number",), id="array"),
    pytest.param("port = 70000\n", ("port: 70000 is not in the range",), id="port-out-of-range"),
    pytest.param("max-message-size = 0\n", ("max-message-size: 0",), id="limit-out-of-range"),
    pytest.param("idle-timeout = -1\n", ("idle-timeout: -1",), id="negative-seconds"),
    pytest.param('sync = "maybe"\n', ("sync: 'maybe' is not one of",), id="bad-choice"),
    pytest.param('log-level = "loud"\n', ("log-level: 'loud'",), id="bad-log-level"),
    pytest.param('host = ""\n', ("host:",), id="empty-host"),
    pytest.param('cert = "missing.pem"\n', ("cert:", "missing.pem"), id="missing-cert"),
    pytest.param("[serve]\nport = 0\n", ("unknown key 'serve'", "top"), id="a-table"),
    pytest.param("port = 0\n\"port\" = 1\n", ("not TOML",), id="twice"),
    pytest.param("max-message-size = 1\nmax_message_size = 2\n", ("given twice",), id="spelled"),
    pytest.param("port = \n", ("not TOML", "line 1"), id="not-toml"),
    pytest.param("[serve]\nport: 7777\n", ("not TOML",), id="ini-not-toml"),
    pytest.param(b"caf\xe9 = 1\n", ("not UTF-8",), id="not-utf8"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "says"), BAD_FILES)
@pytest.mark.parametrize("command", ["serve", "config show"])
def test_a_bad_config_file_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, command: str, content: str | bytes, says: tuple[str, ...]
) -> None:
    config = tmp_path / "telex.toml"
    if isinstance(content, bytes):
        config.write_bytes(content)
    else:
        config.write_text(content)
    args = ("--port", "0", "--no-store") if command == "serve" else ()
    one_line(run(*command.split(), "--config", config, *args), str(config), *says)


@pytest.mark.parametrize("command", ["serve", "config show"])
def test_a_missing_config_file_or_a_folder_is_one_line_and_exit_2(
    tmp_path: Path, command: str
) -> None:
    missing = tmp_path / "missing.toml"
    one_line(run(*command.split(), "--config", missing), str(missing), "does not exist")
    one_line(run(*command.split(), "--config", tmp_path), str(tmp_path), "is a directory")
    env = {"TELEX_CONFIG": str(missing)}
    one_line(run(*command.split(), env=env), str(missing), "does not exist")


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TELEX_PORT", "abc"), ("TELEX_PORT", "70000"), ("TELEX_QUIET", "maybe"),
     ("TELEX_SYNC", "maybe"), ("TELEX_MAX_MESSAGE_SIZE", "0"), ("TELEX_HOST", LATIN1)],
)  # fmt: skip
def test_a_bad_telex_variable_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, variable: str, value: str
) -> None:
    one_line(run("serve", "--no-store", env={variable: value}), variable)
    one_line(run("config", "show", env={variable: value}), variable)


def test_config_show_hides_a_database_password() -> None:
    shown = subprocess.run(
        [*TELEX, "config", "show", "--", "--db", "postgresql://bob:s3cret@localhost/telex"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert shown.returncode == 0, shown.stderr
    assert "s3cret" not in shown.stdout and "bob" in shown.stdout
