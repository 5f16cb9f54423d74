"""ADDRESS as a comma list: the commands fail over between servers, through real processes."""

from __future__ import annotations

import collections
import signal
import subprocess
from pathlib import Path

import click
import pytest

from telex.cli.common import parse_addresses

from ..conftest import TIMEOUT
from ..server.test_faults import (
    TELEX,
    acks_of,
    lines_file,
    start_server,
    stored_records,
    wait_for,
    wait_for_rows,
)
from .test_cli import closed_port, one_clear_line, read_line, serve, telex

LINES = 20_000


def test_a_comma_list_is_each_part_parsed_as_one_address() -> None:
    assert parse_addresses("[::1]:7777,127.0.0.1:7778") == [("::1", 7777), ("127.0.0.1", 7778)]
    assert parse_addresses("a, b:9") == [("a", 7777), ("b", 9)]
    assert parse_addresses("8000") == [("127.0.0.1", 8000)]
    for bad in ("a:1,", ",a:1", "a:1,,b:2", "a:1,b:notaport", "a:1,http://b"):
        with pytest.raises(click.BadParameter):
            parse_addresses(bad)


def test_a_comma_list_with_an_empty_or_bad_part_is_a_usage_error() -> None:
    for bad in ("127.0.0.1:7777,", "127.0.0.1:7777,,127.0.0.1:7778", "127.0.0.1:1,b:99999"):
        for command in (["send", bad, "hi"], ["listen", bad], ["chat", bad], ["ping", bad]):
            result = telex(*command)
            assert result.returncode == 2, (command, result)
            assert "Traceback" not in result.stderr


def test_the_first_address_closed_the_second_up_connects_to_the_second() -> None:
    with serve("--quiet") as server:
        addresses = f"127.0.0.1:{closed_port()},{server.address}"
        result = telex("send", addresses, "hello")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "ack 1: received (5 bytes)\n"
        pinged = telex("ping", addresses, "-c", "1", "-i", "0")
        assert pinged.returncode == 0, pinged.stderr
        assert f"ping {server.address}" in pinged.stdout


def test_both_closed_is_one_line_naming_both_and_exit_3() -> None:
    first, second = closed_port(), closed_port()
    result = telex("send", f"127.0.0.1:{first},127.0.0.1:{second}", "hi")
    one_clear_line(result, 3, "connection refused")
    assert f"127.0.0.1:{first}" in result.stderr
    assert f"127.0.0.1:{second}" in result.stderr


def test_send_text_takes_one_address() -> None:
    result = telex("send", "--text", "127.0.0.1:1,127.0.0.1:2", "hi")
    assert result.returncode == 2
    assert "--text takes one ADDRESS" in result.stderr


def test_kill_9_mid_send_then_the_store_on_another_port_stores_each_line_once(
    tmp_path: Path,
) -> None:
    """One store, served first on port A, then (after kill -9) on port B: the sender,
    given both, resumes its session on B and every line is stored exactly once."""
    port_a, port_b = closed_port(), closed_port()
    db = tmp_path / "telex.db"
    lines = lines_file(tmp_path, "f", LINES)
    server = start_server(port_a, db)
    with lines.open("rb") as stdin, lines.with_suffix(".acks").open("wb") as stdout:
        sender = subprocess.Popen(
            [*TELEX, "send", f"127.0.0.1:{port_a},127.0.0.1:{port_b}", "-", "--retries", "60"],
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
        )
    try:
        wait_for(lambda: lines.with_suffix(".acks").stat().st_size > 0, "a first ack")
        wait_for_rows(db, LINES // 3)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=TIMEOUT)
        server = start_server(port_b, db)  # the same store, another port
        _, err = sender.communicate(timeout=TIMEOUT * 6)
    finally:
        for process in (server, sender):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=TIMEOUT)
    assert sender.returncode == 0, err.decode()
    assert len(acks_of(lines)) == LINES  # every line acknowledged
    counts = collections.Counter(record.body for record in stored_records(db))
    assert set(counts) == {f"f-{i}" for i in range(LINES)}  # nothing lost
    assert set(counts.values()) == {1}  # nothing twice


def test_listen_follows_to_the_next_address_and_says_where(tmp_path: Path) -> None:
    port_a, port_b = closed_port(), closed_port()
    db = tmp_path / "telex.db"
    server = start_server(port_a, db)
    listener = subprocess.Popen(
        [*TELEX, "listen", f"127.0.0.1:{port_a},127.0.0.1:{port_b}", "--name", "bob",
         "--count", "2", "--retries", "60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert listener.stderr is not None and listener.stdout is not None
        assert f"on 127.0.0.1:{port_a}" in read_line(listener.stderr)
        sent = telex("send", f"127.0.0.1:{port_a}", "--to", "bob", "one")
        assert sent.returncode == 0, sent.stderr
        assert "one" in read_line(listener.stdout)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=TIMEOUT)
        server = start_server(port_b, db)
        while f"connected to 127.0.0.1:{port_b}" not in (line := read_line(listener.stderr)):
            assert "gave up" not in line, line
        sent = telex("send", f"127.0.0.1:{port_a},127.0.0.1:{port_b}", "--to", "bob", "two")
        assert sent.returncode == 0, sent.stderr
        assert "two" in read_line(listener.stdout)
        assert listener.wait(timeout=TIMEOUT) == 0
    finally:
        for process in (server, listener):
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=TIMEOUT)


async def test_chat_says_where_it_failed_over_to_and_its_status_line_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from telex import Server
    from telex.cli.console import ChatSession, Output

    db = tmp_path / "telex.db"
    port_a, port_b = closed_port(), closed_port()
    first = Server(port=port_a, store=db)
    await first.start()
    session = ChatSession(
        [("127.0.0.1", port_a), ("127.0.0.1", port_b)],
        Output(False),
        name="alice",
        timeout=TIMEOUT,
        connect_timeout=TIMEOUT,
        retries=50,
        reconnect_delay=0.05,
    )
    back = asyncio.Event()
    told = session.client.on_state
    assert told is not None

    def on_state(state: str) -> None:
        told(state)
        if state.startswith("connected to"):
            back.set()

    session.client.on_state = on_state
    await session.start()
    try:
        assert f"@ 127.0.0.1:{port_a} · connected" in session.status()
        await first.close()
        async with Server(port=port_b, store=db):
            async with asyncio.timeout(TIMEOUT):
                await back.wait()
            assert f"@ 127.0.0.1:{port_b} · connected" in session.status()
            assert session.state == f"connected to 127.0.0.1:{port_b}"
            await session.client.close()
    finally:
        await session.client.close()
    out = capsys.readouterr().out
    assert out.count("reconnecting") == 1, out  # said once, not for each address tried
    assert f"-- reconnected to 127.0.0.1:{port_b}" in out
