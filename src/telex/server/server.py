"""The asyncio server: accepts framed and plain-text peers and acknowledges every message.

``Server`` is a thin adapter around the sans-I/O broker (``telex.core.broker``): it
accepts connections (one ``adapter.PeerProtocol`` each), carries out the broker's
actions (write, close, commit a batch on the store thread, look up a session, run an
async handler), watches deadlines, and shuts down cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from ssl import SSLContext
from typing import Any

from .._version import __version__
from ..core.broker import (
    Broker,
    CheckLogin,
    Close,
    Commit,
    Delivered,
    Find,
    Handler,
    Link,
    Load,
    Notice,
    Pause,
    Peer,
    PeerEvent,
    Released,
    RunHandler,
    StatsAsked,
)
from ..core.events import Ack, AckStatus, Body, ErrorCode, Message
from ..core.handlers import Reject, is_async
from ..core.limits import Limits
from ..core.protocol import Connection
from ..core.records import Batch, Found
from ..exceptions import MessageRejected, TelexTimeout
from ..security import TokenGate, Users
from ..store.base import SharedStore, Store, StoreError, Unreachable, open_store
from .adapter import PeerProtocol
from .cluster import DEFAULT_LEASE, Membership
from .housekeeping import Housekeeper
from .logins import LoginPacer
from .metrics import LATENCY_BUCKETS, SIZE_BUCKETS, Histogram, snapshot

__all__ = [
    "DEFAULT_PORT",
    "TEXT_PAUSE",
    "Handler",
    "Peer",
    "PeerEvent",
    "Reject",
    "Server",
    "default_handler",
]

DEFAULT_PORT = 7777
DEFAULT_WINDOW = 1000
MARKS_DELAY = 0.05
"""Seconds receipts given (alone in a batch) wait to go with the next batch."""
TEXT_PAUSE = 0.2
"""Seconds of quiet after which a text peer's unfinished line counts as a message."""

log = logging.getLogger("telex.server")

Outcome = tuple[list[int | str], list[int | str], str, frozenset[str]]
"""What storing a batch came to: each Inbound's and Envelope's seq (or the reason it
was not stored), the whole batch's error (empty: stored in one transaction), and the
recipients another server of a cluster holds."""


def default_handler(message: Message, peer: Peer) -> str:
    """Acknowledge every message with the reply ``received``."""
    return "received"


