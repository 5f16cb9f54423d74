"""The servers the benchmark compares, each run in its own process.

    python bench/servers.py telex|bare [--uvloop]

prints the port it listens on (one line), then serves until killed.

``bare`` is the baseline: a plain asyncio.Protocol with telex's length-prefix framing
that acknowledges every message with the same ACK bytes telex sends, and does nothing
else (no handshake checks, no validation, no handler, no events).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
from typing import Any

import telex
from telex.frames import ACK_HEAD, PREAMBLE, FrameType

REPLY = b"received"
_unpack_head = struct.Struct(">IB").unpack_from
_unpack_id = struct.Struct(">Q").unpack_from
_pack_ack = struct.Struct(f"{ACK_HEAD.format}{len(REPLY)}s").pack
_ACK_LEN = ACK_HEAD.size - 4 + len(REPLY)


class BareProtocol(asyncio.Protocol):
    """Length-prefixed frames in, one ACK per MESSAGE out, all of a read in one write."""

    def __init__(self) -> None:
        self.buffer = b""
        self.greeted = False

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
            length, _ = _unpack_head(data, pos)
            end = pos + 4 + length
            if end > n:
                break
            acks.append(_pack_ack(_ACK_LEN, 0x11, _unpack_id(data, pos + 5)[0], 0, 1, 0, REPLY))
            pos = end
        self.buffer = data[pos:]
        if acks:
            self.transport.write(b"".join(acks))


async def serve(kind: str) -> None:
    if kind == "bare":
        loop = asyncio.get_running_loop()
        server = await loop.create_server(BareProtocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    else:
        telex_server = telex.Server(port=0)  # the default handler: reply "received"
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
