"""Talk to any plain line-based server (``nc -l``, the classic first socket server).

Each message goes out as one line; the answer is the next line that comes back, or,
when the server answers without a newline, what arrives before a short pause.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..core.address import format_address
from ..core.events import Body
from ..core.textmode import text_body
from ..exceptions import ConnectionClosed, TelexTimeout
from .aio import connect_errors

__all__ = ["TextClient"]


class TextClient:
    """A line-based client: ``answer = await client.send("hello")``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        pause: float = 0.2,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.pause = pause
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buffer = b""

    async def connect(self) -> TextClient:
        with connect_errors(self.host, self.port, self.connect_timeout):
            async with asyncio.timeout(self.connect_timeout):
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def send(self, body: Body) -> Body:
        """Send ``body`` as one line and return the server's answer."""
        if self._writer is None:
            raise RuntimeError("the client is not connected")
        line = body.encode() if isinstance(body, str) else bytes(body)
        self._writer.write(line + b"\n")
        await self._writer.drain()
        return text_body(await self._answer())

    async def _answer(self) -> bytes:
        assert self._reader is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                answer, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
                return answer.removesuffix(b"\r")
            wait = deadline - loop.time()
            if self._buffer:
                wait = min(wait, self.pause)
            try:
                async with asyncio.timeout(max(wait, 0)):
                    chunk = await self._reader.read(65536)
            except TimeoutError:
                if self._buffer:  # an answer without a newline, ended by a pause
                    answer, self._buffer = self._buffer, b""
                    return answer
                where = format_address((self.host, self.port))
                raise TelexTimeout(f"no answer from {where} within {self.timeout:g} s") from None
            if not chunk:
                if self._buffer:
                    answer, self._buffer = self._buffer, b""
                    return answer
                raise ConnectionClosed("the server closed the connection without answering", 1)
            self._buffer += chunk

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def __aenter__(self) -> TextClient:
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