class Server:
    """A telex server. ``async with Server(handler, port=0) as server: ...``

    ``handler(message, peer)`` returns the reply body (``str``, ``bytes`` or ``None``)
    or raises ``Reject``; it may be a plain or an ``async`` function. ``store`` keeps
    every message before it is acknowledged: a path to a SQLite file, or an opened
    ``telex.store.Store``; without one, nothing is kept. ``on_delivery(seq, name, ack)``
    hears when a message sent while its client was away (``ack.stored``) is answered.

    With a store several servers share (a ``postgresql://`` URL), the server joins their
    cluster: names are held in the whole cluster, under a lease of ``lease`` seconds
    this server renews, and messages reach clients connected to any of them.
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
        on_delivery: Callable[[int, str, Ack], object] | None = None,
        store: str | Path | Store | None = None,
        sync: str = "normal",
        ssl: SSLContext | None = None,
        token: str | None = None,
        users: Users | None = None,
        keep: float | None = None,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self.handler: Handler = handler or default_handler
        self._owns_store = store is not None and not isinstance(store, Store)
        self.store = None if store is None else open_store(store, sync=sync)
        self.ssl = ssl
        self.token = token
        self.users = users
        self.keep = keep  # seconds delivered messages are kept (--keep); None: for ever
        self.lease = lease  # a cluster's: seconds its names stay this server's unrenewed
        shared = isinstance(self.store, SharedStore)
        self.cluster: Membership | None = None
        self._housekeeper: Housekeeper | None = None
        self.gate = TokenGate(token, users) if token is not None or users is not None else None
        self.auth_required = self.gate is not None
        self.host = host
        self.port = port
        self.limits = limits or Limits()
        self.text_pause = text_pause
        self.shutdown_grace = shutdown_grace
        self.on_event = on_event
        self.on_delivery = on_delivery  # a stored message of ours reached its client later
        self.broker = Broker(
            self.handler,
            handler_is_async=is_async(self.handler),
            stored=self.store is not None,
            shared=shared,
            gate=self.gate,
            max_message_size=self.limits.max_message_size,
            advertised=self.limits.advertised(),
            agent=f"telex/{__version__}",
        )
        self.logins = LoginPacer(self._check_login, then=self.run_actions)
        self.started = time.time()
        self.commit_sizes = Histogram(SIZE_BUCKETS)  # messages (and marks) a transaction
        self.commit_latency = Histogram(LATENCY_BUCKETS)  # seconds, hand-over to commit
        self._queued: dict[str, tuple[int, float]] = {}  # the store's outboxes, when read
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: dict[PeerProtocol, None] = {}  # oldest first
        self.closing = False
        self._by_address: dict[str, dict[PeerProtocol, None]] = {}
        self._server: asyncio.Server | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._all_gone = asyncio.Event()
        self._store_thread: ThreadPoolExecutor | None = None
        self._commit_scheduled = False
        self._marks_timer: asyncio.TimerHandle | None = None
        self._last_store_error = ""

    # -- life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.store is not None:
            self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="telex-store")
        # TLS by the loop itself: the handshake is done before the protocol sees a byte,
        # within the handshake time limit (a silent or failed handshake is dropped).
        self._server = await loop.create_server(
            lambda: PeerProtocol(self),
            self.host,
            self.port,
            reuse_address=True,
            ssl=self.ssl,
            ssl_handshake_timeout=None if self.ssl is None else self.limits.handshake_timeout,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if isinstance(self.store, SharedStore):
            self.cluster = Membership(self, self.store, self.lease)
            try:
                await self.cluster.start()
            except BaseException:
                self._server.close()
                raise
        self._watchdog = asyncio.create_task(self._watch())
        if self.keep is not None and self.store is not None and self._store_thread is not None:
            self._housekeeper = Housekeeper(self.store, self._store_thread, self.keep).start()

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
        self.broker.shutdown()
        self.run_actions()
        if self.connections:
            self._all_gone.clear()
            try:
                await asyncio.wait_for(self._all_gone.wait(), self.shutdown_grace)
            except TimeoutError:
                for peer in list(self.connections):
                    peer.abort()
        self.logins.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        if self._housekeeper is not None:
            await self._housekeeper.close()
        if self._store_thread is not None:  # what is collected is stored before it closes
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.shutdown_grace):
                    while self.broker.storing:  # noqa: ASYNC110 - commits end on the thread
                        await asyncio.sleep(0.01)
            if self.cluster is not None:
                await self.cluster.close()
            thread, self._store_thread = self._store_thread, None
            await asyncio.get_running_loop().run_in_executor(None, thread.shutdown)
        if self._owns_store and self.store is not None:
            self.store.close()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def stats(self) -> dict[str, int]:
        """What the server has counted (the plain counters; ``metrics.snapshot`` has
        every figure)."""
        counters = {
            key: value
            for key, value in dataclasses.asdict(self.broker.stats).items()
            if isinstance(value, int)
        }
        return {**counters, "open_connections": len(self.connections)}

    def gauges(self) -> dict[str, Any]:
        """What is true now: connections by mode, clients, what waits for each client."""
        modes = {"framed": 0, "text": 0, "handshaking": 0}
        tls = 0
        for peer in self.connections:
            link = peer.link
            modes["handshaking" if link.handshaking else link.peer.mode or "text"] += 1
            tls += peer.tls
        now = time.time()
        queued = {
            name: {"count": count, "oldest_seconds": round(max(0.0, now - oldest), 3)}
            for name, (count, oldest) in self._queued.items()
        }
        for name, link in self.broker.clients.items():  # in flight to a connected client
            if link.outgoing and name not in queued:
                queued[name] = {"count": len(link.outgoing), "oldest_seconds": 0.0}
        return {
            "connections_open": len(self.connections),
            "connections_by_mode": modes,
            "connections_tls": tls,
            "clients": len(self.broker.clients),
            "queued": queued,
            "uptime_seconds": round(now - self.started, 3),
        }

    @property
    def clients(self) -> dict[str, Any]:
        """The framed clients connected now, by name."""
        return dict(self.broker.clients)

    # -- the broker's actions ----------------------------------------------------------

    def run_actions(self) -> None:
        """Carry out what the broker asked for, until it asks for nothing more."""
        broker = self.broker
        while broker.dirty or broker.actions:
            for link in broker.take_dirty():
                link.io.flush()
            for action in broker.take_actions():
                match action:
                    case Close(link):
                        link.io.close()
                    case Commit():
                        if not self._commit_scheduled:  # at the end of this loop turn
                            self._commit_scheduled = True
                            asyncio.get_running_loop().call_soon(self._commit)
                    case Load(link, session, name):
                        loaded = functools.partial(broker.loaded, link)
                        self._on_store("session_state", (session, name), loaded, link)
                    case Find(link, session, ids):
                        found = functools.partial(_found, broker, link, ids)
                        self._on_store("find_many", (session, ids), found, link)
                    case RunHandler(link):
                        link.io.run_handler(action)
                    case Pause(link, reading):
                        link.io.set_reading("broker", reading)
                    case CheckLogin(link):
                        self.logins.submit(link)
                    case StatsAsked(link, allowed):
                        self._answer_stats(link, allowed)
                    case Notice(event):
                        self._notice(event)
                    case Delivered(seq, name, ack):
                        if self.on_delivery is not None:
                            self.on_delivery(seq, name, ack)
                    case Released(name):
                        if self.cluster is not None:
                            self.read_store("release", (name,), _ignore)

    def _commit(self) -> None:
        """Store what the broker collected this loop turn, on the store thread. Receipts
        given alone (a cluster's) wait up to ``MARKS_DELAY`` for the next batch: nobody
        waits for them, and a commit of theirs would delay the next message's."""
        self._commit_scheduled = False
        broker = self.broker
        batch = broker.take_batch(marks_now=False)
        if batch is None:
            if broker.deferred and self._marks_timer is None:
                loop = asyncio.get_running_loop()
                self._marks_timer = loop.call_later(MARKS_DELAY, self._commit_marks)
            return
        self._submit(batch)

    def _commit_marks(self) -> None:
        self._marks_timer = None
        batch = self.broker.take_batch()
        if batch is not None:
            self._submit(batch)

    def _submit(self, batch: Batch) -> None:
        if self._store_thread is None:
            return
        size = sum(len(part.items) for part in batch.inbound)
        self.commit_sizes.observe(size + len(batch.envelopes) + len(batch.delivered))
        started = time.perf_counter()
        future = self._store_thread.submit(self._store_batch, batch, time.time())
        loop = asyncio.get_running_loop()
        future.add_done_callback(
            lambda done: loop.call_soon_threadsafe(self._committed, done, started)
        )

    def _store_batch(self, batch: Batch, now: float) -> Outcome:
        """On the store thread: the batch in one transaction; if that fails, each part in
        its own, so that one part's fault refuses that part alone. Returns each part's
        seq or reason, and the whole batch's error (empty if it was stored at once)."""
        assert self.store is not None
        unreachable = False
        try:
            result = self.store.commit(batch, now)
        except Exception as exc:  # StoreError, or anything a driver raises
            error = _reason(exc)
            unreachable = isinstance(exc, Unreachable)  # it waited already: no parts
        else:
            inbound: list[int | str] = [*result.inbound]
            return inbound, [*result.envelopes], "", result.elsewhere
        parts = len(batch.inbound) + len(batch.envelopes)
        if parts + bool(batch.delivered or batch.receipted) == 1 or unreachable:
            failed: list[int | str] = [error]
            return failed * len(batch.inbound), failed * len(batch.envelopes), error, frozenset()
        inbound = [self._store_part(Batch(inbound=[part]), now) for part in batch.inbound]
        envelopes = [self._store_part(Batch(envelopes=[part]), now) for part in batch.envelopes]
        if batch.delivered or batch.receipted:  # if these fail, they are sent again later
            marks = Batch(
                delivered=batch.delivered, answers=batch.answers, receipted=batch.receipted
            )
            self._store_part(marks, now)
        return inbound, envelopes, error, frozenset()

    def _store_part(self, part: Batch, now: float) -> int | str:
        assert self.store is not None
        try:
            result = self.store.commit(part, now)
        except Exception as exc:
            return _reason(exc)
        return (result.inbound or result.envelopes or [0])[0]

    def _committed(self, future: Future[Outcome], started: float) -> None:
        self.commit_latency.observe(time.perf_counter() - started)
        inbound, envelopes, error, elsewhere = future.result()
        if error and error != self._last_store_error:
            log.error("store: %s: what it could not store is refused, never acknowledged", error)
        self._last_store_error = error
        self.broker.stored_parts(inbound, envelopes, elsewhere)
        self.run_actions()

    def read_store(self, method: str, args: tuple[Any, ...], then: Callable[[Any], None]) -> None:
        """Call a store method on the store thread; ``then`` its result on the loop."""
        self._on_store(method, args, then, None)

    async def on_store_thread(self, call: Callable[..., Any], *args: Any) -> Any:
        """Await ``call(*args)`` run on the store thread (after what is queued there)."""
        assert self._store_thread is not None
        return await asyncio.get_running_loop().run_in_executor(self._store_thread, call, *args)

    def _on_store(
        self, method: str, args: tuple[Any, ...], then: Callable[[Any], None], link: Any
    ) -> None:
        """Run a store lookup on the store thread; ``then`` its result on the loop."""
        if self._store_thread is None or self.store is None:
            return  # the server has closed
        call = getattr(self.store, method)
        loop = asyncio.get_running_loop()

        def done(future: Future[Any]) -> None:
            try:
                result = future.result()
            except Exception as exc:
                log.error("store: cannot read: %s", exc)
                if link is not None:
                    reason = f"the server cannot read its store ({_reason(exc)}): try again"
                    self.broker.fail(link, ErrorCode.INTERNAL_ERROR, reason)
            else:
                then(result)
            self.run_actions()

        future = self._store_thread.submit(call, *args)
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(done, f))

    def _check_login(self, link: Link) -> bool:
        """The pacer's turn for ``link``: the client did its part in time, so the rest
        of its handshake (reading its session) gets a handshake time of its own."""
        link.io.connected = asyncio.get_running_loop().time()
        return self.broker.check_login(link)

    def _answer_stats(self, link: Link, allowed: bool) -> None:
        """A STATS frame back: the figures (read fresh, outboxes included), or why not."""
        task = asyncio.ensure_future(self._send_stats(link, allowed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_stats(self, link: Link, allowed: bool) -> None:
        refusal = "stats are for a client that logged in with the server's token"
        values = await self.figures() if allowed else {"refused": refusal}
        proto = link.proto
        if isinstance(proto, Connection) and link in self.broker.links and link.final is None:
            proto.send_stats(values)
            link.io.flush()

    async def figures(self) -> dict[str, Any]:
        """Every figure now (``metrics.snapshot``), with the store's outboxes read first."""
        if self.store is not None and self._store_thread is not None:
            loop = asyncio.get_running_loop()
            self._queued = await loop.run_in_executor(self._store_thread, self.store.outboxes)
        return snapshot(self)

    def _notice(self, event: PeerEvent) -> None:
        where = event.peer.address
        if event.peer.name:
            where = f"{where} ({event.peer.name})"
        if event.kind == "joined":
            log.info("%s: joined%s", where, " (text)" if event.peer.mode == "text" else "")
        elif event.kind == "handler_failed":
            log.error("%s: handler failed on %s", where, event.detail, exc_info=event.error)
        elif event.kind == "violation":
            log.warning("%s: protocol violation: %s", where, event.detail)
        elif event.kind == "peer_error":
            log.warning("%s: peer reported error %s", where, event.detail)
        elif event.kind == "refused":
            log.warning("%s: login refused: %s", where, event.detail)
        elif event.kind in ("too_large", "late"):
            log.warning("%s: %s", where, event.detail)
        if event.kind in ("joined", "left") and self.on_event is not None:
            self.on_event(PeerEvent(event.kind, event.peer, event.detail))

    # -- sending to clients -----------------------------------------------------------

    def send_nowait(self, name: str, body: Body) -> asyncio.Future[Ack]:
        """Send to the client ``name``; the future gets the outcome: the client's ack
        (``ack.delivered``), a rejection, or with a store that it is stored for a client
        that is away (``ack.stored``)."""
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()

        def settle(ack: Ack) -> None:
            if not future.done():
                future.set_result(ack)

        self.broker.send(name, body, settle)
        self.run_actions()
        return future

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
        answers, in order (rejections included). ``timeout`` bounds each wait for room.

        Without a store no future is made per message: the fast way to push. The acks
        are the client's own, as it sent them.
        """
        if self.store is not None:  # each is stored before it is sent
            return await self._send_many_stored(name, bodies, window, timeout)
        broker = self.broker
        target = broker.clients.get(name)
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
        pending = iter(bodies)
        try:
            while batch := list(itertools.islice(pending, window - waiting)):
                sent = 0 if target is None else broker.push(target, batch, answered)
                acks += [gone] * (len(batch) - sent)  # it left (or was never there)
                waiting += sent
                self.run_actions()
                if waiting >= window:
                    room.clear()
                    async with asyncio.timeout(timeout):
                        await room.wait()
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
        """Send to every named client; return each one's answer (rejections included)."""
        futures = {name: self.send_nowait(name, body) for name in sorted(self.broker.clients)}
        if futures:
            await asyncio.wait(futures.values(), timeout=timeout)
        gone = Ack(0, AckStatus.NOT_DELIVERED, f"no acknowledgment within {timeout:g} s")
        return {name: f.result() if f.done() else gone for name, f in futures.items()}

    def who(self) -> list[Peer]:
        """Everyone connected now, oldest first."""
        return self.broker.who()

    # -- bookkeeping for connections ------------------------------------------------

    def admit(self, peer: PeerProtocol) -> bool:
        """Take a new connection, or refuse it (False). Connections still in their
        handshake have slots of their own: when those are full, the oldest is closed to
        make room (as OpenSSH's MaxStartups does), so silent connections never lock out
        a client that completes its handshake at once."""
        limits = self.limits
        address = peer.link.host
        here = self._by_address.get(address, {})
        starting = [other for other in here if other.link.handshaking]
        if self.closing:
            self.broker.stats.refuse("closing")
            return False
        if len(here) - len(starting) >= limits.max_connections_per_address:
            self.broker.stats.refuse("per_address")
            return False
        if len(starting) >= limits.max_handshakes_per_address:
            why = f"more than {len(starting)} handshakes from {address}"
            self._evict(starting[0], why, "handshakes_per_address")
        if len(self.connections) >= limits.max_connections:
            oldest = next((other for other in self.connections if other.link.handshaking), None)
            if oldest is None:
                self.broker.stats.refuse("full")
                return False
            self._evict(oldest, "the server is full", "full")
        self.connections[peer] = None
        self._by_address.setdefault(address, {})[peer] = None
        return True

    def _evict(self, peer: PeerProtocol, why: str, counted_as: str) -> None:
        """Close a connection still in its handshake to make room for a new one."""
        self.forget(peer)
        self.broker.stats.refuse(counted_as)
        reason = f"closed unfinished: {why}"
        log.info("%s: %s", peer.link.describe(), reason)
        self.broker.fail(peer.link, ErrorCode.TOO_MANY_CONNECTIONS, reason)
        self.run_actions()
        peer.abort()  # the ERROR went out if the socket took it; the slot is free now

    def forget(self, peer: PeerProtocol) -> None:
        if peer not in self.connections:
            return
        del self.connections[peer]
        self.logins.withdraw(peer.link)
        host = peer.link.host
        here = self._by_address[host]
        del here[peer]
        if not here:
            del self._by_address[host]
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
            self.run_actions()


def _ignore(result: object) -> None:
    pass


def _found(broker: Broker, link: Link, ids: tuple[int, ...], found: dict[int, Found]) -> None:
    broker.found(link, found, ids)


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
