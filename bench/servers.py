"""The servers the benchmark compares, each run in its own process.

    python bench/servers.py KIND [--uvloop]      (kinds: see --help)

prints the port it listens on (one line), then serves until killed.

The ``-push`` kinds serve the server-to-client run: a client's message ``push COUNT SIZE``
makes the server send it COUNT messages of SIZE bytes, 1,000 in flight at most. They
are separate so that the receiving servers carry no check for it.

``bare`` is the baseline: a plain asyncio.Protocol with telex's length-prefix framing
that acknowledges every message with the same ACK bytes telex sends, and does nothing
else (no handshake checks, no validation, no handler, no events).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import telex
from telex.core import frames
from telex.core.frames import ACK_HEAD, PREAMBLE, FrameType
from telex.security import server_context, write_certificate
from telex.store import SQLiteStore, Store
from telex.tuning import retain_freed_memory

REPLY = b"received"
_unpack_head = struct.Struct(">IB").unpack_from
_unpack_id = struct.Struct(">Q").unpack_from
_pack_ack = struct.Struct(f"{ACK_HEAD.format}{len(REPLY)}s").pack
_ACK_LEN = ACK_HEAD.size - 4 + len(REPLY)


_EMPTY_ACK = struct.Struct(ACK_HEAD.format).pack
_PUSH_WINDOW = 1000


def push_command(body: bytes) -> tuple[int, int] | None:
    """``push COUNT SIZE``: the server sends COUNT messages of SIZE bytes to this client."""
    words = body.split()
    if len(words) == 3 and words[0] == b"push":
        return int(words[1]), int(words[2])
    return None


class BareProtocol(asyncio.Protocol):
    """Length-prefixed frames in, one ACK per MESSAGE out, all of a read in one write."""

    def __init__(self) -> None:
        self.buffer = b""
        self.greeted = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def incoming(self, data: bytes) -> bytes:
        """What is left over before, then ``data``; the preamble and HELLO answered the
        way telex does (untimed) and taken off. Empty: wait for more."""
        if self.buffer:
            data = self.buffer + data
            self.buffer = b""
        if self.greeted:
            return data
        if len(data) < 13 or len(data) < 12 + struct.unpack_from(">I", data, 8)[0]:
            self.buffer = data
            return b""
        self.transport.write(PREAMBLE + struct.pack(">IB", 3, FrameType.WELCOME) + b"{}")
        self.greeted = True
        return data[12 + struct.unpack_from(">I", data, 8)[0] :]

    def data_received(self, data: bytes) -> None:
        data = self.incoming(data)
        if not data:
            return
        acks = []
        pos = 0
        n = len(data)
        while n - pos >= 5:
            length, _ = _unpack_head(data, pos)
            end = pos + 4 + length
            if end > n:
                break
            acks.append(_pack_ack(_ACK_LEN, 0x11, _unpack_id(data, pos + 5)[0], 0, 1, 0, REPLY))
            pos = end
        self.buffer = data[pos:]
        if acks:
            self.transport.write(b"".join(acks))


class BarePushProtocol(BareProtocol):
    """Asked to push, writes prebuilt message frames, keeping a window of them in flight
    by counting the (fixed-size) acks that come back."""

    def __init__(self) -> None:
        super().__init__()
        self.to_push = 0  # messages still to send
        self.in_flight = 0
        self.next_id = 1
        self.body = b""

    def data_received(self, data: bytes) -> None:
        data = self.incoming(data)
        if not data:
            return
        acks = []
        pos = 0
        n = len(data)
        while n - pos >= 5:
            length, ftype = _unpack_head(data, pos)
            end = pos + 4 + length
            if end > n:
                break
            if ftype == FrameType.ACK:  # a pushed message acknowledged
                self.in_flight -= 1
            else:
                command = push_command(data[pos + 14 : end])
                assert command is not None
                acks.append(_EMPTY_ACK(13, 0x11, _unpack_id(data, pos + 5)[0], 0, 0, 0))
                self.to_push, size = command
                self.body = b"x" * size
            pos = end
        self.buffer = data[pos:]
        if acks:
            self.transport.write(b"".join(acks))
        if self.to_push and self.in_flight <= _PUSH_WINDOW // 2:
            count = min(_PUSH_WINDOW - self.in_flight, self.to_push)
            first = self.next_id
            body = self.body
            self.transport.write(
                b"".join(frames.message(i, body, 0) for i in range(first, first + count))
            )
            self.next_id += count
            self.in_flight += count
            self.to_push -= count


def start_push(message: telex.Message, peer: telex.Peer) -> None:
    """Asked to push, push with the library's own API (``Server.send_many``)."""
    assert isinstance(message.body, bytes) and peer.name is not None
    command = push_command(message.body)
    assert command is not None
    task = asyncio.create_task(push(peer.name, *command))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return None


_tasks: set[asyncio.Task[None]] = set()
_server: telex.Server | None = None


async def push(name: str, count: int, size: int) -> None:
    assert _server is not None
    body = b"x" * size
    await _server.send_many(name, (body for _ in range(count)), window=_PUSH_WINDOW)


def telex_setup(kind: str) -> tuple[Any, Store | None]:
    """The handler and store of each telex kind.

    telex-normal, telex-full: the store, group commit, at that sync level.
    telex-commit-each: no telex store; the handler itself writes each message in its own
    SQLite transaction (sync normal), the way one would without group commit.
    """
    if kind == "telex-push":
        return start_push, None
    folder = Path(tempfile.mkdtemp(prefix="telex-bench-"))
    if kind == "telex-tls":
        return None, None
    if kind in ("telex-normal", "telex-full"):
        return None, SQLiteStore(folder / "bench.db", sync=kind.removeprefix("telex-"))
    if kind == "telex-postgres":  # bench/postgres.py names the database
        from telex.store.postgres import PostgresStore

        return None, PostgresStore(os.environ["TELEX_BENCH_POSTGRES"])
    if kind == "telex-commit-each":
        db = sqlite3.connect(folder / "each.db", isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("CREATE TABLE messages (sender TEXT, id INTEGER, body BLOB)")

        def commit_each(message: telex.Message, peer: telex.Peer) -> str:
            db.execute("BEGIN")
            db.execute(
                "INSERT INTO messages VALUES (?, ?, ?)", (peer.name, message.id, message.body)
            )
            db.execute("COMMIT")
            return "received"

        return commit_each, None
    return None, None


async def serve(kind: str) -> None:
    global _server
    if kind.startswith("bare"):
        loop = asyncio.get_running_loop()
        protocol = BarePushProtocol if kind == "bare-push" else BareProtocol
        server = await loop.create_server(protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    else:  # the default handler (reply "received"), or the one that starts pushing
        handler, store = telex_setup(kind)
        context = None
        if kind == "telex-tls":
            prefix = Path(tempfile.mkdtemp(prefix="telex-bench-")) / "bench"
            write_certificate(prefix, ["127.0.0.1"])
            context = server_context(prefix.with_suffix(".pem"), prefix.with_suffix(".key"))
        telex_server = _server = telex.Server(handler, port=0, store=store, ssl=context)
        await telex_server.start()
        port = telex_server.port
    print(port, flush=True)
    await asyncio.Event().wait()


def main() -> None:
    retain_freed_memory()  # as telex serve does; for every kind alike
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "kind",
        choices=[
            "telex",
            "bare",
            "telex-push",
            "bare-push",
            "telex-normal",
            "telex-full",
            "telex-commit-each",
            "telex-tls",
            "telex-postgres",
        ],
    )
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args.kind))
    else:
        asyncio.run(serve(args.kind))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
