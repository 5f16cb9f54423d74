"""The store interface: what the server needs of wherever it keeps messages.

The broker fills a ``Batch``; the server hands it to ``commit`` on its store thread and
acknowledges nothing before ``commit`` returns. A store numbers what it stores (``seq``,
the order it stored them in), finds messages a session sends again, and keeps each
client's outbox. SQLite implements it (``SQLiteStore``); a PostgreSQL store shared by
several servers comes next, behind the same methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..core.records import Batch, Committed, Found, Record, SessionState

__all__ = ["Store", "StoreError", "open_store"]


class StoreError(Exception):
    """The store could not write (a full disk, a read-only file): nothing is acknowledged."""


class Store(ABC):
    """Where a server keeps messages. Every method may block: the server calls them on
    one thread of their own, one at a time, never on its event loop."""

    @property
    @abstractmethod
    def where(self) -> str:
        """Where the messages are, for people (a path, a URL without its password)."""

    @abstractmethod
    def commit(self, batch: Batch, now: float) -> Committed:
        """Store the batch in one transaction; raise ``StoreError`` if nothing was."""

    @abstractmethod
    def session_state(self, session: str | None, name: str) -> SessionState:
        """The highest id stored from ``session``, and ``name``'s outbox."""

    @abstractmethod
    def find_many(self, session: str, ids: Sequence[int]) -> dict[int, Found]:
        """Which of these ids of ``session`` are stored already, with their replies."""

    @abstractmethod
    def records(
        self,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        since: float | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> Iterator[Record]:
        """Stored messages, oldest first, filtered; the server is named "server"."""

    @abstractmethod
    def close(self) -> None: ...


def open_store(spec: str | Path | Store, *, sync: str = "normal") -> Store:
    """A store from what a user gives: an opened ``Store``, or a path to a SQLite file."""
    if isinstance(spec, Store):
        return spec
    from .sqlite import SQLiteStore

    return SQLiteStore(spec, sync=sync)
