"""docs/cluster.md run for real: its client commands against two `telex serve` on one
PostgreSQL, their output as the document shows it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.cli.test_cli import listening, serve, telex
from tests.conftest import TIMEOUT

DOC = Path(__file__).resolve().parents[2] / "docs" / "cluster.md"


def tour() -> list[tuple[str, list[str]]]:
    """The commands of the console block after "Clients list both addresses", each
    with the output lines the document shows under it."""
    text = DOC.read_text()
    block = re.search(r"Clients list both addresses.*?```console\n(.*?)```", text, re.S)
    assert block, "docs/cluster.md has no client tour"
    steps: list[tuple[str, list[str]]] = []
    for line in block.group(1).splitlines():
        if line.startswith("$ "):
            steps.append((line[2:].split("  #")[0].strip(), []))
        else:
            steps[-1][1].append(line)
    return steps


def test_the_client_tour_of_docs_cluster_prints_what_it_shows(postgres_url: str) -> None:
    steps = tour()
    commands = [command for command, _ in steps]
    assert [c.split()[1] for c in commands] == ["listen", "send", "log"]
    with serve("--db", postgres_url, "-q") as first, serve("--db", postgres_url, "-q") as second:

        def real(command: str) -> list[str]:
            words = command.replace("127.0.0.1:7777", first.address)
            words = words.replace("127.0.0.1:7778", second.address)
            words = words.replace("postgresql://telex@127.0.0.1/telex", postgres_url)
            return words.split()[1:]  # without "telex"

        _, address, *options = real(commands[0])
        with listening(address, *options, "--count", "1", banner="listening as bob") as listener:
            sent = telex(*[w.strip('"') for w in real(commands[1])])
            assert sent.returncode == 0, sent.stderr
            assert sent.stdout.splitlines() == steps[1][1]
            out, _ = listener.communicate(timeout=TIMEOUT)
            assert listener.returncode == 0
            assert "hello" in out
        logged = telex(*real(commands[2]))
        assert logged.returncode == 0, logged.stderr
        assert "hello" in logged.stdout
        first.stop()
        second.stop()


def test_listen_with_several_addresses_moves_on_when_its_server_stops(postgres_url: str) -> None:
    """A server that stops says goodbye; `telex listen` given the cluster's addresses
    goes on with the next, where its name and outbox follow it."""
    with serve("--db", postgres_url, "-q") as first, serve("--db", postgres_url, "-q") as second:
        addresses = f"{first.address},{second.address}"
        options = ("--name", "bob", "--count", "2")
        with listening(addresses, *options, banner="listening as bob") as listener:
            assert telex("send", first.address, "--to", "bob", "before").returncode == 0
            code, _ = first.stop()  # SIGTERM: goodbye to bob
            assert code == 0
            sent = telex("send", second.address, "--to", "bob", "after")
            assert sent.returncode == 0, sent.stderr
            out, err = listener.communicate(timeout=TIMEOUT)
        second.stop()
    assert listener.returncode == 0, err
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["before", "after"]
