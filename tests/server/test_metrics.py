"""Live figures: the broker's counters, STATS over the protocol, telex stats, and the
Prometheus endpoint scraped over real HTTP and read with prometheus-client's parser."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import telex
from telex.security import Users
from telex.server import Server

from ..cli.test_cli import TELEX, closed_port, read_line, temp_db
from ..cli.test_cli import telex as run_telex
from ..conftest import TIMEOUT


async def test_stats_count_what_happened(tmp_path: Path) -> None:
    limits = telex.Limits(max_message_size=16)
    async with (
        Server(port=0, store=tmp_path / "s.db", limits=limits) as server,
        telex.connect("127.0.0.1", server.port, name="alice") as alice,
    ):
        for text in ("one", "two"):
            assert (await alice.send(text)).ok
        assert not (await alice.send_nowait("x" * 17)).ok  # too large: refused by the client
        assert (await alice.send("for bob", to="bob")).stored  # bob is away: queued
        values = await alice.stats()
    assert values["accepted"] == 3  # two messages and one stored for bob
    assert values["connections"] == 1 and values["connections_open"] == 1
    assert values["connections_by_mode"]["framed"] == 1
    assert values["queued"]["bob"]["count"] == 1
    assert values["commits"] >= 1 and values["commit_seconds"]["count"] >= 1
    assert values["bytes_in"] > 0 and values["bytes_out"] > 0
    assert values["commit_batch_size"]["buckets"]["+Inf"] == values["commit_batch_size"]["count"]


async def test_the_server_counts_rejections_by_status() -> None:
    limits = telex.Limits(max_message_size=16)
    async with (
        Server(port=0, limits=limits) as server,
        telex.connect("127.0.0.1", server.port) as client,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"a line longer than sixteen bytes\n")  # a text peer: the server refuses
        async with asyncio.timeout(TIMEOUT):
            assert (await reader.readline()).startswith(b"rejected 1:")
        writer.close()
        assert not (await client.send_nowait("to nobody", to="nobody")).ok
        values = await client.stats()
    assert values["rejected"] == 2
    assert values["rejected_by"] == {"too_large": 1, "not_delivered": 1}


async def test_stats_are_for_holders_of_the_servers_token(tmp_path: Path) -> None:
    users = Users(tmp_path / "users")
    users.add("alice", "alice's token")
    token = "the server's token"
    async with Server(port=0, token=token, users=Users(tmp_path / "users")) as server:
        async with telex.connect("127.0.0.1", server.port, name="dave", token=token) as holder:
            assert "accepted" in await holder.stats()
        async with telex.connect(
            "127.0.0.1", server.port, name="alice", token="alice's token"
        ) as user:
            with pytest.raises(telex.TelexError, match="refused: stats are for"):
                await user.stats()
            assert (await user.send("still fine")).ok  # a refusal ends nothing


def test_telex_stats_and_the_prometheus_endpoint() -> None:
    metrics_port = closed_port()
    process = subprocess.Popen(
        [*TELEX, "serve", "--port", "0", "--json", "--quiet", "--db", temp_db(),
         "--max-message-size", "8", "--metrics", f"127.0.0.1:{metrics_port}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        address = f"127.0.0.1:{json.loads(read_line(process.stdout))['port']}"
        sent = run_telex("send", address, "one", "two")
        assert sent.returncode == 0, sent.stderr
        with socket.create_connection(("127.0.0.1", int(address.split(":")[1]))) as text_peer:
            text_peer.sendall(b"far too long\n")  # a text peer's line over the limit
            text_peer.settimeout(TIMEOUT)
            assert text_peer.recv(100).startswith(b"rejected 1:")
        shown = run_telex("stats", address)
        assert shown.returncode == 0, shown.stderr
        assert "2 acknowledged, 1 rejected (too_large 1)" in shown.stdout
        as_json = json.loads(run_telex("stats", address, "--json").stdout)
        assert as_json["event"] == "stats" and as_json["values"]["accepted"] == 2
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            assert response.status == 200
            text = response.read().decode()
    finally:
        process.terminate()
        process.communicate(timeout=TIMEOUT)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("telex_accepted_total", ())] == 2
    assert samples[("telex_rejected_total", (("status", "too_large"),))] == 1
    assert samples[("telex_connections_total", ())] >= 2
    assert ("telex_commit_seconds_bucket", (("le", "+Inf"),)) in samples
    assert samples[("telex_commit_seconds_count", ())] >= 1
    assert ("telex_connections_open", (("mode", "framed"),)) in samples


def test_stats_of_a_closed_port_is_one_line_and_exit_3() -> None:
    result = run_telex("stats", f"127.0.0.1:{closed_port()}")
    assert result.returncode == 3 and len(result.stderr.splitlines()) == 1


def test_the_serve_console_shows_stats() -> None:
    process = subprocess.Popen(
        [*TELEX, "serve", "--port", "0", "--json", "--no-store"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        read_line(process.stdout)  # listening
        process.stdin.write("/stats\n")
        process.stdin.flush()
        shown = json.loads(read_line(process.stdout))
        assert shown["event"] == "stats" and shown["values"]["accepted"] == 0
    finally:
        process.kill()
        process.communicate(timeout=TIMEOUT)


def test_every_metric_is_documented() -> None:
    from telex.server.metrics import METRICS

    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    for name, (kind, _) in METRICS.items():
        prometheus = f"telex_{name}_total" if kind == "counter" else f"telex_{name}"
        assert f"| `{name}` | `{prometheus}` | {kind} |" in doc, name


def test_stats_watch_refreshes_until_ctrl_c() -> None:
    process = subprocess.Popen(
        [*TELEX, "serve", "--port", "0", "--json", "--no-store"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        address = f"127.0.0.1:{json.loads(read_line(process.stdout))['port']}"
        watcher = subprocess.Popen(
            [*TELEX, "stats", address, "--watch", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert watcher.stdout is not None
        firsts = [read_line(watcher.stdout) for _ in range(12)]  # two refreshes of 5-6 lines
        time.sleep(0.1)
        watcher.send_signal(signal.SIGINT)
        watcher.communicate(timeout=TIMEOUT)
        assert watcher.returncode == 0
        assert sum(line.startswith("telex on ") for line in firsts) >= 2
    finally:
        process.kill()
        process.communicate(timeout=TIMEOUT)
