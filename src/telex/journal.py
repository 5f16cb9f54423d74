"""Group commit: what arrives in one loop turn is stored in one transaction, then answered.

The server hands every message it must store to the journal with what to do once it
is stored (acknowledge it, deliver it) and what to do if it could not be (reject it).
At the end of the loop turn the journal writes them all in one SQLite transaction and
then does the one or the other for each: no acknowledgment ever leaves before its
message is stored, and no commit is made per message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from .store import Row, Store, StoreError

__all__ = ["Journal"]

log = logging.getLogger("telex.server")


class Answerable(Protocol):
    """A connection whose messages the journal answers (the server's peer protocol)."""

    max_stored: int

    def ack(self, msg_id: int, reply: Any) -> None: ...

    def reject(self, msg_id: int, status: int, reason: str, *, now: bool = ...) -> None: ...

    def reject_unstored(self, msg_id: int, reason: str) -> None: ...

    def flush(self) -> None: ...


class Journal:
    """Collects rows and their answers during a loop turn; commits once at its end."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.next_seq = store.next_seq()
        self._rows: list[Row] = []
        # (connection, id, reply, status, reason): status 0 acknowledges once stored
        self._acks: list[tuple[Answerable, int, Any, int, str]] = []
        self._later: list[tuple[Callable[[], None], Callable[[str], None]]] = []
        self._delivered: list[tuple[float, int]] = []
        self._scheduled = False
        self.commits = 0
        self.failures = 0
        self.last_error = ""

    def number(self) -> int:
        """The seq of a row about to be added."""
        seq = self.next_seq
        self.next_seq = seq + 1
        return seq

    def accept(self, conn: Answerable, msg_id: int, row: Row | None, reply: Any) -> None:
        """Store ``row`` (None: it is stored already, a resend), then ack ``msg_id``."""
        if row is not None:
            self._rows.append(row)
        self._acks.append((conn, msg_id, reply, 0, ""))
        self._schedule()

    def reject(self, conn: Answerable, msg_id: int, status: int, reason: str) -> None:
        """Reject ``msg_id`` in its turn, so a connection's answers keep their order."""
        self._acks.append((conn, msg_id, None, status, reason))
        self._schedule()

    def then(
        self, row: Row | None, stored: Callable[[], None], failed: Callable[[str], None]
    ) -> None:
        """Store ``row``, then call ``stored()``, or ``failed(reason)`` if it could not be."""
        if row is not None:
            self._rows.append(row)
        self._later.append((stored, failed))
        self._schedule()

    def delivered(self, seq: int) -> None:
        """Its recipient acknowledged message ``seq``: recorded with the next commit."""
        self._delivered.append((time.time(), seq))
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.commit)

    def commit(self) -> None:
        """Write everything collected this turn, then answer each message accordingly."""
        self._scheduled = False
        rows, self._rows = self._rows, []
        acks, self._acks = self._acks, []
        later, self._later = self._later, []
        delivered, self._delivered = self._delivered, []
        try:
            if rows or delivered:
                self.store.write(rows, delivered)
                self.commits += 1
        except StoreError as exc:
            self.failures += 1
            reason = f"the server could not store it ({exc})"
            if reason != self.last_error:
                log.error("store: %s: nothing is acknowledged until it can write again", exc)
                self.last_error = reason
            for conn, msg_id, _, status, why in acks:
                if status:
                    conn.reject(msg_id, status, why, now=True)
                else:
                    conn.reject_unstored(msg_id, reason)
            for _, failed in later:
                failed(reason)
        else:
            self.last_error = ""
            for conn, msg_id, reply, status, why in acks:
                if status:
                    conn.reject(msg_id, status, why, now=True)
                    continue
                conn.ack(msg_id, reply)
                if msg_id > conn.max_stored:
                    conn.max_stored = msg_id
            for stored, _ in later:
                stored()
        for conn in {entry[0] for entry in acks}:
            conn.flush()
