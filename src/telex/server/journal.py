"""Group commit: what arrives in one loop turn is stored in one transaction, then answered.

The server hands the journal every message it must store, with what to do once it is
stored (acknowledge it, deliver it) and what to do if it could not be (reject it). At
the end of the loop turn the journal writes them all in one SQLite transaction and
then does the one or the other for each, in the order they came: no acknowledgment
leaves before its message is stored, and no commit is made per message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ..store import Item, Row, Segment, Store, StoreError

__all__ = ["Journal"]

log = logging.getLogger("telex.server")


class Answerable(Protocol):
    """A connection whose messages the journal answers (the server's peer protocol)."""

    max_stored: int

    def ack_all(self, items: Sequence[Item]) -> None: ...

    def reject(self, msg_id: int, status: int, reason: str, *, now: bool = ...) -> None: ...

    def reject_unstored(self, items: Sequence[Item], reason: str) -> None: ...

    def flush(self) -> None: ...


class Journal:
    """Collects what to store during a loop turn; commits once at its end."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.next_seq = store.next_seq()
        self._rows: list[Row] = []
        self._segments: list[Segment] = []
        # In arrival order: (connection, items to ack once stored, 0, 0, ""), or for a
        # rejection in its turn (connection, (), message id, status, reason).
        self._answers: list[tuple[Answerable, Sequence[Item], int, int, str]] = []
        self._later: list[tuple[Callable[[], None], Callable[[str], None]]] = []
        self._delivered: list[tuple[float, int]] = []
        self._scheduled = False
        self.commits = 0
        self.failures = 0
        self.last_error = ""

    def number(self, count: int = 1) -> int:
        """The first of ``count`` consecutive seqs for messages about to be added."""
        seq = self.next_seq
        self.next_seq = seq + count
        return seq

    def accept(
        self,
        conn: Answerable,
        session: str | None,
        sender: str | None,
        received: float,
        items: Sequence[Item],
    ) -> None:
        """Store messages for the server from ``conn`` (one segment), then ack each."""
        self._segments.append((self.number(len(items)), session, sender, received, items))
        self._answers.append((conn, items, 0, 0, ""))
        self._schedule()

    def reject(self, conn: Answerable, msg_id: int, status: int, reason: str) -> None:
        """Reject ``msg_id`` in its turn, so a connection's answers keep their order."""
        self._answers.append((conn, (), msg_id, status, reason))
        self._schedule()

    def then(self, row: Row, stored: Callable[[], None], failed: Callable[[str], None]) -> None:
        """Store ``row``, then call ``stored()``, or ``failed(reason)`` if it could not be."""
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
        segments, self._segments = self._segments, []
        answers, self._answers = self._answers, []
        later, self._later = self._later, []
        delivered, self._delivered = self._delivered, []
        error = ""
        try:
            if rows or segments or delivered:
                self.store.write(rows, delivered, segments)
                self.commits += 1
        except StoreError as exc:
            self.failures += 1
            error = f"the server could not store it ({exc})"
            if error != self.last_error:
                log.error("store: %s: nothing is acknowledged until it can write again", exc)
        self.last_error = error
        for conn, items, msg_id, status, reason in answers:
            if status:
                conn.reject(msg_id, status, reason, now=True)
            elif error:
                conn.reject_unstored(items, error)
            else:
                conn.ack_all(items)
                if items[-1][0] > conn.max_stored:
                    conn.max_stored = items[-1][0]
        for stored, failed in later:
            if error:
                failed(error)
            else:
                stored()
        for conn in {answer[0] for answer in answers}:
            conn.flush()
