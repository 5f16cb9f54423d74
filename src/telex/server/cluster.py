"""A server's part in a cluster: several servers sharing one database (a ``SharedStore``).

The store does the shared part (who holds which name, under which server's lease; a
NOTIFY to the server that holds a recipient, once per commit, this server's own
commits included). This module is what a server does about it: it joins under a lease
and renews it, and it listens for its wake-ups on a thread of its own. A wake-up
carries the messages stored for clients here, or says which to read on the store
thread; either way the broker sends what is new. Wake-ups are handled in the order
they came, which is the order the commits were numbered, so each client gets its
messages in seq order. Receipts owed to senders here come the same two ways.

A missed wake-up (the listening connection was lost) costs time, never a message:
after each (re)connect, and at each renewal of the lease, everything pending for the
clients here is read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from typing import TYPE_CHECKING

from ..store.base import READ_PAGE, SharedStore, StoreError, WakeUp

if TYPE_CHECKING:
    from .server import Server

__all__ = ["DEFAULT_LEASE", "Membership"]

DEFAULT_LEASE = 10.0
"""Seconds a server's names stay its own without a renewal: after it dies, its clients'
names are free that much later (sooner for the same session reconnecting elsewhere)."""

log = logging.getLogger("telex.server")

TAKEN_OVER = "taken over by a new connection of its session on another server"
LEASE_LOST = "its name went to another server while this one could not reach the database"


class Membership:
    """One server in a cluster: its lease, its wake-ups, and the reads they call for."""

    def __init__(self, server: Server, store: SharedStore, lease: float = DEFAULT_LEASE) -> None:
        self.server = server
        self.store = store
        self.lease = lease
        self.server_id = ""
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._renewing: asyncio.Task[None] | None = None
        # Wake-ups of messages for clients here, in the order they came; None: read all
        # that is pending (after a reconnect, at each renewal).
        self._waiting: deque[WakeUp | None] = deque()
        self._reading: asyncio.Future[None] | None = None  # the read under way
        self._owed_scheduled = False
        self._unreachable = False
        self._closed = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server_id = await self.server.on_store_thread(self.store.join, self.lease)
        self.server.broker.guest_prefix = f"guest-{self.server_id[:6]}-"

        def notified(wakeup: WakeUp) -> None:
            loop.call_soon_threadsafe(self._notified, wakeup)

        def connected() -> None:
            loop.call_soon_threadsafe(self._read_everything)

        self._listener = threading.Thread(
            target=self.store.listen,
            args=(notified, connected, self._stop),
            name="telex-listen",
            daemon=True,
        )
        self._listener.start()
        self._renewing = asyncio.create_task(self._renew())

    async def close(self) -> None:
        """Stop listening and renewing, and leave: the names held here are free at once."""
        self._closed = True
        self._stop.set()
        if self._reading is not None:
            self._reading.cancel()
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
        if self._listener is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._listener.join, 5.0)
        with contextlib.suppress(StoreError):
            await self.server.on_store_thread(self.store.leave)

    # -- wake-ups ---------------------------------------------------------------------

    def _notified(self, wakeup: WakeUp) -> None:
        broker = self.server.broker
        if wakeup.kind == "pending":
            self._waiting.append(wakeup)
            self._next()
        elif wakeup.answers:  # receipts, carried: nothing to read
            broker.receipts_arrived(wakeup.answers)
        elif wakeup.kind == "receipts":
            self._read_owed()
        elif wakeup.kind == "taken":
            broker.taken_over(wakeup.name, TAKEN_OVER)
        self.server.run_actions()

    def _read_everything(self) -> None:
        self._waiting.append(None)
        self._next()
        self._read_owed()

    def _next(self) -> None:
        """Deliver what the wake-ups say, one after another in the order they came (the
        order the commits were numbered): carried messages at once, others by a read;
        while a read is under way, those behind it wait, so that nothing overtakes."""
        broker = self.server.broker
        while self._waiting and self._reading is None and not self._closed:
            wakeup = self._waiting.popleft()
            if wakeup is not None and wakeup.messages:
                broker.pending_arrived(wakeup.messages)
                continue
            low, high = (0, None) if wakeup is None else (wakeup.low, wakeup.high)
            self._reading = asyncio.ensure_future(self._read(low, high))
        self.server.run_actions()

    async def _read(self, low: int, high: int | None) -> None:
        """Read and deliver what is pending for the clients here, seqs ``low`` to
        ``high`` (to the end if None), a page at a time."""
        broker = self.server.broker
        try:
            while True:
                found = await self.server.on_store_thread(
                    self.store.pending, list(broker.clients), low, high
                )  # welcomed or not: one in its handshake may be past its outbox read
                broker.pending_arrived(found)
                self.server.run_actions()
                if len(found) < READ_PAGE:
                    break
                low = found[-1][1].seq + 1
        except StoreError as exc:  # the next renewal reads everything again
            log.warning("cluster: cannot read what waits for the clients here: %s", exc)
        finally:
            self._reading = None
            self._next()

    def _read_owed(self) -> None:
        """Read the receipts owed to the senders here (several wake-ups of one loop turn
        make one read)."""
        if not self._owed_scheduled:
            self._owed_scheduled = True
            asyncio.get_running_loop().call_soon(self._owed)

    def _owed(self) -> None:
        self._owed_scheduled = False
        broker = self.server.broker
        sessions = [session for session, link in broker.sessions.items() if link.open]
        self.server.read_store("owed", (sessions,), broker.receipts_arrived)

    # -- the lease --------------------------------------------------------------------

    async def _renew(self) -> None:
        """Renew the lease a third of it at a time; close the clients whose names went
        elsewhere meanwhile; and read what is pending, in case a wake-up was missed."""
        broker = self.server.broker
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                lost = await self.server.on_store_thread(
                    self.store.renew, broker.names(), list(broker.clients)
                )
            except StoreError as exc:
                if not self._unreachable:
                    log.warning("cluster: cannot renew the lease: %s", exc)
                self._unreachable = True
                continue
            if self._unreachable:
                log.warning("cluster: the database is back; lease renewed")
                self._unreachable = False
            for name in lost:
                broker.taken_over(name, LEASE_LOST)
            self.server.run_actions()
            self._read_everything()
