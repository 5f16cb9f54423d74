"""The telex command, run as a user runs it, against real peers: netcat, socat, sockets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import pytest

from ..conftest import TIMEOUT

TELEX = [sys.executable, "-m", "telex"]


def need(tool: str) -> str:
    """The path of a real peer; missing is a failure where CI asks for them all."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("TELEX_REQUIRE_PEERS"):
            pytest.fail(f"{tool} is not installed")
        pytest.skip(f"{tool} is not installed (apt-get install netcat-openbsd socat tmux openssl)")
    return path


def read_line(stream: IO[str], timeout: float = TIMEOUT) -> str:
    """One line from a child's output, or fail after ``timeout``."""
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        pytest.fail("no line from the process in time")
    return result[0]


class Serve:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        assert process.stdout is not None
        self.stdout = process.stdout
        self.port = json.loads(read_line(self.stdout))["port"]
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        self.process.stdin = None  # communicate() must not touch it again
        out, _ = self.process.communicate(timeout=TIMEOUT)
        return self.process.returncode, out


def temp_db() -> str:
    """A store of its own for each server a test starts (removed with the test run)."""
    return os.path.join(tempfile.mkdtemp(prefix="telex-test-"), "telex.db")


@contextmanager
def serve(*options: str) -> Iterator[Serve]:
    if "--db" not in options and "--no-store" not in options:
        options = ("--db", temp_db(), *options)
    process = subprocess.Popen(
        [*TELEX, "serve", "--port", "0", "--json", *options],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield Serve(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


def telex(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TELEX, *args], input=stdin, capture_output=True, text=True, timeout=TIMEOUT * 3
    )


def records(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_send_gets_acknowledgments_and_the_server_prints_them() -> None:
    with serve() as server:
        result = telex("send", server.address, "hello", "wörld")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "ack 1: received (5 bytes)\nack 2: received (6 bytes)\n"
        code, out = server.stop()
    assert code == 0
    lines = records(out)
    messages = [(r["id"], r.get("text")) for r in lines if r["event"] == "message"]
    assert messages == [(1, "hello"), (2, "wörld")]
    assert lines[-1]["event"] == "stopped"
    assert lines[-1]["accepted"] == 2


def test_stdin_lines_are_pipelined_and_all_acknowledged() -> None:
    lines = "".join(f"{i}\n" for i in range(1, 10001))
    with serve("--quiet") as server:
        result = telex("send", server.address, "-", stdin=lines)
        assert result.returncode == 0, result.stderr
        acks = result.stdout.splitlines()
        assert len(acks) == 10000
        assert acks[-1] == "ack 10000: received (5 bytes)"
        _, out = server.stop()
    assert records(out)[-1]["accepted"] == 10000


def test_a_pipe_with_no_message_reads_stdin_and_json_output() -> None:
    with serve("--quiet") as server:
        result = telex("send", server.address, "--json", stdin="one\ntwo\n")
    assert result.returncode == 0, result.stderr
    assert records(result.stdout) == [
        {"event": "ack", "id": i, "to": None, "status": "ok", "outcome": "acknowledged",
         "away": False, "reply": "received", "bytes": 3}
        for i in (1, 2)
    ]  # fmt: skip


def test_rejected_messages_exit_1() -> None:
    with serve("--quiet", "--max-message-size", "8") as server:
        result = telex("send", server.address, "short", "much too long for it", "ok")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "ack 1: received (5 bytes)",
        "rejected 2: message of 20 bytes is over the limit of 8",
        "ack 3: received (2 bytes)",
    ]


def one_clear_line(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert text in result.stderr


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_closed_port_or_a_mistyped_host_is_one_line_and_exit_3() -> None:
    one_clear_line(telex("send", f"127.0.0.1:{closed_port()}", "hi"), 3, "connection refused")
    one_clear_line(telex("send", "no-such-host.invalid:7777", "hi"), 3, "cannot resolve host")


def test_usage_errors_exit_2() -> None:
    assert telex("send", "127.0.0.1:notaport", "hi").returncode == 2
    assert telex("send", "127.0.0.1:99999", "hi").returncode == 2
    assert telex("frobnicate").returncode == 2


def test_connection_lost_with_messages_unacknowledged_exits_4() -> None:
    with serve("--quiet") as server:
        sender = subprocess.Popen(
            [*TELEX, "send", server.address, "-", "--retries", "2"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert sender.stdin is not None and sender.stdout is not None
        sender.stdin.write("first\n")
        sender.stdin.flush()
        assert read_line(sender.stdout).startswith("ack 1:")
        server.process.kill()
        server.process.wait(timeout=TIMEOUT)
        sender.stdin.write("second\n")
        sender.stdin.flush()
        _, err = sender.communicate(timeout=TIMEOUT)
    assert sender.returncode == 4
    assert "Traceback" not in err
    assert "gave up after 2 attempts to reconnect" in err
    assert "1 messages unacknowledged" in err


def test_serve_stops_on_sigterm_while_its_stdin_stays_open() -> None:
    """As under a supervisor that keeps a pipe open: the console's reader never ends,
    and must not keep the server from exiting."""
    process = subprocess.Popen(
        [*TELEX, "serve", "--port", "0", "--json", "--db", temp_db()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        assert json.loads(read_line(process.stdout))["event"] == "listening"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


def test_serve_stops_cleanly_on_sigterm_and_sigint() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        with serve() as server:
            server.process.send_signal(signum)
            out, err = server.process.communicate(timeout=TIMEOUT)
            assert server.process.returncode == 0, err
            assert records(out)[-1]["event"] == "stopped"


def test_serve_on_a_busy_port_is_one_line_and_exit_3() -> None:
    with serve() as server:
        result = telex("serve", "--port", str(server.port), "--db", temp_db())
    one_clear_line(result, 3, "cannot listen")


def test_demo_runs_and_exits_0() -> None:
    result = telex("demo")
    assert result.returncode == 0, result.stderr
    assert "client  ack 2: received" in result.stdout  # the server acknowledged the client
    assert "from demo-client: thanks, got it" in result.stdout  # and the other way


def test_help_and_version() -> None:
    result = telex("--help")
    assert result.returncode == 0
    for command in ("serve", "send", "demo"):
        assert command in result.stdout
    assert telex("--version").stdout.startswith("telex, version")


# -- plain-text peers -----------------------------------------------------------------------


def test_netcat_gets_an_answer_line_for_each_line() -> None:
    nc = need("nc")
    with serve() as server:
        result = subprocess.run(
            [nc, "-N", "127.0.0.1", str(server.port)],
            input="hello\nsecond line\n",
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.stdout == "ack 1: received\nack 2: received\n"
        _, out = server.stop()
    texts = [r.get("text") for r in records(out) if r["event"] == "message"]
    assert texts == ["hello", "second line"]


def test_socat_gets_answers() -> None:
    socat = need("socat")
    with serve("--quiet") as server:
        result = subprocess.run(
            [socat, "-t", str(TIMEOUT), "-", f"TCP:127.0.0.1:{server.port}"],
            input="from socat\n",
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 2,
        )
    assert result.stdout == "ack 1: received\n"


def test_the_classic_blocking_socket_script_gets_its_answer() -> None:
    with serve("--quiet") as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(b"hello server")  # no newline: the pause makes it a message
        assert sock.recv(1024) == b"ack 1: received\n"
        sock.sendall(b"and a line\n")
        assert sock.recv(1024) == b"ack 2: received\n"


@contextmanager
def classic_server(answer: bytes | None) -> Iterator[int]:
    """The classic first socket server: recv, then send an answer (or nothing)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]

    def run() -> None:
        with listener, listener.accept()[0] as conn:
            conn.settimeout(TIMEOUT)
            while data := conn.recv(1024):
                if answer is not None:
                    conn.sendall(answer + b" " + data.strip())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield port
    thread.join(TIMEOUT)


def test_send_text_to_a_plain_blocking_server() -> None:
    with classic_server(b"received:") as port:
        result = telex("send", "--text", f"127.0.0.1:{port}", "one", "two")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "answer 1: received: one\nanswer 2: received: two\n"


def test_send_text_with_no_answer_times_out() -> None:
    with classic_server(None) as port:
        result = telex("send", "--text", "--timeout", "0.5", f"127.0.0.1:{port}", "hello?")
    one_clear_line(result, 4, "no answer")


def wait_listening(port: int) -> None:
    """Wait until something listens on ``port``, without connecting (nc -l accepts once)."""
    deadline = time.monotonic() + TIMEOUT
    wanted = f":{port:04X} "
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as table:
            if any(wanted in line and line.split()[3] == "0A" for line in table):
                return
        time.sleep(0.01)
    pytest.fail(f"nothing listens on {port}")


def test_send_text_to_netcat_listening() -> None:
    nc = need("nc")
    port = closed_port()
    listener = subprocess.Popen(
        [nc, "-l", "127.0.0.1", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert listener.stdin is not None
    try:
        listener.stdin.write("pong\n")  # what the person at nc -l types back
        listener.stdin.flush()
        wait_listening(port)
        result = telex("send", "--text", f"127.0.0.1:{port}", "ping")
    finally:
        listener.kill()
        heard, _ = listener.communicate(timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "answer 1: pong\n"
    assert heard == "ping\n"


def test_a_progress_bar_on_a_terminal_for_long_input() -> None:
    import pty

    with serve("--quiet") as server:
        controller, terminal = pty.openpty()
        sender = subprocess.Popen(
            [*TELEX, "send", server.address, "-"],
            stdin=subprocess.PIPE,
            stdout=terminal,
            stderr=terminal,
        )
        os.close(terminal)
        assert sender.stdin is not None
        sender.stdin.write(b"".join(b"%d\n" % i for i in range(50_000)))
        sender.stdin.close()
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closes when the sender exits
                break
            if not chunk:
                break
            shown += chunk
        assert sender.wait(timeout=TIMEOUT) == 0
        os.close(controller)
    assert b"acknowledged" in shown and b"\x1b[" in shown  # a live, redrawn line
    assert shown.rstrip().endswith(b"50000 messages acknowledged, 0 rejected")


def test_a_reader_that_goes_away_stops_the_printing_not_the_sending() -> None:
    with serve("--quiet") as server:
        sender = subprocess.Popen(
            [*TELEX, "send", server.address, "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert sender.stdin is not None and sender.stdout is not None
        sender.stdin.write(b"".join(b"%d\n" % i for i in range(20_000)))
        sender.stdin.close()
        assert sender.stdout.readline() == b"ack 1: received (1 bytes)\n"
        sender.stdout.close()  # like `| head -1`
        assert sender.wait(timeout=TIMEOUT) == 0
        assert sender.stderr is not None
        with sender.stderr:
            err = sender.stderr.read()
        _, out = server.stop()
    assert err == b""
    assert records(out)[-1]["accepted"] == 20_000


# -- both directions, in scripts --------------------------------------------------------------


@contextmanager
def listening(
    address: str, *options: str, banner: str = "listening as"
) -> Iterator[subprocess.Popen[str]]:
    """``telex listen --json``, once the server has it (its banner, which must hold
    ``banner``, is on stderr)."""
    process = subprocess.Popen(
        [*TELEX, "listen", address, "--json", *options],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        assert banner in read_line(process.stderr)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


def test_send_to_a_listening_client_with_json() -> None:
    with serve("--quiet") as server, listening(server.address, "--name", "bot") as bot:
        result = telex("send", server.address, "--to", "bot", "--json", "deploy done")
        assert result.returncode == 0, result.stderr
        assert records(result.stdout) == [
            {
                "event": "ack",
                "id": 1,
                "to": "bot",
                "status": "ok",
                "outcome": "stored",
                "away": False,
                "reply": "",
                "bytes": 11,
            }
        ]
        assert bot.stdout is not None
        message = json.loads(read_line(bot.stdout))
        assert message["event"] == "message" and message["text"] == "deploy done"
        assert message["sender"].startswith("guest-")
        server.stop()  # the server says goodbye: listen exits 0
        assert bot.wait(timeout=TIMEOUT) == 0


def test_send_to_a_client_that_is_not_there() -> None:
    with serve("--quiet", "--no-store") as server:  # nowhere to keep it: not delivered
        result = telex("send", server.address, "--to", "nobody", "hello?")
    assert result.returncode == 1
    assert result.stdout == "rejected 1: no client named 'nobody' is connected\n"
    with serve("--quiet") as server:  # kept for when it connects
        result = telex("send", server.address, "--to", "nobody", "hello?")
    assert result.returncode == 0
    assert result.stdout == "stored 1 for nobody (6 bytes, not connected)\n"


def test_listen_exit_codes() -> None:
    one_clear_line(telex("listen", f"127.0.0.1:{closed_port()}"), 3, "connection refused")
    with serve("--quiet") as server, listening(server.address, "--retries", "1") as listener:
        server.process.kill()  # no goodbye: the connection is lost, and stays lost
        assert listener.wait(timeout=TIMEOUT) == 4
    with serve("--quiet") as server, listening(server.address) as listener:
        listener.send_signal(signal.SIGTERM)  # a supervisor stopping it: a normal end
        assert listener.wait(timeout=TIMEOUT) == 0
    with serve("--quiet") as server, listening(server.address, "--name", "bot") as listener:
        assert telex("send", server.address, "--to", "bot", "one").returncode == 0
        assert listener.stdout is not None
        read_line(listener.stdout)
        listener.send_signal(signal.SIGINT)  # Ctrl-C: 130, and how many arrived
        _, err = listener.communicate(timeout=TIMEOUT)
        assert listener.returncode == 130
        assert err.splitlines()[-1] == "telex: interrupted: 1 messages received"


def test_the_serve_console_reads_stdin_without_a_terminal() -> None:
    process = subprocess.Popen(
        [*TELEX, "serve", "--port", "0", "--json", "--db", temp_db()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    server = Serve(process)
    try:
        with listening(server.address, "--name", "bot") as bot:
            assert bot.stdout is not None
            process.stdin.write("@bot to you alone\neveryone hears this\n")
            process.stdin.close()  # the end of stdin ends the console, not the server
            first = json.loads(read_line(bot.stdout))
            second = json.loads(read_line(bot.stdout))
            assert (first["text"], first["sender"]) == ("to you alone", None)
            assert second["text"] == "everyone hears this"
            result = telex("send", server.address, "still serving")
            assert result.returncode == 0
        code, out = server.stop()
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0
    acks = [r for r in records(out) if r["event"] == "ack"]
    assert [(a["to"], a["status"]) for a in acks] == [("bot", "ok"), ("bot", "ok")]


def test_chat_without_a_terminal_sends_stdin_lines() -> None:
    with serve("--quiet") as server, listening(server.address, "--name", "bob") as bob:
        result = telex("chat", server.address, "--name", "alice", stdin="hi server\n@bob hi bob\n")
        assert result.returncode == 0, result.stderr
        assert "you #1: hi server" in result.stdout
        assert "✓ #1 server acknowledged: received" in result.stdout
        assert "… #2 stored for bob" in result.stdout  # bob's own ack comes as a receipt
        assert "acknowledged #2" not in result.stdout
        assert bob.stdout is not None
        assert json.loads(read_line(bob.stdout))["sender"] == "alice"


def test_log_shows_a_chat_session() -> None:
    db = temp_db()
    with serve("--quiet", "--db", db) as server, listening(server.address, "--name", "bob") as bob:
        chat = telex("chat", server.address, "--name", "alice", stdin="hi server\n@bob hello bob\n")
        assert chat.returncode == 0, chat.stderr
        assert bob.stdout is not None
        assert json.loads(read_line(bob.stdout))["text"] == "hello bob"
        result = telex("log", "--db", db)  # while the server runs
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].endswith("alice → server: hi server")
        assert lines[1].endswith("alice → bob: hello bob")
        records_ = records(telex("log", "--db", db, "--json", "--from", "alice", "-n", "1").stdout)
        assert [(r["sender"], r["recipient"], r["text"]) for r in records_] == [
            ("alice", "bob", "hello bob")
        ]
        assert records_[0]["delivered"] is not None
    assert telex("log", "--db", db, "--to", "nobody").stdout == ""
    one_clear_line(telex("log", "--db", temp_db()), 2, "no store at")


def test_log_follow_prints_messages_as_they_are_stored() -> None:
    db = temp_db()
    with serve("--quiet", "--db", db) as server:
        assert telex("send", server.address, "before").returncode == 0
        follower = subprocess.Popen(
            [*TELEX, "log", "--db", db, "--follow", "-n", "1", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert follower.stdout is not None
            assert json.loads(read_line(follower.stdout))["text"] == "before"
            assert telex("send", server.address, "after").returncode == 0
            assert json.loads(read_line(follower.stdout))["text"] == "after"
        finally:
            follower.send_signal(signal.SIGINT)
            follower.communicate(timeout=TIMEOUT)
        assert follower.returncode == 0


def test_send_waits_for_delivery_receipts() -> None:
    with serve("--quiet") as server, listening(server.address, "--name", "bob"):
        result = telex("send", server.address, "--to", "bob", "--wait-delivery", "hi", "there")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "stored 1 for bob (2 bytes)",
            "stored 2 for bob (5 bytes)",
            "delivered 1 to bob",
            "delivered 2 to bob",
        ]
        away = telex(
            "send", server.address, "--to", "carol", "--wait-delivery", "--timeout", "0.5", "x"
        )
    assert away.returncode == 4
    assert "1 deliveries not confirmed in time" in away.stderr
    assert telex("send", "127.0.0.1:1", "--wait-delivery", "x").returncode == 2


def test_a_line_over_the_limit_is_refused_and_the_rest_still_goes() -> None:
    """A 20 MB line (over 16 x the limit, which would end the connection): the client
    knows the server's limit from WELCOME, refuses that line by its number, sends on."""
    huge = "x" * (20 * 1024 * 1024)
    with serve("--quiet") as server:
        result = telex("send", server.address, "-", stdin=f"first\n{huge}\nlast\n")
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        "ack 1: received (5 bytes)",
        "rejected 2: message of 20971520 bytes is over the limit of 1048576",
        "ack 3: received (4 bytes)",
    ]
