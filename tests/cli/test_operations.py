"""telex serve run for real (docs/operations.md): refused on an address that is not
loopback without TLS and a token, logs in a file, shell completion in a real bash, and the
systemd unit's ExecStart line stopped as ``systemctl stop`` stops it."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from telex.cli.serve import is_loopback

from ..conftest import TIMEOUT
from .test_cli import TELEX, read_line
from .test_config import environment, one_line, run, started

DOC = Path(__file__).parents[2] / "docs" / "operations.md"


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """A TLS prefix: PREFIX.pem and PREFIX.key, made by telex cert."""
    prefix = tmp_path / "server"
    result = run("cert", "--out", prefix)
    assert result.returncode == 0, result.stderr
    return prefix


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("a-token-for-the-tests\n")
    return path


# -- safe by default ----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_an_address_that_is_not_loopback_without_tls_and_token_is_refused(
    tmp_path: Path, host: str
) -> None:
    db = tmp_path / "telex.db"
    line = one_line(
        run("serve", "--host", host, "--port", "0", "--db", db),
        f"refusing to listen on {host}",
        "--tls PREFIX",
        "--token-file FILE",
        "--insecure",
    )
    assert "without TLS and without a token" in line
    assert not db.exists()  # refused before anything was opened


def test_the_refusal_names_only_what_is_missing(
    tmp_path: Path, certificate: Path, token: Path
) -> None:
    line = one_line(run("serve", "--host", "0.0.0.0", "--no-store", "--tls", certificate))
    assert "without a token" in line and "--token-file FILE" in line
    assert "--tls PREFIX" not in line
    for given in (("--token-file", token), ("--users", tmp_path / "users")):
        line = one_line(run("serve", "--host", "0.0.0.0", "--no-store", *given))
        assert "without TLS" in line and "--tls PREFIX" in line
        assert "--token-file FILE" not in line
    line = one_line(run("serve", "--host", "0.0.0.0", "--no-store", env={"TELEX_TOKEN": "x"}))
    assert "--tls PREFIX" in line and "--token-file" not in line
    config = tmp_path / "telex.toml"  # from a config file: the same
    config.write_text('host = "0.0.0.0"\nno-store = true\n')
    one_line(run("serve", "--config", config), "refusing to listen on 0.0.0.0", "--insecure")


def test_insecure_listens_on_every_address_with_a_warning() -> None:
    args = ("--host", "0.0.0.0", "--port", "0", "--no-store", "--json", "--insecure")
    with started(*args) as server:
        assert server.listening["host"] == "0.0.0.0"
        assert server.stop() == 0  # at once: nothing else is done on that address
    warning = [line for line in server.stderr.splitlines() if "--insecure" in line]
    assert len(warning) == 1, server.stderr
    assert warning[0].startswith("telex: WARNING: --insecure: listening on 0.0.0.0")
    assert "without TLS and without a token" in warning[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost"])
def test_loopback_needs_neither(host: str) -> None:
    with started("--host", host, "--port", "0", "--no-store", "--json") as server:
        assert server.listening["host"] == host
        assert server.stop() == 0
    assert "WARNING" not in server.stderr


def test_loopback_is_127_0_0_0_8_ipv6_1_localhost_and_names_only_for_those() -> None:
    for host in ("127.0.0.1", "127.255.0.9", "::1", "localhost", "LocalHost", "::1%lo"):
        assert is_loopback(host) is True, host
    for host in ("0.0.0.0", "::", "192.0.2.1", "10.0.0.1", "2001:db8::1", "::ffff:192.0.2.1"):
        assert is_loopback(host) is False, host
    assert is_loopback("nohost.invalid") is None  # listening on it fails, and says so


# -- logs ---------------------------------------------------------------------------------


LOG_LINE = re.compile(r"^(\S+) (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)$")


def log_lines(path: Path) -> list[tuple[datetime, str, str, str]]:
    """The file's lines, each with its ISO 8601 time (with a zone), level, logger, text."""
    lines = []
    for line in path.read_text().splitlines():
        match = LOG_LINE.match(line)
        assert match, line
        moment = datetime.fromisoformat(match[1])
        assert moment.tzinfo is not None, line
        lines.append((moment, match[2], match[3], match[4]))
    return lines


def test_log_file_gets_iso_time_lines_at_the_level_asked(tmp_path: Path) -> None:
    log = tmp_path / "telex.log"
    args = ("--port", "0", "--no-store", "--json", "--quiet", "--log-file", log)
    with started(*args, "--log-level", "info") as server:
        address = f"127.0.0.1:{server.listening['port']}"
        assert run("send", address, "hello").returncode == 0
        assert server.stop() == 0
    lines = log_lines(log)
    texts = [text for _, _, _, text in lines]
    assert texts[0] == f"telex {_version()} listening on {address}, store none"
    assert any(text.endswith(": joined") for text in texts), texts
    assert texts[-2:] == ["stopping (SIGTERM)", "stopped"]
    assert {level for _, level, _, _ in lines} == {"INFO"}
    assert {logger for _, _, logger, _ in lines} == {"telex.serve", "telex.server"}
    assert [moment for moment, *_ in lines] == sorted(moment for moment, *_ in lines)
    assert "listening on" in server.stderr  # stderr too, with the time of day

    # The default level, warning: none of those; the file is appended to, not replaced.
    with started(*args) as server:
        assert run("send", f"127.0.0.1:{server.listening['port']}", "hello").returncode == 0
    assert log_lines(log) == lines
    assert server.stderr == ""


def test_a_log_file_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "telex.log"
    one_line(run("serve", "--port", "0", "--no-store", "--log-file", missing), str(missing))
    result = run("serve", "--port", "0", "--no-store", "--log-level", "loud")
    assert result.returncode == 2 and "'loud' is not one of" in result.stderr


