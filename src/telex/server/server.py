"""The asyncio server: accepts framed and plain-text peers and acknowledges every message.

``Server`` holds what its connections share (the handler, the limits, the names and
sessions, the store's journal, TLS and tokens), sends to clients, and shuts down
cleanly; each connection is a ``peer.PeerProtocol``. One timer task watches every
connection's deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from ssl import SSLContext

from ..core.events import (
    Ack,
    AckStatus,
    Body,
    Message,
)
from ..core.handlers import Reject, is_async
from ..core.limits import Limits
from ..core.protocol import Connection
from ..exceptions import MessageRejected, TelexTimeout
from ..security import Users, stretch
from ..store import Store
from .adapter import Handler, Peer, PeerEvent, PeerProtocol, settle_with
from .journal import Journal

__all__ = [
    "DEFAULT_PORT",
    "Handler",
    "Peer",
    "PeerEvent",
    "Reject",
    "Server",
    "default_handler",
]

DEFAULT_PORT = 7777
DEFAULT_WINDOW = 1000
TEXT_PAUSE = 0.2
"""Seconds of quiet after which a text peer's unfinished line counts as a message."""

log = logging.getLogger("telex.server")


def default_handler(message: Message, peer: Peer) -> str:
    """Acknowledge every message with the reply ``received``."""
    return "received"


