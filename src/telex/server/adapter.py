"""One accepted connection, as asyncio sees it: bytes, timers and backpressure.

``PeerProtocol`` hands every read to the broker (``telex.core.broker``), which decides
every answer; the server then writes what the broker queued. Nothing here decides what
a message gets: this layer only moves bytes and time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

from ..core.address import format_address
from ..core.broker import Link, Peer, Reply, RunHandler
from ..core.events import ErrorCode, Message
from ..core.protocol import Connection, looks_framed
from ..core.textmode import TextConnection

if TYPE_CHECKING:
    from .server import Server

__all__ = ["PeerProtocol"]

log = logging.getLogger("telex.server")


class PeerProtocol(asyncio.Protocol):
    """One accepted connection."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.broker = server.broker
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.link = Link(Peer("?"), "?", self)
        self.connected = self.last_heard = self.loop.time()
        self.pinged = False
        self.pause_timer: asyncio.TimerHandle | None = None
        self.paused_for: set[str] = set()
        self.handler_calls: deque[RunHandler] = deque()  # for the async handler, in order
        self.worker: asyncio.Task[None] | None = None
        self.tls = False

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.tls = transport.get_extra_info("ssl_object") is not None
        address = transport.get_extra_info("peername")
        host = str(address[0]) if isinstance(address, tuple) else str(address)
        self.link = Link(Peer(format_address(address), connected_at=time.time()), host, self)
        if not self.server.admit(self):
            log.warning("%s: refused: connection limit reached", self.link.peer.address)
            self.transport.abort()
            return
        self.broker.connect(self.link)
        limit = self.server.limits.write_buffer_limit
        self.transport.set_write_buffer_limits(high=limit, low=limit // 4)

    def data_received(self, data: bytes) -> None:
        self.broker.stats.bytes_in += len(data)
        self.last_heard = self.loop.time()
        self.pinged = False
        link = self.link
        if link.proto is None and self._text_without_tls(data):
            self.broker.refuse_text_login(link)
        else:
            self.broker.receive_data(link, data)
        self.server.run_actions()
        if self.pause_timer is not None:
            self.pause_timer.cancel()
            self.pause_timer = None
        proto = link.proto
        if type(proto) is TextConnection and proto.has_partial:
            self.pause_timer = self.loop.call_later(self.server.text_pause, self._text_pause)

    def _text_without_tls(self, data: bytes) -> bool:
        """A text peer of a server that needs a token, over plain TCP."""
        gate = self.server.gate
        return (
            gate is not None
            and gate.required
            and not looks_framed(data)
            and (self.transport is None or self.transport.get_extra_info("ssl_object") is None)
        )

    def _text_pause(self) -> None:
        self.pause_timer = None
        self.broker.text_pause(self.link)
        self.server.run_actions()

    def eof_received(self) -> bool | None:
        self.broker.receive_eof(self.link)
        self.server.run_actions()
        # Keep our side open until the answers are written (TLS cannot half-close).
        return None if self.transport and self.transport.get_extra_info("ssl_object") else True

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.forget(self)
        if self.pause_timer is not None:
            self.pause_timer.cancel()
        if self.worker is not None:
            self.worker.cancel()
        was_open = self.link.open
        self.broker.connection_lost(self.link)
        if was_open:
            log.info("%s: left", self.link.describe())
        self.server.run_actions()

    def pause_writing(self) -> None:
        self.set_reading("writing", False)

    def resume_writing(self) -> None:
        self.set_reading("writing", True)

    # -- what the server does for the broker -------------------------------------------

    def flush(self) -> None:
        self.link.dirty = False
        proto = self.link.proto
        if proto is None:
            return
        data = proto.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.broker.stats.bytes_out += len(data)
            self.transport.write(data)

    def close(self) -> None:
        """Write what is queued (an ERROR frame, the last answers), then close."""
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def run_handler(self, job: RunHandler) -> None:
        """Queue a call of the async handler; one worker runs them in order."""
        self.handler_calls.append(job)
        if self.worker is None:
            self.worker = asyncio.create_task(self._work())

    async def _work(self) -> None:
        handler = cast(Callable[[Message, Peer], Awaitable[Reply]], self.server.handler)
        broker = self.broker
        try:
            while self.handler_calls:
                job = self.handler_calls.popleft()
                try:
                    reply = await handler(job.message, job.link.peer)
                except Exception as exc:
                    broker.handler_failed(job.link, job.slot, job.message, exc)
                else:
                    broker.handled(job.link, job.slot, job.message, reply)
                if not self.handler_calls or len(self.handler_calls) % 64 == 0:
                    self.server.run_actions()
        finally:
            self.worker = None
            self.server.run_actions()

    def set_reading(self, why: str, reading: bool) -> None:
        """Stop reading for a reason (the peer does not read, the broker is full), or
        read again once no reason is left."""
        transport = self.transport
        if not reading:
            if not self.paused_for and transport is not None:
                transport.pause_reading()
            self.paused_for.add(why)
        elif why in self.paused_for:
            self.paused_for.discard(why)
            if not self.paused_for and transport is not None and not transport.is_closing():
                transport.resume_reading()

    def check_deadlines(self, now: float) -> None:
        limits = self.server.limits
        link = self.link
        quiet = now - self.last_heard
        if not link.open:
            # A login waiting for its check did its part in time: the pacer holds it.
            if now - self.connected > limits.handshake_timeout and link.login is None:
                self.broker.fail(
                    link,
                    ErrorCode.HANDSHAKE_TIMEOUT,
                    f"no handshake within {limits.handshake_timeout:g} s",
                )
        elif quiet > limits.idle_timeout:
            if "writing" in self.paused_for:  # it stopped reading: nothing more can be sent
                log.info("%s: closed: not reading its acknowledgments", link.describe())
                self.abort()
            else:
                reason = f"silent for {limits.idle_timeout:g} s"
                self.broker.fail(link, ErrorCode.IDLE_TIMEOUT, reason)
        elif quiet > limits.idle_timeout / 2 and not self.pinged and type(link.proto) is Connection:
            self.pinged = True
            link.proto.send_ping()
            self.flush()