def _version() -> str:
    from telex import __version__

    return __version__


# -- shell completion ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _telex_completion telex"),
        ("zsh", "#compdef telex"),
        ("fish", "complete --no-files --command telex"),
    ],
)
def test_completion_prints_each_shells_script(shell: str, marker: str, tmp_path: Path) -> None:
    result = run("completion", shell)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout
    assert "_TELEX_COMPLETE" in result.stdout
    program = shutil.which(shell)
    if program is not None and shell != "bash":  # bash: really completing, below
        script = tmp_path / f"telex.{shell}"
        script.write_text(result.stdout)
        check = subprocess.run([program, "-n", str(script)], timeout=TIMEOUT, capture_output=True)
        assert check.returncode == 0, check.stderr  # -n: read it, run nothing
    help_text = run("completion", "--help").stdout
    assert f"telex completion {shell} >" in help_text  # how to install it


def test_completion_refuses_a_shell_it_does_not_know() -> None:
    result = run("completion", "tcsh")
    assert result.returncode == 2
    assert "'tcsh' is not one of" in result.stderr


def bash_completes(tmp_path: Path, *words: str) -> list[str]:
    """What a real bash offers for ``words`` (the last one being typed), with the script
    sourced and ``telex`` on the PATH, as click's documentation describes."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    script = tmp_path / "telex.bash"
    if not script.exists():
        script.write_text(run("completion", "bash").stdout)
    folder = tmp_path / "bin"  # telex as the console script is, on this interpreter
    command = folder / "telex"
    if not command.exists():
        folder.mkdir()
        command.write_text(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "from telex.cli import main; '
            f'main(prog_name=\'telex\')" "$@"\n'
        )
        command.chmod(0o755)
    program = (
        f"source {shlex.quote(str(script))}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_telex_completion telex\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = environment()
    env["PATH"] = f"{folder}:{env.get('PATH', '')}"
    result = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_really_completes_commands_options_and_choices(tmp_path: Path) -> None:
    assert bash_completes(tmp_path, "telex", "se") == ["send", "serve"]
    assert bash_completes(tmp_path, "telex", "serve", "--log-") == ["--log-level", "--log-file"]
    assert bash_completes(tmp_path, "telex", "serve", "--log-level", "") == [
        "debug",
        "info",
        "warning",
        "error",
    ]
    assert bash_completes(tmp_path, "telex", "completion", "") == ["bash", "zsh", "fish"]


# -- the systemd unit ---------------------------------------------------------------------


def block(after: str, language: str) -> str:
    """The first ```language block of docs/operations.md after the line ``after``."""
    text = DOC.read_text()
    start = text.index(after)
    match = re.compile(rf"^```{language}\n(.*?)^```$", re.M | re.S).search(text, start)
    assert match, f"no {language} block after {after!r} in {DOC}"
    return match[1]


def test_the_systemd_unit_stops_cleanly_on_sigterm_within_its_grace(
    tmp_path: Path, certificate: Path, token: Path
) -> None:
    unit = block("`/etc/systemd/system/telex.service`:", "ini")
    service = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )
    assert service["KillSignal"] == "SIGTERM"
    grace = float(service["TimeoutStopSec"])
    assert "StandardInput" not in service  # /dev/null, systemd's default
    argv = shlex.split(service["ExecStart"])
    assert argv[1:] == ["serve", "--config", "/etc/telex/telex.toml"]

    # The documented config file, its folders moved here and on loopback: still valid TOML
    # with the same keys, and with the certificate and token it names.
    etc, lib, logs = tmp_path / "etc", tmp_path / "lib", tmp_path / "log"
    for folder in (etc, lib, logs):
        folder.mkdir()
    text = block("`/etc/telex/telex.toml`:", "toml")
    assert 'host = "0.0.0.0"' in text and "port = 7777" in text
    text = text.replace('host = "0.0.0.0"', 'host = "127.0.0.1"').replace("port = 7777", "port = 0")
    text = text.replace("/etc/telex/", f"{etc}/").replace("/var/lib/telex/", f"{lib}/")
    text = text.replace("/var/log/telex/", f"{logs}/")
    config = etc / "telex.toml"
    config.write_text(text)
    for suffix in (".pem", ".key"):
        shutil.copy(certificate.with_suffix(suffix), etc / f"server{suffix}")
    shutil.copy(token, etc / "token")

    command = [*TELEX, *argv[1:-1], str(config)]  # ExecStart, this telex and this file
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,  # as systemd gives it
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
        cwd="/",  # systemd's working directory
    )
    try:
        assert process.stdout is not None
        first = read_line(process.stdout)
        match = re.match(r"telex \S+ listening on 127\.0\.0\.1:(\d+) ", first)
        assert match, first
        address = f"127.0.0.1:{match[1]}"
        sent = run("send", address, "--insecure", "--token-file", etc / "token", "hello")
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith("ack 1:")

        began = time.monotonic()
        process.send_signal(signal.SIGTERM)  # systemctl stop
        out, err = process.communicate(timeout=grace)
        took = time.monotonic() - began
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    assert took < grace
    assert re.search(r"^stopped: 1 messages acknowledged", out, re.M), out
    assert "Traceback" not in err
    texts = [text for *_, text in log_lines(logs / "telex.log")]
    assert texts[-2:] == ["stopping (SIGTERM)", "stopped"]
    assert (lib / "telex.db").exists()
    with socket.socket() as probe:  # the port is free again, as a restart would bind it
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (TIME_WAIT is fine)
        probe.bind(("127.0.0.1", int(match[1])))
