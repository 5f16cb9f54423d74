"""Bad input to every telex command, run as a user runs it: bad arguments, bad addresses,
bad paths, bad files and bytes that are not UTF-8.

Whatever the input, telex prints no traceback: it exits with the code the command's help
documents, and says what is wrong in one clear line on stderr (naming the file, when a
file is what is wrong), and nothing on stdout. The line is either one line starting with
'telex: ', or click's usage error ('Usage: ...', 'Try ... for help.', '', 'Error: ...'),
whose Error line is the clear one. The few inputs here that are not errors (non-UTF-8
bytes as messages, as stdin or in a path) must work.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from ..conftest import TIMEOUT
from .test_cli import TELEX, closed_port, read_line, serve

LATIN1 = os.fsdecode(b"caf\xe9")  # 'café' in Latin-1, not UTF-8: as argv, those bytes
CASE_TIMEOUT = TIMEOUT / 2  # every case is over long before: a hang costs this much
USAGE, CONNECT = 2, 3

COMMANDS = ("serve", "send", "chat", "listen", "log", "cert", "user", "demo", "ping", "bench")
USER_COMMANDS = ("add", "list", "remove")


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]  # {tmp}, {closed}, {busy} and {server} are filled in
    code: int
    says: str | None = None  # in stderr (placeholders filled in): the file it is about
    stdin: bytes | None = None  # None: stdin is /dev/null
    stdout: bytes | None = None  # the whole output, for the inputs that are not errors
    shows: str | None = None  # or a part of it

    @property
    def command(self) -> tuple[str, ...]:
        """The (sub)command whose help documents the exit code: () for telex itself."""
        first = self.args[0]
        if first not in COMMANDS:
            return ()
        if first == "user" and len(self.args) > 1 and self.args[1] in USER_COMMANDS:
            return (first, self.args[1])
        return (first,)


def case(name: str, code: int, *args: str, **more: Any) -> Any:
    """A row of the table."""
    return pytest.param(Case(args, code, **more), id=name)


def bad_file(name: str, code: int, *args: str, **more: Any) -> Any:
    """A case about a file: its line must name the file (the last argument)."""
    return case(name, code, *args, says=args[-1], **more)


# Options that keep a serve case off the store and the port of anyone else.
SERVE = ("serve", "--port", "0", "--no-store")

CASES = [
    # -- telex itself --------------------------------------------------------------------------
    case("telex-unknown-subcommand", USAGE, "frobnicate"),
    case("telex-unknown-option", USAGE, "--bogus"),
    case("telex-non-utf8-subcommand", USAGE, LATIN1),
    # -- serve ---------------------------------------------------------------------------------
    case("serve-unknown-option", USAGE, *SERVE, "--bogus"),
    case("serve-extra-argument", USAGE, *SERVE, "extra"),
    case("serve-port-abc", USAGE, "serve", "--no-store", "--port", "abc"),
    case("serve-port-70000", USAGE, "serve", "--no-store", "--port", "70000"),
    case("serve-port-negative", USAGE, "serve", "--no-store", "--port", "-1"),
    case("serve-port-without-value", USAGE, "serve", "--no-store", "--port"),
    case("serve-text-pause-0", USAGE, *SERVE, "--text-pause", "0"),
    case("serve-idle-timeout-negative", USAGE, *SERVE, "--idle-timeout", "-1"),
    case("serve-max-message-size-0", USAGE, *SERVE, "--max-message-size", "0"),
    case("serve-max-connections-abc", USAGE, *SERVE, "--max-connections", "abc"),
    case("serve-sync-unknown", USAGE, *SERVE, "--sync", "maybe"),
    case("serve-port-in-use", CONNECT, "serve", "--no-store", "--port", "{busy}", says=":{busy}"),
    case("serve-host-256.1.1.1", CONNECT, *SERVE, "--host", "256.1.1.1", says="256.1.1.1"),
    case("serve-host-unresolvable", CONNECT, *SERVE, "--host", "nohost.invalid", says="nohost"),
    case(
        "serve-host-non-utf8",
        USAGE,
        *SERVE,
        "--host",
        LATIN1,
    ),
    bad_file("serve-users-missing", USAGE, *SERVE, "--users", "/missing"),
    bad_file("serve-users-directory", USAGE, *SERVE, "--users", "{tmp}/dir"),
    bad_file("serve-users-garbage", USAGE, *SERVE, "--users", "{tmp}/garbage.users"),
    bad_file(
        "serve-users-non-utf8-content",
        USAGE,
        *SERVE,
        "--users",
        "{tmp}/latin1.users",
    ),
    bad_file("serve-users-non-utf8-path", USAGE, *SERVE, "--users", f"{{tmp}}/{LATIN1}.users"),
    bad_file("serve-token-file-missing", USAGE, *SERVE, "--token-file", "{tmp}/missing.token"),
    bad_file("serve-token-file-directory", USAGE, *SERVE, "--token-file", "{tmp}/dir"),
    bad_file("serve-token-file-empty", USAGE, *SERVE, "--token-file", "{tmp}/empty.token"),
    bad_file(
        "serve-token-file-non-utf8",
        USAGE,
        *SERVE,
        "--token-file",
        "{tmp}/latin1.token",
    ),
    bad_file(
        "serve-tls-missing",
        USAGE,
        *SERVE,
        "--tls",
        "{tmp}/missing",
    ),
    bad_file("serve-tls-directory", USAGE, *SERVE, "--tls", "{tmp}/dir"),
    bad_file(
        "serve-tls-garbage",
        USAGE,
        *SERVE,
        "--tls",
        "{tmp}/bad",
    ),
    bad_file(
        "serve-tls-binary",
        USAGE,
        *SERVE,
        "--tls",
        "{tmp}/binary",
    ),
    case("serve-cert-without-key", USAGE, *SERVE, "--cert", "{tmp}/bad.pem"),
    case(
        "serve-cert-missing",
        USAGE,
        *(*SERVE, "--cert", "{tmp}/no.pem", "--key", "{tmp}/no.key"),
        says="{tmp}/no.pem",
    ),
    bad_file("serve-db-directory", USAGE, "serve", "--port", "0", "--db", "{tmp}/dir"),
    bad_file("serve-db-unwritable", CONNECT, "serve", "--port", "0", "--db", "/proc/x.db"),
    bad_file("serve-db-under-a-file", CONNECT, "serve", "--port", "0", "--db", "{tmp}/bad.db/x"),
    bad_file("serve-db-not-sqlite", CONNECT, "serve", "--port", "0", "--db", "{tmp}/bad.db"),
    # -- send ----------------------------------------------------------------------------------
    case("send-unknown-option", USAGE, "send", "--bogus", "{closed}", "x"),
    case("send-missing-address", USAGE, "send"),
    case("send-timeout-negative", USAGE, "send", "--timeout", "-1", "{closed}", "x"),
    case("send-timeout-abc", USAGE, "send", "--timeout", "abc", "{closed}", "x"),
    case("send-connect-timeout-0", USAGE, "send", "--connect-timeout", "0", "{closed}", "x"),
    case("send-window-0", USAGE, "send", "--window", "0", "{closed}", "x"),
    case("send-retries-negative", USAGE, "send", "--retries", "-1", "{closed}", "x"),
    case("send-wait-delivery-without-to", USAGE, "send", "--wait-delivery", "{closed}", "x"),
    case("send-text-with-session", USAGE, "send", "--text", "--session", "s", "{closed}", "x"),
    case("send-fingerprint-garbage", USAGE, "send", "--fingerprint", "nope", "{closed}", "x"),
    case("send-address-nohost", CONNECT, "send", "nohost.invalid", "x", says="nohost.invalid"),
    case("send-address-url", USAGE, "send", "http://127.0.0.1:7777", "x"),
    case("send-address-open-bracket", USAGE, "send", "[::1", "x"),
    case("send-address-port-99999", USAGE, "send", "1.2.3.4:99999", "x"),
    case("send-address-port-abc", USAGE, "send", "127.0.0.1:abc", "x"),
    case("send-address-port-0", USAGE, "send", "127.0.0.1:0", "x"),
    case("send-address-space", USAGE, "send", "a b:1", "x"),
    # stdin is empty: should something listen on 7777, nothing is sent to it
    case("send-address-empty", USAGE, "send", "", "-", stdin=b""),
    case(
        "send-address-non-utf8",
        USAGE,
        *("send", f"{LATIN1}.invalid:7777", "x"),
    ),
    case("send-address-refused", CONNECT, "send", "{closed}", "x", says="{closed}"),
    case("send-text-address-refused", CONNECT, "send", "--text", "{closed}", "x", says="{closed}"),
    bad_file("send-token-file-missing", USAGE, "send", "{closed}", "x", "--token-file", "{tmp}/no"),
    bad_file(
        "send-token-file-directory", USAGE, "send", "{closed}", "x", "--token-file", "{tmp}/dir"
    ),
    bad_file(
        "send-token-file-empty",
        USAGE,
        *("send", "{closed}", "x", "--token-file", "{tmp}/empty.token"),
    ),
    bad_file(
        "send-token-file-blank-first-line",
        USAGE,
        *("send", "{closed}", "x", "--token-file", "{tmp}/blank.token"),
    ),
    bad_file(
        "send-token-file-non-utf8",
        USAGE,
        *("send", "{closed}", "x", "--token-file", "{tmp}/latin1.token"),
    ),
    bad_file("send-cafile-missing", USAGE, "send", "{closed}", "x", "--cafile", "{tmp}/no.pem"),
    bad_file("send-cafile-directory", USAGE, "send", "{closed}", "x", "--cafile", "{tmp}/dir"),
    bad_file("send-cafile-garbage", USAGE, "send", "{closed}", "x", "--cafile", "{tmp}/bad.pem"),
    bad_file("send-cafile-binary", USAGE, "send", "{closed}", "x", "--cafile", "{tmp}/binary.pem"),
    bad_file("send-session-directory", USAGE, "send", "{closed}", "x", "--session", "{tmp}/dir"),
    bad_file(
        "send-session-garbage", USAGE, "send", "{closed}", "x", "--session", "{tmp}/garbage.txt"
    ),
    bad_file("send-session-unwritable", USAGE, "send", "{closed}", "x", "--session", "/proc/x"),
    case("send-name-non-utf8", USAGE, "send", "--name", LATIN1, "{server}", "x"),
    bad_file("send-file-missing", USAGE, "send", "{closed}", "--file", "{tmp}/missing.txt"),
    bad_file("send-file-directory", USAGE, "send", "{closed}", "--file", "{tmp}/dir"),
    bad_file("send-file-non-utf8-path", USAGE, "send", "{closed}", "--file", f"{{tmp}}/{LATIN1}"),
    case("send-file-and-message", USAGE, "send", "{closed}", "x", "--file", "{tmp}/garbage.txt"),
    case("send-file-with-text", USAGE, "send", "--text", "{closed}", "--file", "{tmp}/dir"),
    case("send-file-stdin-twice", USAGE, "send", "{closed}", "--file", "-", "--file", "-"),
    case("send-name-invalid", USAGE, "send", "--name", "a b", "{server}", "x"),
    case(
        "send-to-non-utf8",
        USAGE,
        *("send", "--to", LATIN1, "--timeout", "1", "{server}", "x"),
    ),
    case(
        "send-to-invalid",
        USAGE,
        *("send", "--to", "a b", "--timeout", "1", "{server}", "x"),
    ),
    case(
        "send-message-non-utf8",
        0,
        *("send", "{server}", LATIN1),
        stdout=b"ack 1: received (4 bytes)\n",
    ),
    case(
        "send-stdin-non-utf8",
        0,
        *("send", "{server}", "-"),
        stdin=b"caf\xe9\n\xff\xfe\nok\n",
        stdout=b"ack 1: received (4 bytes)\nack 2: received (2 bytes)\nack 3: received (2 bytes)\n",
    ),
    # -- chat ----------------------------------------------------------------------------------
    case("chat-unknown-option", USAGE, "chat", "--bogus", "{closed}"),
    case("chat-missing-address", USAGE, "chat"),
    case("chat-extra-argument", USAGE, "chat", "{closed}", "extra"),
    case("chat-timeout-negative", USAGE, "chat", "--timeout", "-1", "{closed}"),
    case("chat-retries-abc", USAGE, "chat", "--retries", "abc", "{closed}"),
    case("chat-address-nohost", CONNECT, "chat", "nohost.invalid", says="nohost.invalid"),
    case("chat-address-url", USAGE, "chat", "http://127.0.0.1:7777"),
    case("chat-address-open-bracket", USAGE, "chat", "[::1"),
    case("chat-address-port-99999", USAGE, "chat", "1.2.3.4:99999"),
    case("chat-address-empty", USAGE, "chat", ""),
    case("chat-address-refused", CONNECT, "chat", "{closed}", says="{closed}"),
    bad_file("chat-token-file-missing", USAGE, "chat", "{closed}", "--token-file", "{tmp}/no"),
    bad_file(
        "chat-token-file-empty", USAGE, "chat", "{closed}", "--token-file", "{tmp}/empty.token"
    ),
    bad_file(
        "chat-token-file-non-utf8",
        USAGE,
        *("chat", "{closed}", "--token-file", "{tmp}/latin1.token"),
    ),
    bad_file("chat-cafile-garbage", USAGE, "chat", "{closed}", "--cafile", "{tmp}/bad.pem"),
    case("chat-fingerprint-garbage", USAGE, "chat", "--fingerprint", "nope", "{closed}"),
    case("chat-name-non-utf8", USAGE, "chat", "--name", LATIN1, "{server}", stdin=b"hi\n"),
    case(
        "chat-stdin-non-utf8",
        0,
        *("chat", "{server}"),
        stdin=b"caf\xe9\n\xff\xfe\n",
        shows="✓ #2 server acknowledged: received",
    ),
    case(
        "chat-stdin-to-non-utf8-name",
        0,
        *("chat", "--timeout", "1", "{server}"),
        stdin=b"@caf\xe9 hi\nplain\n",
        shows="server acknowledged: received",
    ),
    case(
        "chat-stdin-to-empty-name",
        0,
        *("chat", "--timeout", "1", "{server}"),
        stdin=b"@ hi\nplain\n",
        shows="server acknowledged: received",
    ),
    # -- listen --------------------------------------------------------------------------------
    case("listen-unknown-option", USAGE, "listen", "--bogus", "{closed}"),
    case("listen-missing-address", USAGE, "listen"),
    case("listen-connect-timeout-negative", USAGE, "listen", "--connect-timeout", "-1", "{closed}"),
    case("listen-retries-negative", USAGE, "listen", "--retries", "-1", "{closed}"),
    case("listen-address-nohost", CONNECT, "listen", "nohost.invalid", says="nohost.invalid"),
    case("listen-address-url", USAGE, "listen", "http://127.0.0.1:7777"),
    case("listen-address-open-bracket", USAGE, "listen", "[::1"),
    case("listen-address-port-99999", USAGE, "listen", "1.2.3.4:99999"),
    case("listen-address-empty", USAGE, "listen", ""),
    case("listen-address-refused", CONNECT, "listen", "{closed}", says="{closed}"),
    bad_file(
        "listen-token-file-empty", USAGE, "listen", "{closed}", "--token-file", "{tmp}/empty.token"
    ),
    bad_file(
        "listen-token-file-non-utf8",
        USAGE,
        *("listen", "{closed}", "--token-file", "{tmp}/latin1.token"),
    ),
    bad_file("listen-cafile-directory", USAGE, "listen", "{closed}", "--cafile", "{tmp}/dir"),
    case("listen-name-non-utf8", USAGE, "listen", "--name", LATIN1, "{server}"),
    case("listen-count-0", USAGE, "listen", "--count", "0", "{closed}"),
    case("listen-count-abc", USAGE, "listen", "-c", "abc", "{closed}"),
    # -- ping ----------------------------------------------------------------------------------
    case("ping-unknown-option", USAGE, "ping", "--bogus", "{closed}"),
    case("ping-missing-address", USAGE, "ping"),
    case("ping-extra-argument", USAGE, "ping", "{closed}", "extra"),
    case("ping-count-0", USAGE, "ping", "-c", "0", "{closed}"),
    case("ping-interval-negative", USAGE, "ping", "-i", "-1", "{closed}"),
    case("ping-interval-abc", USAGE, "ping", "--interval", "abc", "{closed}"),
    case("ping-timeout-0", USAGE, "ping", "--timeout", "0", "{closed}"),
    case("ping-address-url", USAGE, "ping", "http://127.0.0.1:7777"),
    case("ping-address-refused", CONNECT, "ping", "-c", "1", "{closed}", says="{closed}"),
    case("ping-address-nohost", CONNECT, "ping", "nohost.invalid", says="nohost.invalid"),
    bad_file("ping-token-file-missing", USAGE, "ping", "{closed}", "--token-file", "{tmp}/no"),
    case("ping-fingerprint-garbage", USAGE, "ping", "--fingerprint", "nope", "{closed}"),
    # -- bench ---------------------------------------------------------------------------------
    case("bench-unknown-option", USAGE, "bench", "--bogus", "{closed}"),
    case("bench-missing-address", USAGE, "bench"),
    case(
        "bench-seconds-and-messages",
        USAGE,
        *("bench", "--seconds", "1", "--messages", "1", "{closed}"),
    ),
    case("bench-seconds-0", USAGE, "bench", "--seconds", "0", "{closed}"),
    case("bench-messages-0", USAGE, "bench", "--messages", "0", "{closed}"),
    case("bench-size-negative", USAGE, "bench", "--size", "-1", "{closed}"),
    case("bench-window-0", USAGE, "bench", "--window", "0", "{closed}"),
    case("bench-warmup-abc", USAGE, "bench", "--warmup", "abc", "{closed}"),
    case("bench-address-port-99999", USAGE, "bench", "1.2.3.4:99999"),
    case("bench-address-refused", CONNECT, "bench", "{closed}", says="{closed}"),
    bad_file("bench-cafile-garbage", USAGE, "bench", "{closed}", "--cafile", "{tmp}/bad.pem"),
    case(
        "bench-size-over-the-limit",
        1,
        *("bench", "--messages", "1", "--size", "2000000", "{server}"),
        says="over the server's limit",
    ),
    # -- log -----------------------------------------------------------------------------------
    case("log-unknown-option", USAGE, "log", "--bogus"),
    case("log-extra-argument", USAGE, "log", "--db", "{tmp}/bad.db", "extra"),
    case("log-n-0", USAGE, "log", "--db", "{tmp}/bad.db", "-n", "0"),
    case("log-n-abc", USAGE, "log", "--db", "{tmp}/bad.db", "-n", "abc"),
    case("log-since-garbage", USAGE, "log", "--db", "{tmp}/bad.db", "--since", "yesterday"),
    bad_file("log-db-missing", USAGE, "log", "--db", "{tmp}/missing.db"),
    bad_file("log-db-in-missing-folder", USAGE, "log", "--db", "{tmp}/nodir/x.db"),
    bad_file("log-db-directory", USAGE, "log", "--db", "{tmp}/dir"),
    bad_file("log-db-proc", USAGE, "log", "--db", "/proc/x.db"),
    bad_file("log-db-not-sqlite", USAGE, "log", "--db", "{tmp}/bad.db"),
    bad_file("log-db-empty-file", USAGE, "log", "--db", "{tmp}/empty.db"),
    bad_file("log-db-non-utf8-path", USAGE, "log", "--db", f"{{tmp}}/{LATIN1}.db"),
    # -- cert ----------------------------------------------------------------------------------
    case("cert-unknown-option", USAGE, "cert", "--bogus"),
    case("cert-days-0", USAGE, "cert", "--days", "0", "--out", "{tmp}/c-days"),
    case("cert-days-abc", USAGE, "cert", "--days", "abc", "--out", "{tmp}/c-days"),
    bad_file("cert-out-missing-folder", USAGE, "cert", "--out", "{tmp}/nodir/x"),
    bad_file("cert-out-directory", USAGE, "cert", "--out", "{tmp}/dir"),
    bad_file("cert-out-proc", USAGE, "cert", "--out", "/proc/x"),
    bad_file("cert-out-exists", USAGE, "cert", "--out", "{tmp}/bad"),
    bad_file("cert-show-missing", USAGE, "cert", "--show", "{tmp}/no.pem"),
    bad_file("cert-show-directory", USAGE, "cert", "--show", "{tmp}/dir"),
    bad_file("cert-show-garbage", USAGE, "cert", "--show", "{tmp}/bad.pem"),
    bad_file(
        "cert-show-binary",
        USAGE,
        *("cert", "--show", "{tmp}/binary.pem"),
    ),
    case(
        "cert-name-empty",
        USAGE,
        *("cert", "--name", "", "--out", "{tmp}/c-empty"),
    ),
    case(
        "cert-name-non-utf8",
        USAGE,
        *("cert", "--name", LATIN1, "--out", "{tmp}/c-latin1"),
    ),
    case("cert-out-non-utf8-path", 0, "cert", "--out", f"{{tmp}}/{LATIN1}", shows="SHA256:"),
    # -- user ----------------------------------------------------------------------------------
    case("user-unknown-subcommand", USAGE, "user", "frobnicate"),
    case("user-unknown-option", USAGE, "user", "--bogus"),
    case("user-add-missing-name", USAGE, "user", "add", "--users", "{tmp}/u"),
    case("user-add-missing-users", USAGE, "user", "add", "alice"),
    case("user-add-unknown-option", USAGE, "user", "add", "alice", "--users", "{tmp}/u", "--x"),
    case("user-add-name-invalid", USAGE, "user", "add", "a b", "--users", "{tmp}/u"),
    case("user-add-name-non-utf8", USAGE, "user", "add", LATIN1, "--users", "{tmp}/u"),
    bad_file("user-add-users-directory", USAGE, "user", "add", "a", "--users", "{tmp}/dir"),
    bad_file("user-add-users-missing-folder", USAGE, "user", "add", "a", "--users", "{tmp}/no/u"),
    bad_file("user-add-users-proc", USAGE, "user", "add", "alice", "--users", "/proc/users"),
    bad_file("user-add-users-garbage", USAGE, "user", "add", "a", "--users", "{tmp}/bad.users"),
    bad_file("user-add-users-non-utf8", USAGE, "user", "add", "a", "--users", "{tmp}/latin1.users"),
    bad_file(
        "user-add-token-file-missing",
        USAGE,
        *("user", "add", "alice", "--users", "{tmp}/u", "--token-file", "{tmp}/no.token"),
    ),
    bad_file(
        "user-add-token-file-directory",
        USAGE,
        *("user", "add", "alice", "--users", "{tmp}/u", "--token-file", "{tmp}/dir"),
    ),
    bad_file(
        "user-add-token-file-empty",
        USAGE,
        *("user", "add", "alice", "--users", "{tmp}/u", "--token-file", "{tmp}/empty.token"),
    ),
    bad_file(
        "user-add-token-file-non-utf8",
        USAGE,
        *("user", "add", "alice", "--users", "{tmp}/u", "--token-file", "{tmp}/latin1.token"),
    ),
    case(
        "user-add-users-non-utf8-path",
        0,
        *("user", "add", "alice", "--users", f"{{tmp}}/{LATIN1}.users"),
    ),
    case("user-list-missing-users", USAGE, "user", "list"),
    bad_file("user-list-users-missing", USAGE, "user", "list", "--users", "{tmp}/missing.users"),
    bad_file("user-list-users-directory", USAGE, "user", "list", "--users", "{tmp}/dir"),
    bad_file("user-list-users-garbage", USAGE, "user", "list", "--users", "{tmp}/bad.users"),
    bad_file("user-list-users-non-utf8", USAGE, "user", "list", "--users", "{tmp}/latin1.users"),
    bad_file("user-list-users-binary", USAGE, "user", "list", "--users", "{tmp}/binary.pem"),
    bad_file("user-list-non-utf8-path", USAGE, "user", "list", "--users", f"{{tmp}}/{LATIN1}"),
    case("user-remove-missing-name", USAGE, "user", "remove", "--users", "{tmp}/good.users"),
    case("user-remove-missing-users", USAGE, "user", "remove", "alice"),
    bad_file("user-remove-users-missing", USAGE, "user", "remove", "a", "--users", "{tmp}/no"),
    bad_file("user-remove-not-there", USAGE, "user", "remove", "b", "--users", "{tmp}/good.users"),
    case(
        "user-remove-non-utf8-name", USAGE, "user", "remove", LATIN1, "--users", "{tmp}/good.users"
    ),
    bad_file(
        "user-remove-users-garbage", USAGE, "user", "remove", "a", "--users", "{tmp}/bad.users"
    ),
    # -- demo ----------------------------------------------------------------------------------
    case("demo-unknown-option", USAGE, "demo", "--bogus"),
    case("demo-extra-argument", USAGE, "demo", "extra"),
]


# -- what the cases run in ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of bad files (and one good one), shared by the cases, which only read them
    or make files of names of their own."""
    folder = tmp_path_factory.mktemp("bad-input")
    (folder / "dir").mkdir()
    files = {
        "garbage.txt": b"this is not what telex wrote\n",
        "bad.db": b"SQLite format 2? no.\n" * 200,
        "empty.db": b"",
        "bad.pem": b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        "bad.key": b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
        "binary.pem": bytes(range(256)) * 4,
        "binary.key": bytes(range(255, -1, -1)) * 4,
        "empty.token": b"",
        "blank.token": b"\n  \nsecond line\n",
        "latin1.token": b"caf\xe9 au lait\n",
        "bad.users": b"alice\nthis is not a users file at all\n",
        "latin1.users": b"caf\xe9 00ff 00ff\n",
        "good.users": b"alice 00ff 00ff\n",
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    for home in ("data", "config"):
        (folder / home).mkdir()
    return folder


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


@pytest.fixture(scope="module")
def server_address() -> Iterator[str]:
    """A real telex server, for the cases that must get as far as one."""
    with serve("--quiet") as server:
        yield server.address


def environment(tmp: Path) -> dict[str, str]:
    """The user's environment, but with a UTF-8 locale, no token, and the default store
    and known hosts in the test's own folder."""
    left_out = ("TELEX_TOKEN", "PYTHONUTF8", "PYTHONIOENCODING", "LC_ALL", "LC_CTYPE")
    env = {key: value for key, value in os.environ.items() if key not in left_out}
    env.update(LC_ALL="C.UTF-8", XDG_DATA_HOME=f"{tmp}/data", XDG_CONFIG_HOME=f"{tmp}/config")
    return env


def text(data: bytes | str | None) -> str:
    """Output as it shows on a UTF-8 terminal, undecodable bytes escaped."""
    if isinstance(data, str):
        return data
    return (data or b"").decode("utf-8", "backslashreplace")


def shown(args: list[str]) -> str:
    """A command line as typed, its non-UTF-8 bytes escaped."""
    words = (repr(arg) if not arg or " " in arg else arg for arg in args)
    return text(" ".join(words).encode("utf-8", "surrogateescape"))


def run_telex(
    args: list[str], stdin: bytes | None, tmp: Path
) -> subprocess.CompletedProcess[bytes]:
    """Run telex with a timeout: a case that hangs fails, saying so."""
    feed: dict[str, Any] = {"stdin": subprocess.DEVNULL} if stdin is None else {"input": stdin}
    try:
        return subprocess.run(
            [*TELEX, *args],
            capture_output=True,
            timeout=CASE_TIMEOUT,
            cwd=tmp,
            env=environment(tmp),
            **feed,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"$ telex {shown(args)}\nhung: still running after {CASE_TIMEOUT:g}s\n"
            f"--- stderr ---\n{text(exc.stderr)}--- stdout ---\n{text(exc.output)}"
        )


CLICK_TRY = re.compile(r"Try '.+' for help\.")


def is_one_clear_line(stderr: str, code: int) -> bool:
    """One line 'telex: ...'; or for a usage error (2), click's: a lone 'Error: ...' line,
    or the block 'Usage: ...', 'Try ... for help.', '', 'Error: ...'."""
    lines = stderr.splitlines()
    if len(lines) == 1 and lines[0].startswith("telex: "):
        return bool(lines[0].removeprefix("telex: ").strip())
    if code != USAGE or not lines or not lines[-1].startswith("Error: "):
        return False
    if not lines[-1].removeprefix("Error: ").strip():
        return False
    if len(lines) == 1:
        return True
    return lines[0].startswith("Usage: ") and all(
        line == "" or CLICK_TRY.fullmatch(line) for line in lines[1:-1]
    )


def check(
    result: subprocess.CompletedProcess[bytes], case: Case, args: list[str], says: str | None
) -> None:
    """No traceback, the expected exit code, and one clear line for an error."""
    err, out = text(result.stderr), text(result.stdout)
    report = (
        f"$ telex {shown(args)}\nexit {result.returncode} (expected {case.code})\n"
        f"--- stderr ---\n{err}--- stdout ---\n{out}"
    )
    assert "Traceback" not in err and "Traceback" not in out, report
    assert result.returncode == case.code, report
    if case.code == 0:
        if case.stdout is not None:
            assert result.stdout == case.stdout, report
        if case.shows is not None:
            assert case.shows in out, report
        return
    assert is_one_clear_line(err, result.returncode), report
    if says is not None:
        assert text(says.encode("utf-8", "backslashreplace")) in err, (
            f"{says!r} not named\n{report}"
        )
    assert out == "", report


def test_what_counts_as_one_clear_line() -> None:
    click_block = (
        "Usage: telex send [OPTIONS]\nTry 'telex send -h' for help.\n\nError: No such option\n"
    )
    assert is_one_clear_line("telex: cannot connect: refused\n", CONNECT)
    assert is_one_clear_line(click_block, USAGE)
    assert is_one_clear_line("Error: Option '--port' requires an argument.\n", USAGE)
    assert not is_one_clear_line(click_block, CONNECT)
    assert not is_one_clear_line("", USAGE)
    assert not is_one_clear_line("telex: \n", USAGE)
    assert not is_one_clear_line("telex: one\ntelex: two\n", USAGE)
    assert not is_one_clear_line("cannot connect\n", CONNECT)
    assert not is_one_clear_line("Usage: telex\nsomething else\nError: x\n", USAGE)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line_and_a_documented_exit_code(
    case: Case, tmp: Path, busy_port: int, request: pytest.FixtureRequest
) -> None:
    places = {"{tmp}": str(tmp), "{busy}": str(busy_port)}
    if any("{closed}" in arg for arg in case.args):
        places["{closed}"] = f"127.0.0.1:{closed_port()}"
    if any("{server}" in arg for arg in case.args):
        places["{server}"] = request.getfixturevalue("server_address")

    def fill(arg: str) -> str:
        for place, value in places.items():
            arg = arg.replace(place, value)
        return arg

    args = [fill(arg) for arg in case.args]
    says = None if case.says is None else fill(case.says)
    check(run_telex(args, case.stdin, tmp), case, args, says)


def test_the_serve_console_takes_non_utf8_stdin(tmp: Path) -> None:
    """Lines typed at telex serve (its stdin, without a terminal) that are not UTF-8, or
    name a client that cannot exist: no traceback, and the server serves on."""
    process = subprocess.Popen(
        [*TELEX, "serve", "--port", "0", "--json", "--no-store"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp,
        env=environment(tmp),
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        listening = json.loads(read_line(process.stdout))  # type: ignore[arg-type]
        process.stdin.write(b"\xff\xfe to everyone\n@caf\xe9 hi\n@ hi\n/caf\xe9\n/who\n")
        process.stdin.close()  # the end of the console, not of the server
        process.stdin = None  # communicate() must not flush it
        after = run_telex(["send", f"127.0.0.1:{listening['port']}", "still there?"], None, tmp)
        assert after.returncode == 0, text(after.stderr)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=TIMEOUT)
    report = f"exit {process.returncode}\n--- stderr ---\n{text(err)}--- stdout ---\n{text(out)}"
    assert "Traceback" not in text(err) + text(out), report
    assert process.returncode == 0, report


# -- the exit codes the cases get are in each command's help ------------------------------------


# An item of the list: its code(s) at the start of a line or after ':' or ';', then words.
EXIT_CODES = re.compile(r"(?:^|[;:\n])\s*(\d{1,3}(?:\s*,\s*\d{1,3})*)\s+[^\d\s]")


def parse_exit_codes(help_text: str) -> set[int]:
    """The codes listed after 'Exit codes' in a --help, up to its options."""
    _, found, rest = help_text.partition("Exit codes")
    section = rest.split("\nOptions:", 1)[0] if found else ""
    return {int(code) for item in EXIT_CODES.findall(section) for code in item.split(",") if code}


@cache
def documented_codes(command: tuple[str, ...]) -> frozenset[int]:
    """The exit codes a command's --help lists (for a user subcommand, the help of telex
    user too)."""
    codes: set[int] = set()
    for each in {command, command[:1]}:
        result = subprocess.run(
            [*TELEX, *each, "--help"], capture_output=True, text=True, timeout=TIMEOUT
        )
        assert result.returncode == 0, result.stderr
        codes |= parse_exit_codes(result.stdout)
    return frozenset(codes)


def expected_codes(command: tuple[str, ...]) -> set[int]:
    return {param.values[0].code for param in CASES if param.values[0].command == command}


HELPS = [
    pytest.param((), id="telex"),
    *(pytest.param((name,), id=name) for name in ("serve", "send", "chat", "listen", "log")),
    *(pytest.param((name,), id=name) for name in ("cert", "user", "demo")),
    *(pytest.param((name,), id=name) for name in ("ping", "bench")),
    *(pytest.param(("user", name), id=f"user-{name}") for name in USER_COMMANDS),
]


@pytest.mark.parametrize("command", HELPS)
def test_the_help_documents_the_exit_codes_of_bad_input(command: tuple[str, ...]) -> None:
    expected = expected_codes(command)
    assert expected, "no case runs this command"
    documented = documented_codes(command)
    missing = sorted(expected - documented)
    assert not missing, (
        f"telex {' '.join(command)} --help documents exit codes {sorted(documented)}; "
        f"bad input gets {missing} too"
    )


def test_the_exit_codes_are_read_from_a_help() -> None:
    listed = """Usage: telex x

  Exit codes:
    0  every message acknowledged
    2  usage error
    130, 143  a second Ctrl-C or SIGTERM
  With --wait-delivery, 4 also when a delivery was not confirmed in time.

Options:
  --retries INTEGER  3 times  [default: 10]
"""
    inline = """  Exit codes: 0 left normally; 3 cannot connect; 4
  gave up reconnecting; 5 the
  certificate was refused; 6 the token was refused; 130 Ctrl-C.

Options:
"""
    assert parse_exit_codes(listed) == {0, 2, 130, 143}
    assert parse_exit_codes(inline) == {0, 3, 4, 5, 6, 130}
    assert parse_exit_codes("Usage: telex demo\n\n  Run 2 of them.\n") == set()
