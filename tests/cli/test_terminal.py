"""telex serve and telex chat in a real terminal (tmux): typed on each side, seen on the other."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import TIMEOUT
from .test_cli import closed_port, need, temp_db


class Terminal:
    """A tmux server of our own, with one window a program."""

    def __init__(self) -> None:
        self.tmux = need("tmux")
        self.socket = f"telex-test-{os.getpid()}-{time.monotonic_ns()}"

    def run(self, *args: str) -> str:
        command = [self.tmux, "-L", self.socket, *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def start(self, window: str, *command: str) -> None:
        line = " ".join(shlex.quote(part) for part in command)
        if window == "serve":
            self.run("new-session", "-d", "-s", "t", "-n", window, "-x", "150", "-y", "40", line)
        else:
            self.run("new-window", "-d", "-t", "t", "-n", window, line)
        self.run("set-option", "-t", "t", "remain-on-exit", "on")

    def screen(self, window: str) -> str:
        return self.run("capture-pane", "-p", "-t", f"t:{window}")

    def type(self, window: str, text: str) -> None:
        self.run("send-keys", "-t", f"t:{window}", "-l", text)
        self.run("send-keys", "-t", f"t:{window}", "Enter")

    def wait_for(self, window: str, text: str) -> str:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            screen = self.screen(window)
            if text in screen:
                return screen
            time.sleep(0.05)
        pytest.fail(f"{text!r} did not appear in {window}:\n{self.screen(window)}")

    def close(self) -> None:
        subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    try:
        yield term
    finally:
        term.close()


TELEX = [sys.executable, "-m", "telex"]


def test_serve_and_chat_talk_both_ways(terminal: Terminal) -> None:
    port = str(closed_port())
    db = temp_db()
    terminal.start("serve", *TELEX, "serve", "--port", port, "--db", db)
    terminal.wait_for("serve", f"listening on 127.0.0.1:{port}")
    terminal.wait_for("serve", f"messages stored in {db}")
    terminal.start("chat", *TELEX, "chat", f"127.0.0.1:{port}", "--name", "alice")
    terminal.wait_for("serve", "alice joined")
    terminal.wait_for("chat", "alice @ 127.0.0.1")  # the status line

    terminal.type("chat", "hi server")
    terminal.wait_for("serve", "alice #1 hi server")
    terminal.wait_for("chat", "✓ #1 server acknowledged: received")

    terminal.type("serve", "@alice the build is green")
    terminal.wait_for("chat", "[server] the build is green")
    terminal.wait_for("serve", "delivered to alice")  # alice's own ack, numbered as stored

    terminal.type("serve", "everyone: lunch")
    terminal.wait_for("chat", "[server] everyone: lunch")

    terminal.type("serve", "/who")
    terminal.wait_for("serve", "alice                since")

    terminal.type("chat", "/quit")
    terminal.wait_for("serve", "alice left")
    terminal.type("serve", "/quit")
    terminal.wait_for("serve", "stopped: 1 messages acknowledged")


def test_chat_between_two_clients_and_reconnect(terminal: Terminal) -> None:
    port = str(closed_port())
    db = temp_db()
    terminal.start("serve", *TELEX, "serve", "--port", port, "--db", db)
    terminal.wait_for("serve", "listening")
    terminal.start("alice", *TELEX, "chat", f"127.0.0.1:{port}", "--name", "alice")
    terminal.start("bob", *TELEX, "chat", f"127.0.0.1:{port}", "--name", "bob")
    terminal.wait_for("serve", "bob joined")
    terminal.wait_for("serve", "alice joined")

    terminal.type("alice", "@bob are you there?")
    terminal.wait_for("bob", "[alice] are you there?")
    terminal.wait_for("alice", "… #1 stored for bob")  # the server has it
    terminal.wait_for("alice", "✓✓ #1 delivered to bob")  # bob has it: his receipt

    terminal.type("serve", "/quit")  # the server goes away; alice sees it and retries
    terminal.wait_for("alice", "reconnecting (attempt")
    terminal.start("serve2", *TELEX, "serve", "--port", port, "--db", db)
    terminal.wait_for("alice", "-- reconnected")
    terminal.type("alice", "back again")  # the session numbers on: this is alice's #2
    terminal.wait_for("serve2", "alice #2 back again")
    terminal.wait_for("alice", "✓ #2 server acknowledged: received")


def test_chat_over_tls_asks_on_first_contact_and_remembers(
    terminal: Terminal, tmp_path: Path
) -> None:
    from telex.security import write_certificate

    prefix = tmp_path / "server"
    found = write_certificate(prefix, ["127.0.0.1"])
    port = str(closed_port())
    config = tmp_path / "config"
    terminal.start(
        "serve", *TELEX, "serve", "--port", port, "--tls", str(prefix), "--db", temp_db()
    )
    terminal.wait_for("serve", "listening")
    chat = ["env", f"XDG_CONFIG_HOME={config}", *TELEX, "chat", f"127.0.0.1:{port}", "--tls"]
    terminal.start("first", *chat, "--name", "alice")
    terminal.wait_for("first", found)  # the fingerprint, shown
    terminal.type("first", "y")
    terminal.wait_for("serve", "alice joined")
    assert found in (config / "telex" / "known_hosts").read_text()
    terminal.type("first", "/quit")
    terminal.start("again", *chat, "--name", "bob")  # remembered: no question this time
    terminal.wait_for("serve", "bob joined")


def test_ctrl_c_in_chat_waits_for_what_is_unacknowledged_and_says_so(terminal: Terminal) -> None:
    """Ctrl-C with a message waiting for a reconnection: the chat says it waits for it;
    a second Ctrl-C leaves without it, exit 130, and the last line counts it."""
    port = str(closed_port())
    terminal.start("serve", *TELEX, "serve", "--port", port, "--db", temp_db())
    terminal.wait_for("serve", "listening")
    chat = [*TELEX, "chat", f"127.0.0.1:{port}", "--name", "alice", "--timeout", "20"]
    # In a shell that prints the exit status when the chat ends (it ignores Ctrl-C itself).
    shell = f'trap true INT; {shlex.join(chat)}; echo "exit status $?"; sleep 60'
    terminal.start("chat", "sh", "-c", shell)
    terminal.wait_for("serve", "alice joined")
    terminal.type("chat", "first")
    terminal.wait_for("chat", "✓ #1 server acknowledged")
    terminal.type("serve", "/quit")
    terminal.wait_for("chat", "reconnecting (attempt")
    terminal.type("chat", "are you there")
    terminal.wait_for("chat", "(waits for the reconnection)")
    terminal.run("send-keys", "-t", "t:chat", "C-c")
    terminal.wait_for("chat", "1 not yet acknowledged: waiting up to 20 s")
    terminal.run("send-keys", "-t", "t:chat", "C-c")
    terminal.wait_for("chat", "telex: interrupted: 1 messages acknowledged, 1 not acknowledged")
    terminal.wait_for("chat", "exit status 130")
