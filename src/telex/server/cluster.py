"""A server's part in a cluster: several servers sharing one database (a ``SharedStore``).

The store does the shared part (who holds which name, under which server's lease; a
NOTIFY to the server that holds a recipient, once per commit). This module is what a
server does about it: it joins under a lease and renews it, and it listens for its
wake-ups on a thread of its own. A wake-up becomes a read on the store thread (the
messages stored for clients here, or the receipts owed to senders here) whose result
goes to the broker, which sends what is new. Several wake-ups of one loop turn make
one read.

A missed wake-up (the listening connection was lost) costs time, never a message:
after each (re)connect, and at each renewal of the lease, everything pending for the
clients here is read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from ..store.base import SharedStore, StoreError, WakeUp

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
        self._range: tuple[int, int] | None = None  # seqs to read, from wake-ups
        self._everything = False  # read all that is pending (a reconnect, a timer)
        self._receipts = False
        self._flush_scheduled = False
        self._unreachable = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server_id = await self.server.on_store_thread(self.store.join, self.lease)
        self.server.broker.guest_prefix = f"guest-{self.server_id}-"

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
        self._stop.set()
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
        if wakeup.messages:  # carried: nothing to read
            broker.pending_arrived(wakeup.messages)
        elif wakeup.answers:
            broker.receipts_arrived(wakeup.answers)
        elif wakeup.kind == "pending":
            low, high = wakeup.low, wakeup.high
            if self._range is not None:
                low, high = min(low, self._range[0]), max(high, self._range[1])
            self._range = (low, high)
            self._schedule()
        elif wakeup.kind == "receipts":
            self._receipts = True
            self._schedule()
        elif wakeup.kind == "taken":
            broker.taken_over(wakeup.name, TAKEN_OVER)
        self.server.run_actions()

    def _read_everything(self) -> None:
        self._everything = self._receipts = True
        self._schedule()

    def _schedule(self) -> None:
        if not self._flush_scheduled:  # the wake-ups of this loop turn make one read
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        broker = self.server.broker
        names = broker.names()
        if self._everything or self._range is not None:
            bounds: tuple[Any, ...] = () if self._everything else self._range or ()
            self.server.read_store("pending", (names, *bounds), broker.pending_arrived)
        if self._receipts:
            sessions = [session for session, link in broker.sessions.items() if link.open]
            self.server.read_store("owed", (sessions,), broker.receipts_arrived)
        self._range, self._everything, self._receipts = None, False, False

    # -- the lease --------------------------------------------------------------------

    async def _renew(self) -> None:
        """Renew the lease a third of it at a time; close the clients whose names went
        elsewhere meanwhile; and read what is pending, in case a wake-up was missed."""
        broker = self.server.broker
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                lost = await self.server.on_store_thread(self.store.renew, broker.names())
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
