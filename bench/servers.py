"""The servers the benchmark compares, each run in its own process.

    python bench/servers.py telex|bare [--uvloop]

prints the port it listens on (one line), then serves until killed.

Both also push, for the server-to-client run: a client's message ``push COUNT SIZE``
makes the server send it COUNT messages of SIZE bytes, 1,000 in flight at most.

``bare`` is the baseline: a plain asyncio.Protocol with telex's length-prefix framing
that acknowledges every message with the same ACK bytes telex sends, and does nothing
else (no handshake checks, no validation, no handler, no events).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
from collections import deque
from typing import Any

import telex
from telex import frames
from telex.frames import ACK_HEAD, PREAMBLE, FrameType

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
    """Length-prefixed frames in, one ACK per MESSAGE out, all of a read in one write.

    Asked to push, it writes prebuilt message frames, keeping a window of them in flight
    by counting the (fixed-size) acks that come back.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.greeted = False
        self.to_push = 0  # messages still to send
        self.in_flight = 0
        self.next_id = 1
        self.body = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            data = self.buffer + data
        if not self.greeted:  # answer the preamble and HELLO the way telex does, untimed
            if len(data) < 13:
                self.buffer = data
                return
            (length,) = struct.unpack_from(">I", data, 8)
            if len(data) < 12 + length:
                self.buffer = data
                return
            self.transport.write(PREAMBLE + struct.pack(">IB", 3, FrameType.WELCOME) + b"{}")
            data = data[12 + length :]
            self.greeted = True
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
                (msg_id,) = _unpack_id(data, pos + 5)
                command = push_command(data[pos + 14 : end])
                if command is None:
                    acks.append(_pack_ack(_ACK_LEN, 0x11, msg_id, 0, 1, 0, REPLY))
                else:
                    acks.append(_EMPTY_ACK(13, 0x11, msg_id, 0, 0, 0))
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


def push_or_receive(message: telex.Message, peer: telex.Peer) -> str | None:
    """The default reply, or, asked to push, start pushing with the library's own API."""
    command = push_command(message.body) if isinstance(message.body, bytes) else None
    if command is None:
        return "received"
    assert peer.name is not None
    task = asyncio.create_task(push(peer.name, *command))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return None


_tasks: set[asyncio.Task[None]] = set()
_server: telex.Server | None = None


async def push(name: str, count: int, size: int) -> None:
    assert _server is not None
    body = b"x" * size
    in_flight: deque[asyncio.Future[telex.Ack]] = deque()
    for _ in range(count):
        if len(in_flight) >= _PUSH_WINDOW:
            await in_flight.popleft()
        in_flight.append(_server.send_nowait(name, body))
    await asyncio.gather(*in_flight)


async def serve(kind: str) -> None:
    global _server
    if kind == "bare":
        loop = asyncio.get_running_loop()
        server = await loop.create_server(BareProtocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    else:
        telex_server = _server = telex.Server(push_or_receive, port=0)
        await telex_server.start()
        port = telex_server.port
    print(port, flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["telex", "bare"])
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
