"""The everyday commands, run as a user runs them against a real ``telex serve``:
``telex ping``, ``telex bench``, ``telex listen --count`` and ``telex send --file``."""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from telex import Client
from telex.core import frames
from telex.core.frames import PREAMBLE, FrameType
from telex.exceptions import TelexTimeout

from ..conftest import TIMEOUT
from .test_cli import TELEX, closed_port, listening, one_clear_line, read_line, records, serve
from .test_json import check, schema

REPLY = re.compile(r"reply from 127\.0\.0\.1:\d+: seq=(\d+) time=\d+(\.\d+)? ms")
SUMMARY = re.compile(
    r"(\d+) sent, (\d+) answered, (\d+)% lost; "
    r"rtt min/avg/max/mdev = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms"
)


def telex(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Like test_cli.telex, with stdin as bytes (files and stdin that are not text)."""
    result = subprocess.run([*TELEX, *args], input=stdin, capture_output=True, timeout=TIMEOUT * 3)
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


# -- ping ---------------------------------------------------------------------------------------


def test_ping_prints_a_line_per_round_trip_and_a_summary() -> None:
    with serve("--quiet", "--no-store") as server:
        result = telex("ping", server.address, "-c", "3", "-i", "0.05")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"ping {server.address} (telex/")
    replies = [REPLY.fullmatch(line) for line in lines[1:4]]
    assert all(replies), lines
    assert [int(match[1]) for match in replies if match] == [1, 2, 3]
    assert lines[4] == f"--- {server.address} ping ---"
    summary = SUMMARY.fullmatch(lines[5])
    assert summary is not None, lines[5]
    assert summary.groups() == ("3", "3", "0")
    assert len(lines) == 6 and result.stderr == ""


def test_ping_json_is_what_the_document_says() -> None:
    with serve("--quiet", "--no-store") as server:
        result = telex("ping", server.address, "-c", "2", "-i", "0", "--json")
    assert result.returncode == 0, result.stderr
    events = schema()
    lines = records(result.stdout)
    for record in lines:
        check(record, events)
    assert [(r["event"], r.get("seq")) for r in lines] == [
        ("pong", 1),
        ("pong", 2),
        ("summary", None),
    ]
    summary = lines[-1]
    assert (summary["sent"], summary["answered"], summary["lost"]) == (2, 2, 0)
    assert summary["min_us"] <= summary["avg_us"] <= summary["max_us"]  # type: ignore[operator]


def test_ping_to_a_closed_port_is_one_line_and_exit_3() -> None:
    result = telex("ping", f"127.0.0.1:{closed_port()}", "-c", "1")
    one_clear_line(result, 3, "connection refused")
    assert result.stdout == ""


@contextmanager
def silent_server() -> Iterator[int]:
    """A server that finishes the telex handshake and then never answers anything."""
    welcome = PREAMBLE + frames.json_frame(FrameType.WELCOME, {"version": 1, "agent": "silent"})
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    done = threading.Event()

    def serve_one() -> None:
        try:
            peer, _ = listener.accept()
        except OSError:
            return
        with peer:
            peer.settimeout(0.1)
            peer.sendall(welcome)
            while not done.is_set():
                try:
                    if not peer.recv(65536):
                        return
                except TimeoutError:
                    continue
                except OSError:
                    return

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        listener.close()
        thread.join(TIMEOUT)


def test_ping_without_pongs_counts_them_lost_and_exits_1() -> None:
    with silent_server() as port:
        result = telex("ping", f"127.0.0.1:{port}", "-c", "2", "-i", "0", "--timeout", "0.2")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1:3] == [
        f"no reply from 127.0.0.1:{port}: seq={seq} (no PONG within 0.2 s)" for seq in (1, 2)
    ]
    assert lines[-1] == "2 sent, 0 answered, 100% lost"


def test_ping_ctrl_c_prints_the_summary_and_exits_130() -> None:
    with serve("--quiet", "--no-store") as server:
        process = subprocess.Popen(
            [*TELEX, "ping", server.address, "-i", "0.05"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            read_line(process.stdout)  # the banner
            assert REPLY.fullmatch(read_line(process.stdout).rstrip("\n"))
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=TIMEOUT)
    assert process.returncode == 130, err
    summary = SUMMARY.fullmatch(out.splitlines()[-1])
    assert summary is not None, out
    assert summary[3] == "0"  # a PING cut short by Ctrl-C is not counted as lost


def test_ping_exits_4_with_the_summary_when_the_server_goes() -> None:
    with serve("--quiet", "--no-store") as server:
        process = subprocess.Popen(
            [*TELEX, "ping", server.address, "-i", "0.05"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            read_line(process.stdout)
            read_line(process.stdout)
            server.stop()
            out, err = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=TIMEOUT)
    assert process.returncode == 4, err
    assert SUMMARY.fullmatch(out.splitlines()[-1]), out
    assert len(err.splitlines()) == 1 and err.startswith("telex: "), err


# -- bench --------------------------------------------------------------------------------------


def test_bench_prints_the_rate_and_latency_percentiles() -> None:
    with serve("--quiet", "--no-store") as server:
        result = telex("bench", server.address, "--messages", "2000", "--warmup", "200")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"bench {server.address}: 2000 messages, 128 bytes each, window 1000, after 200 to warm up"
    )
    assert re.fullmatch(
        r"2000 messages acknowledged in [\d.]+ s: [\d,]+ msgs/s, [\d,.]+ MB/s", lines[1]
    ), lines[1]
    assert re.fullmatch(
        r"ack latency \(send to ack\): p50 [\d.]+ ms, p90 [\d.]+ ms, p99 [\d.]+ ms, "
        r"max [\d.]+ ms",
        lines[2],
    ), lines[2]
    assert len(lines) == 3


def test_bench_json_is_one_bench_event_and_the_server_got_every_message() -> None:
    with serve("--quiet") as server:
        result = telex(
            "bench", server.address, "--messages", "500", "--size", "64", "--window", "50",
            "--warmup", "100", "--json",
        )  # fmt: skip
        _, out = server.stop()
    assert result.returncode == 0, result.stderr
    (bench,) = records(result.stdout)
    check(bench, schema())
    assert (bench["messages"], bench["size"], bench["window"], bench["warmup"]) == (
        500,
        64,
        50,
        100,
    )
    assert bench["rejected"] == 0
    order = [bench[f"{name}_us"] for name in ("p50", "p90", "p99", "max")]
    assert order == sorted(order)  # type: ignore[type-var]
    assert records(out)[-1]["accepted"] == 600  # the warm-up and the run


def test_bench_for_a_time_and_a_size_over_the_limit() -> None:
    with serve("--quiet", "--no-store", "--max-message-size", "100") as server:
        timed = telex("bench", server.address, "--seconds", "0.3", "--size", "100")
        too_large = telex("bench", server.address, "--messages", "10", "--size", "101")
    assert timed.returncode == 0, timed.stderr
    assert timed.stdout.startswith(f"bench {server.address}: for 0.3 s, 100 bytes each")
    one_clear_line(too_large, 1, "--size 101 is over the server's limit of 100 bytes")


# -- listen --count -----------------------------------------------------------------------------


def test_listen_count_exits_0_after_n_and_leaves_the_rest_for_later() -> None:
    with serve("--quiet") as server:
        with listening(server.address, "--name", "bot", "--count", "2") as bot:
            sent = telex("send", server.address, "--to", "bot", "one", "two", "three")
            assert sent.returncode == 0, sent.stderr
            assert bot.wait(timeout=TIMEOUT) == 0
            assert bot.stdout is not None
            got = [json.loads(line)["text"] for line in bot.stdout.read().splitlines()]
        assert got == ["one", "two"]
        # The third was not printed, so not acknowledged: the server kept it for bot.
        with listening(server.address, "--name", "bot", "--count", "1") as again:
            assert again.wait(timeout=TIMEOUT) == 0
            assert again.stdout is not None
            assert json.loads(again.stdout.read())["text"] == "three"


def test_listen_count_acknowledges_each_one_it_printed() -> None:
    with serve("--quiet") as server, listening(server.address, "--name", "bot", "-c", "2") as bot:
        sent = telex("send", server.address, "--to", "bot", "--wait-delivery", "one", "two")
        assert bot.wait(timeout=TIMEOUT) == 0
    assert sent.returncode == 0, sent.stderr
    assert [line for line in sent.stdout.splitlines() if line.startswith("delivered")] == [
        "delivered 1 to bot",
        "delivered 2 to bot",
    ]


# -- send --file --------------------------------------------------------------------------------


def sent_bodies(out: str) -> list[str | bytes]:
    """What the server printed it received, as text or bytes."""
    return [
        r["text"] if "text" in r else base64.b64decode(str(r["text_base64"]))  # type: ignore[misc]
        for r in records(out)
        if r["event"] == "message"
    ]


def test_send_file_sends_each_file_whole_as_one_message(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("first line\nsecond line, café\n")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)))
    with serve() as server:
        result = telex("send", server.address, "--file", str(text), "--file", str(binary))
        piped = telex("send", server.address, "--file", "-", stdin=b"all of\nstdin\n")
        _, out = server.stop()
    assert result.returncode == 0, result.stderr
    size = len(text.read_bytes())
    assert result.stdout == f"ack 1: received ({size} bytes)\nack 2: received (256 bytes)\n"
    assert piped.returncode == 0, piped.stderr
    assert sent_bodies(out) == [text.read_text(), bytes(range(256)), "all of\nstdin\n"]


def test_send_file_that_cannot_be_read_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with serve("--quiet") as server:
        missing = telex("send", server.address, "--file", str(tmp_path / "missing.txt"))
        folder = telex("send", server.address, "--file", str(tmp_path))
        _, out = server.stop()
    one_clear_line(missing, 2, f"cannot read {tmp_path / 'missing.txt'}: No such file")
    one_clear_line(folder, 2, f"cannot read {tmp_path}: Is a directory")
    assert records(out)[-1]["connections"] == 0  # nothing was sent


def test_send_file_over_the_limit_is_rejected_like_any_message(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_text("x" * 200)
    small = tmp_path / "small.txt"
    small.write_text("ok")
    with serve("--quiet", "--no-store", "--max-message-size", "100") as server:
        result = telex("send", server.address, "--file", str(big), "--file", str(small))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "rejected 1: message of 200 bytes is over the limit of 100",
        "ack 2: received (2 bytes)",
    ]


# -- the library call under telex ping ----------------------------------------------------------


def test_the_clients_ping_returns_the_round_trip_in_seconds() -> None:
    with serve("--quiet", "--no-store") as server, Client("127.0.0.1", server.port) as client:
        trips = [client.ping(timeout=TIMEOUT) for _ in range(3)]
        assert all(0 < trip < TIMEOUT for trip in trips)
        assert client.send("still works").ok
    with silent_server() as port:
        silent = Client("127.0.0.1", port)
        with pytest.raises(TelexTimeout):  # a server that does not answer: a timeout
            silent.ping(timeout=0.1)
        silent.close()
