"""The server's own work per message, in one process: telex beside the bare server.

    python bench/inprocess.py                 # nanoseconds a message, medians of 5 runs
    python bench/inprocess.py --instructions  # instructions a message, under callgrind

No sockets: each server's protocol object is fed prebuilt reads through a transport
that only counts what is written, so what is measured is the server's work and nothing
of the kernel's or the load generator's. Instruction counts (valgrind's callgrind) are
the same from run to run whatever else the machine does, so they show a change of a
few percent that wall-clock figures on a shared machine hide. Each count is the
difference between a run that processes the reads and one that only builds them.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import telex
from telex.core import frames
from telex.core.frames import PREAMBLE, FrameType
from telex.server.adapter import PeerProtocol

sys.path.insert(0, str(Path(__file__).parent))
from servers import BareProtocol

CASES = {  # name: (body size, messages a read, reads)
    "pipelined 64 B, 500 a read": (64, 500, 60),
    "pipelined 64 B, 20 a read": (64, 20, 1000),
    "pipelined 4 KiB, 60 a read": (4096, 60, 150),
}
PUSH = "server pushes 64 B"
PUSH_COUNT = 30_000


class CountingTransport(asyncio.Transport):
    """Takes every write and keeps only its size; optionally answers pushed messages."""

    def __init__(self, push_size: int = 0) -> None:
        super().__init__()
        self.written = 0
        self.push_size = push_size  # >0: ack every MESSAGE of this size that is written
        self.protocol: asyncio.Protocol | None = None
        self.next_id = 1
        self.greeted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)
        if not self.push_size:
            return
        if not self.greeted:  # the preamble and WELCOME
            self.greeted = True
            return
        count = len(data) // (14 + self.push_size)
        acks = b"".join(
            frames.ack(i, 0, b"", b"", 0) for i in range(self.next_id, self.next_id + count)
        )
        self.next_id += count
        assert self.protocol is not None
        asyncio.get_running_loop().call_soon(self.protocol.data_received, acks)

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def reads(size: int, per_read: int, count: int) -> list[bytes]:
    body = b"x" * size
    return [
        b"".join(
            frames.message(i, body, 0) for i in range(r * per_read + 1, (r + 1) * per_read + 1)
        )
        for r in range(count)
    ]


HELLO = PREAMBLE + frames.json_frame(FrameType.HELLO, {"version": 1, "name": "bench"})


async def pipelined(kind: str, case: str, process: bool = True) -> float:
    """Seconds for the case's reads (after the handshake)."""
    size, per_read, count = CASES[case]
    transport = CountingTransport()
    protocol: asyncio.Protocol = (
        PeerProtocol(telex.Server(port=0)) if kind == "telex" else BareProtocol()
    )
    protocol.connection_made(transport)
    protocol.data_received(HELLO)
    chunks = reads(size, per_read, count)
    start = time.perf_counter()
    for chunk in chunks:
        if process:
            protocol.data_received(chunk)
        await asyncio.sleep(0)  # a loop turn a read, as on a socket
    return time.perf_counter() - start


async def push(process: bool = True) -> float:
    server = telex.Server(port=0)
    transport = CountingTransport(push_size=64)
    protocol = PeerProtocol(server)
    transport.protocol = protocol
    protocol.connection_made(transport)
    protocol.data_received(HELLO)
    body = b"x" * 64
    start = time.perf_counter()
    if process:
        await server.send_many("bench", (body for _ in range(PUSH_COUNT)), window=1000)
    return time.perf_counter() - start


def messages(case: str) -> int:
    if case == PUSH:
        return PUSH_COUNT
    _, per_read, count = CASES[case]
    return per_read * count


def run_one(kind: str, case: str, process: bool) -> float:
    if case == PUSH:
        return asyncio.run(push(process))
    return asyncio.run(pipelined(kind, case, process))


def instructions(kind: str, case: str) -> float:
    """Instructions a message: under callgrind, processing minus only building."""
    counts = []
    for process in (True, False):
        command = [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, __file__, "--one", kind, case, *([] if process else ["--build-only"]),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        line = next(x for x in result.stderr.splitlines() if "Collected" in x)
        counts.append(int(line.split()[-1]))
    return (counts[0] - counts[1]) / messages(case)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instructions", action="store_true", help="count, with callgrind")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.one:
        run_one(*options.one, process=not options.build_only)
        return
    if options.instructions and shutil.which("valgrind") is None:
        sys.exit("--instructions needs valgrind (apt-get install valgrind)")
    unit = "instructions" if options.instructions else "ns"
    print(f"{'the server alone, in process':<38} {'telex':>12} {'bare':>12} {'ratio':>7}")
    for case in [*CASES, PUSH]:
        figures = []
        for kind in ("telex", "bare") if case != PUSH else ("telex",):
            if options.instructions:
                figures.append(instructions(kind, case))
            else:
                runs = [run_one(kind, case, True) for _ in range(5)]
                figures.append(statistics.median(runs) / messages(case) * 1e9)
        if len(figures) == 2:
            ratio = figures[1] / figures[0]  # as bench/run.py: telex's speed over bare's
            print(
                f"{case + ', ' + unit:<38} {figures[0]:>12,.0f} {figures[1]:>12,.0f} {ratio:>7.2f}"
            )
        else:
            print(f"{case + ', ' + unit:<38} {figures[0]:>12,.0f} {'':>12} {'':>7}")


if __name__ == "__main__":
    main()
