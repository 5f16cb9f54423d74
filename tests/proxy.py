"""A loopback TCP proxy for fault tests: it cuts connections where a test says."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable


class CuttingProxy:
    """Forwards its port on 127.0.0.1 to a server, and cuts connections mid-stream.

    For each connection, ``cut_after(direction)`` says how many bytes to forward in that
    direction ("up": client to server, "down": server to client) before the cut, or None
    for no limit. A cut aborts both sides at once, so whatever was in flight is lost:
    acks the server had sent that the client never read, messages the client had sent
    that the server never read.
    """

    def __init__(self, server_port: int, cut_after: Callable[[str], int | None]) -> None:
        self.server_port = server_port
        self.cut_after = cut_after
        self.cuts = 0
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        server_w = None
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.server_port)
            pumps = [
                asyncio.create_task(_pump(client_r, server_w, self.cut_after("up"))),
                asyncio.create_task(_pump(server_r, client_w, self.cut_after("down"))),
            ]
            done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for other in pending:
                other.cancel()
            if any(not t.cancelled() and t.exception() is None and t.result() for t in done):
                self.cuts += 1
        except OSError:
            pass
        finally:
            client_w.transport.abort()
            if server_w is not None:
                server_w.transport.abort()
            self._tasks.discard(task)


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, budget: int | None
) -> bool:
    """Copy until end of stream (False) or until ``budget`` bytes have passed (True: cut)."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(4096):
            if budget is not None:
                if len(data) >= budget:
                    writer.write(data[:budget])
                    return True
                budget -= len(data)
            writer.write(data)
            await writer.drain()
    return False


def random_cuts(seed: int, low: int, high: int) -> Callable[[str], int | None]:
    """Cut each connection after a random number of bytes, in a random direction."""
    rng = random.Random(seed)
    pending: dict[str, int | None] = {}

    def choose(direction: str) -> int | None:
        if direction == "up":
            cut_up = rng.random() < 0.5
            pending["down"] = None if cut_up else rng.randint(low, high)
            return rng.randint(low, high) if cut_up else None
        return pending.pop("down", None)

    return choose