class Server:
    """A telex server. ``async with Server(handler, port=0) as server: ...``

    ``handler(message, peer)`` returns the reply body (``str``, ``bytes`` or ``None``)
    or raises ``Reject``; it may be a plain or an ``async`` function.
    """

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        limits: Limits | None = None,
        text_pause: float = TEXT_PAUSE,
        shutdown_grace: float = 5.0,
        on_event: Callable[[PeerEvent], object] | None = None,
        store: Store | None = None,
        ssl: SSLContext | None = None,
        token: str | None = None,
        users: Users | None = None,
    ) -> None:
        self.handler: Handler = handler or default_handler
        self.store = store
        self.journal = None if store is None else Journal(store)
        self.ssl = ssl
        self.token = token
        self.users = users
        self.auth_required = token is not None or users is not None
        self.auth_failures: dict[str, deque[float]] = {}  # by address, for the slow-down
        self.host = host
        self.port = port
        self.limits = limits or Limits()
        self.text_pause = text_pause
        self.shutdown_grace = shutdown_grace
        self.handler_is_async = is_async(self.handler)
        self.on_event = on_event
        self.connections: set[PeerProtocol] = set()
        self.clients: dict[str, PeerProtocol] = {}  # framed clients, by name
        self.sessions: dict[str, PeerProtocol] = {}  # framed clients, by session
        self._guests = 0
        self.counts = {
            "connections": 0,
            "accepted": 0,
            "rejected": 0,
            "delivered": 0,
            "resent": 0,  # messages sent again after a reconnect, acknowledged, not stored again
            "auth_failures": 0,
            "violations": 0,
            "refused_connections": 0,
        }
        self.closing = False
        self._per_address: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._all_gone = asyncio.Event()

    # -- life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: PeerProtocol(self),
            self.host,
            self.port,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._watchdog = asyncio.create_task(self._watch())

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        with contextlib.suppress(asyncio.CancelledError):
            await self._server.serve_forever()

    async def close(self) -> None:
        """Stop accepting, acknowledge what arrived, say goodbye, wait for peers to leave."""
        if self.closing:
            return
        self.closing = True
        if self._server is not None:
            self._server.close()
        for peer in list(self.connections):
            peer.begin_goodbye()
        if self.connections:
            self._all_gone.clear()
            try:
                await asyncio.wait_for(self._all_gone.wait(), self.shutdown_grace)
            except TimeoutError:
                for peer in list(self.connections):
                    peer.abort()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def stats(self) -> dict[str, int]:
        """What the server has counted, for ``--json`` and monitoring."""
        return {**self.counts, "open_connections": len(self.connections)}

    # -- sending to clients -----------------------------------------------------------

    def send_nowait(self, name: str, body: Body) -> asyncio.Future[Ack]:
        """Send to the client ``name``; the future gets its ack (a rejection included)."""
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        settle = settle_with(future)
        journal = self.journal
        if journal is None:
            target = self.clients.get(name)
            if target is None:
                settle(Ack(0, AckStatus.NOT_DELIVERED, f"no client named {name!r} is connected"))
            else:
                target.deliver(body, None, settle)
            return future
        seq = journal.number()

        def stored() -> None:
            target = self.clients.get(name)
            if target is None:
                settle(Ack(seq, AckStatus.OK, f"stored for {name}, who is not connected"))
                return

            def answered(ack: Ack) -> None:
                self.delivery_answered(seq, None, 0, ack)
                if ack.status == AckStatus.NOT_DELIVERED:  # it stays in the outbox
                    ack = Ack(
                        seq, AckStatus.OK, f"stored for {name}, who left before acknowledging"
                    )
                settle(ack)

            target.deliver(body, None, answered, msg_id=seq)

        row = (seq, None, None, None, name, body, None, time.time(), None)
        journal.then(row, stored, lambda reason: settle(Ack(seq, AckStatus.UNAVAILABLE, reason)))
        return future

    def delivery_answered(self, seq: int, session: str | None, sender_id: int, ack: Ack) -> None:
        """A stored message's recipient answered: record it, and tell its sender (a receipt)."""
        assert self.journal is not None
        if ack.status == AckStatus.NOT_DELIVERED:  # it left first: the outbox keeps it
            return
        self.journal.delivered(seq)
        if ack.ok:
            self.counts["delivered"] += 1
        sender = None if session is None else self.sessions.get(session)
        if sender is not None and isinstance(sender.proto, Connection):
            sender.proto.send_receipt(sender_id, ack.status, ack.reason, ack.reply)
            sender.schedule_flush()

    async def send(self, name: str, body: Body, *, timeout: float = 30.0) -> Ack:
        """Send to the client ``name`` and return its ack; raise ``MessageRejected`` if not ok."""
        try:
            async with asyncio.timeout(timeout):
                ack = await self.send_nowait(name, body)
        except TimeoutError as exc:
            raise TelexTimeout(f"no acknowledgment from {name} within {timeout:g} s") from exc
        if not ack.ok:
            raise MessageRejected(ack)
        return ack

    async def send_many(
        self,
        name: str,
        bodies: Iterable[Body],
        *,
        window: int = DEFAULT_WINDOW,
        timeout: float = 30.0,
    ) -> list[Ack]:
        """Send every body to ``name`` with up to ``window`` unacknowledged; return all the
        acks, in order (rejections included). ``timeout`` bounds each wait for room.

        Without a store no future is made per message: the fast way to push.
        """
        if self.journal is not None:  # each is stored before it is sent: one at a time
            return await self._send_many_stored(name, bodies, window, timeout)
        target = self.clients.get(name)
        acks: list[Ack] = []
        waiting = 0
        room = asyncio.Event()

        def answered(ack: Ack) -> None:
            nonlocal waiting
            acks.append(ack)
            waiting -= 1
            if waiting <= window // 2:
                room.set()

        gone = Ack(0, AckStatus.NOT_DELIVERED, f"no client named {name!r} is connected")
        try:
            for body in bodies:
                if waiting >= window:
                    room.clear()
                    async with asyncio.timeout(timeout):
                        await room.wait()
                if target is None or target not in self.connections:
                    acks.append(gone)
                    continue
                target.deliver(body, None, answered)
                waiting += 1
            async with asyncio.timeout(timeout):
                while waiting:
                    room.clear()
                    await room.wait()
        except TimeoutError as exc:
            raise TelexTimeout(f"no acknowledgment from {name} within {timeout:g} s") from exc
        return acks

    async def _send_many_stored(
        self, name: str, bodies: Iterable[Body], window: int, timeout: float
    ) -> list[Ack]:
        acks: list[Ack] = []
        in_flight: deque[asyncio.Future[Ack]] = deque()
        try:
            async with asyncio.timeout(timeout):
                for body in bodies:
                    if len(in_flight) >= window:
                        acks.append(await in_flight.popleft())
                    in_flight.append(self.send_nowait(name, body))
                acks += await asyncio.gather(*in_flight)
        except TimeoutError as exc:
            raise TelexTimeout(f"no acknowledgment from {name} within {timeout:g} s") from exc
        return acks

    async def broadcast(self, body: Body, *, timeout: float = 30.0) -> dict[str, Ack]:
        """Send to every named client; return each one's ack (rejections included)."""
        futures = {name: self.send_nowait(name, body) for name in sorted(self.clients)}
        if futures:
            await asyncio.wait(futures.values(), timeout=timeout)
        gone = Ack(0, AckStatus.NOT_DELIVERED, f"no acknowledgment within {timeout:g} s")
        return {name: f.result() if f.done() else gone for name, f in futures.items()}

    def who(self) -> list[Peer]:
        """Everyone connected now, oldest first."""
        peers = [c.peer for c in self.connections if c.open]
        return sorted(peers, key=lambda peer: peer.connected_at)

    # -- bookkeeping for connections ------------------------------------------------

    def claim_name(self, peer: PeerProtocol, wanted: str | None) -> str | None:
        """Register a framed client's name (a guest name if it gave none); None if taken.

        The same session asking again is the same client reconnecting before the server
        noticed its old connection had gone: the new connection takes the name over.
        """
        if wanted is None:
            while True:
                self._guests += 1
                wanted = f"guest-{self._guests}"
                if wanted not in self.clients:
                    break
        elif (holder := self.clients.get(wanted)) is not None:
            session = peer.peer.session
            if session is None or holder.peer.session != session:
                return None
            holder.abort()
        self.clients[wanted] = peer
        if peer.peer.session is not None:
            self.sessions[peer.peer.session] = peer
        return wanted

    def auth_key(self, name: str | None) -> tuple[bytes, bytes] | None:
        """(key, salt) a client must prove: its own with a users file, else the token."""
        user = None if self.users is None else self.users.get(name)
        if user is not None:
            return user.key, user.salt
        if self.token is not None:
            return stretch(self.token, b""), b""
        return None

    def penalty(self, address: str) -> float:
        """Seconds to wait before answering a failed login from ``address``: none for the
        first 5 failures in a minute, then 1 s, 2 s, 4 s ... up to 30 s. Only the failing
        address waits; everyone else is answered at once."""
        now = time.monotonic()
        failures = self.auth_failures.setdefault(address, deque())
        while failures and now - failures[0] > 60:
            failures.popleft()
        failures.append(now)
        excess = len(failures) - 5
        return 0.0 if excess <= 0 else min(2.0 ** (excess - 1), 30.0)

    def emit(self, kind: str, peer: Peer, detail: str = "") -> None:
        if self.on_event is not None:
            self.on_event(PeerEvent(kind, peer, detail))

    def admit(self, peer: PeerProtocol) -> bool:
        address = peer.host
        if (
            self.closing
            or len(self.connections) >= self.limits.max_connections
            or self._per_address.get(address, 0) >= self.limits.max_connections_per_address
        ):
            self.counts["refused_connections"] += 1
            return False
        self.connections.add(peer)
        self._per_address[address] = self._per_address.get(address, 0) + 1
        self.counts["connections"] += 1
        return True

    def forget(self, peer: PeerProtocol) -> None:
        if peer not in self.connections:
            return
        name = peer.peer.name
        if name is not None and self.clients.get(name) is peer:
            del self.clients[name]
        session = peer.peer.session
        if session is not None and self.sessions.get(session) is peer:
            del self.sessions[session]
        self.connections.discard(peer)
        left = self._per_address[peer.host] - 1
        if left:
            self._per_address[peer.host] = left
        else:
            del self._per_address[peer.host]
        if not self.connections:
            self._all_gone.set()

    async def _watch(self) -> None:
        """Enforce handshake and idle deadlines, and ping quiet framed peers."""
        limits = self.limits
        tick = min(1.0, limits.handshake_timeout / 4, limits.idle_timeout / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for peer in list(self.connections):
                peer.check_deadlines(now)
